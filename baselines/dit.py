"""DiT (Peebles & Xie 2023), the architecture of the official `models.py`, used in pixel space as DiT-B/4
(HDiT Table 1 rows R1, R2).

Same modules and parameter names as the official model: timm `Attention` (qkv bias) and `Mlp` (4x,
tanh GELU), adaLN-Zero blocks, LayerNorm without affine (eps 1e-6), fixed 2D sin-cos position embedding,
256-frequency timestep embedder, label table with a null class (index num_classes; the caller applies
class dropout by passing it), final adaLN layer with zero-init Linear, `learn_sigma` doubling the output.

One deliberate difference: the patch embedding is a p x p pixel-unshuffle + Linear instead of timm's
Conv2d(k = s = p). They compute the same function (a stride-p conv is a Linear on unshuffled patches);
the Linear weight is the conv weight reshaped [d, C, p, p] -> [d, C*p*p], and a 4-D conv weight in a
state dict (e.g. an official checkpoint) is reshaped on load. The Linear traces on meta tensors for fvcore.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Attention, Mlp
from torch import nn

from hdit.configs import ConfigError, ModelConfig
from hdit.model.layers import sincos_2d


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class PatchEmbed(nn.Module):
    """[B, C, H, W] -> [B, (H/p)(W/p), d]; equals timm PatchEmbed's Conv2d(C, d, p, stride=p) + flatten."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.p = patch_size
        self.proj = nn.Linear(in_channels * patch_size ** 2, hidden_size)

    def forward(self, x):
        return self.proj(F.pixel_unshuffle(x, self.p).flatten(2).transpose(1, 2))  # features ordered (c, i, j)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        w = state_dict.get(prefix + "proj.weight")
        if w is not None and w.dim() == 4:  # conv layout [d, C, p, p]
            state_dict[prefix + "proj.weight"] = w.flatten(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of t (256 frequencies, max period 10000) -> Linear-SiLU-Linear."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t, dim, max_period=10000):
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t):
        return self.mlp(self.timestep_embedding(t, self.frequency_embedding_size))


class LabelEmbedder(nn.Module):
    """Class table with num_classes + 1 rows; the last row is the null class (CFG / class dropout)."""

    def __init__(self, num_classes: int, hidden_size: int):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, labels):
        return self.embedding_table(labels)


class DiTBlock(nn.Module):
    """adaLN-Zero block: shift/scale/gate for attention and MLP from SiLU -> Linear(d, 6d)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(in_features=hidden_size, hidden_features=int(hidden_size * mlp_ratio),
                       act_layer=lambda: nn.GELU(approximate="tanh"), drop=0)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x, c):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.family != "dit" or len(config.widths) != 1 or config.resolution % config.patch_size:
            raise ConfigError(f"DiT needs family 'dit', one level and resolution divisible by the patch; got "
                              f"family={config.family!r}, widths={config.widths}, resolution={config.resolution}")
        self.config = config
        hidden, self.p, self.out_channels = config.widths[0], config.patch_size, config.out_channels
        self.grid = config.resolution // config.patch_size
        self.x_embedder = PatchEmbed(config.patch_size, config.in_channels, hidden)
        self.t_embedder = TimestepEmbedder(hidden)
        self.y_embedder = LabelEmbedder(config.num_classes, hidden) if config.num_classes else None
        self.register_buffer("pos_embed", sincos_2d(self.grid, self.grid, hidden)[None])  # fixed, not trained
        self.blocks = nn.ModuleList(DiTBlock(hidden, config.heads[0]) for _ in range(config.depths[0]))
        self.final_layer = FinalLayer(hidden, config.patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)  # for the patch Linear this is the conv's xavier on view(d, -1)
                nn.init.zeros_(m.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for layer in [b.adaLN_modulation[-1] for b in self.blocks] + [self.final_layer.adaLN_modulation[-1],
                                                                       self.final_layer.linear]:
            nn.init.zeros_(layer.weight)  # adaLN-Zero
            nn.init.zeros_(layer.bias)

    def unpatchify(self, x):
        """[B, T, p*p*C] -> [B, C, H, W] (features ordered (i, j, c) as in the official model)."""
        b, h, p, c = x.shape[0], self.grid, self.p, self.out_channels
        x = x.reshape(b, h, h, p, p, c).permute(0, 5, 1, 3, 2, 4)  # official: einsum("nhwpqc->nchpwq")
        return x.reshape(b, c, h * p, h * p)

    def forward(self, x, noise_cond, class_labels=None):
        """x [B, C, H, W], noise_cond [B] = DDPM timestep t, class_labels [B] (num_classes = null; None = all null)."""
        x = self.x_embedder(x) + self.pos_embed.to(x.dtype)
        c = self.t_embedder(noise_cond)
        if self.y_embedder is not None:
            if class_labels is None:
                class_labels = torch.full([x.shape[0]], self.config.num_classes, dtype=torch.long, device=x.device)
            c = c + self.y_embedder(class_labels)
        for block in self.blocks:
            x = block(x, c)
        return self.unpatchify(self.final_layer(x, c))

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """One learning rate; weight decay only on Linear weights (DiT itself trains with weight_decay=0)."""
        decay = {id(m.weight) for m in self.modules() if isinstance(m, nn.Linear)}
        params = list(self.parameters())
        return [g for g in ({"params": [p for p in params if id(p) in decay], "lr": lr, "weight_decay": weight_decay},
                            {"params": [p for p in params if id(p) not in decay], "lr": lr, "weight_decay": 0.0})
                if g["params"]]
