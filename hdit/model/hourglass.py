"""Hourglass Diffusion Transformer (HDiT, Crowson et al. 2024, Sec. 4 and Figure 3).

One implementation; the ablation steps of Table 1/2 are `ModelConfig` parameters: attention kind per
level (global / neighborhood / shifted_window), feed-forward (geglu / gelu), positions (rope / additive),
skip merge (lerp / add / concat), dropout per level, num_classes (0 = unconditional).
"""
from __future__ import annotations

import torch
from torch import nn

from hdit.configs import ConfigError, ModelConfig
from hdit.model import attention as attn
from hdit.model.layers import (AdaRMSNorm, AxialRoPE, FeedForward, FourierFeatures, MappingNetwork, RMSNorm, SkipMerge,
                               TokenMerge, TokenSplit, apply_rope, linear, pixel_centres, sincos_2d, zero_init)

AUG_FEATURES = 9  # non-leaky augmentation conditioning (Karras et al. 2022), as in the authors' model


def scale_for_cosine_sim(qk, scale, eps: float = 1e-6):
    """q and k [..., heads, d] -> unit length x sqrt(s) per head (fp32 statistics), so that
    q.k = s * cos(q, k) with s learned per head (Sec. 4)."""
    dtype = torch.promote_types(qk.dtype, torch.float32)
    norm = torch.rsqrt(qk.to(dtype).pow(2).sum(dim=-1, keepdim=True) + eps)
    return qk * (scale.to(dtype).sqrt().unsqueeze(-1) * norm).to(qk.dtype)


class SelfAttention(nn.Module):
    """AdaRMSNorm -> qkv -> cosine-sim (learned per-head scale, linear space, init 10) -> axial RoPE ->
    global / neighborhood / shifted-window attention (softmax scale 1) -> zero-init out projection."""

    def __init__(self, width: int, head_dim: int, cond_features: int, kind: str, kernel_size: int = 7,
                 window_size: int = 8, shift: int = 0, dropout: float = 0.0, backend: str = "auto"):
        super().__init__()
        self.heads, self.head_dim, self.kind = width // head_dim, head_dim, kind
        self.kernel_size, self.window_size, self.shift, self.backend = kernel_size, window_size, shift, backend
        self.norm = AdaRMSNorm(width, cond_features)
        self.qkv = linear(width, 3 * width)
        self.scale = nn.Parameter(torch.full([self.heads], 10.0))
        self.dropout = nn.Dropout(dropout)
        self.out = zero_init(linear(width, width))

    def attend(self, q, k, v):
        if self.kind == "global":
            return attn.global_attention(q, k, v)
        if self.kind == "neighborhood":
            return attn.neighborhood_attention(q, k, v, self.kernel_size, self.backend)
        sw_backend = "flex" if self.backend == "flex" else "auto"
        return attn.shifted_window_attention(q, k, v, self.window_size, self.shift, sw_backend)

    def forward(self, x, rope, cond):
        """rope: (cos, sin) of this level's token grid (`AxialRoPE`), or None (additive positions)."""
        qkv = self.qkv(self.norm(x, cond)).unflatten(-1, (3, self.heads, self.head_dim))
        qk = scale_for_cosine_sim(qkv[..., :2, :, :], self.scale)
        if rope is not None:  # after the normalisation
            qk = apply_rope(qk, *rope)
        q, k = qk.unbind(-3)
        return self.out(self.dropout(self.attend(q, k, qkv[..., 2, :, :]).flatten(-2)))


class TransformerLayer(nn.Module):
    """x + Attn(AdaRMSNorm(x)); x + FF(AdaRMSNorm(x)) (Figure 4a)."""

    def __init__(self, config: ModelConfig, level: int, index: int, backend: str = "auto"):
        super().__init__()
        width, kind, p = config.widths[level], config.attention[level], config.level_dropout[level]
        shift = config.window_size // 2 if (kind == "shifted_window" and index % 2) else 0  # Swin: odd layers
        self.attn = SelfAttention(width, config.head_dim, config.mapping_width, kind, config.kernel_size, config.window_size, shift, p, backend)
        self.ff = FeedForward(width, config.d_ffs[level], config.mapping_width, config.ff, p)

    def forward(self, x, rope, cond):
        x = x + self.attn(x, rope, cond)
        return x + self.ff(x, cond)


class HDiT(nn.Module):
    def __init__(self, config: ModelConfig, attn_backend: str = "auto"):
        super().__init__()
        n = len(config.widths)
        grid = config.resolution // config.patch_size
        if config.family != "hdit" or config.resolution % (config.patch_size * 2 ** (n - 1)):
            raise ConfigError(f"HDiT needs family 'hdit' and a resolution divisible by patch_size * 2^(levels-1); "
                              f"got family={config.family!r}, resolution={config.resolution}, patch={config.patch_size}, {n} levels")
        self.config, w0, mw = config, config.widths[0], config.mapping_width
        self.patch_in = TokenMerge(config.in_channels, w0, config.patch_size)
        # Steps A-C: additive positional embedding (learnable as in DiT/U-ViT, Sec. 4); D on: RoPE.
        if config.pos_emb == "additive":
            self.pos_emb = nn.Parameter(torch.randn(grid, grid, w0) * 0.02)
        elif config.pos_emb == "sincos":  # fixed variant (DiT's), for completeness
            self.register_buffer("pos_emb", sincos_2d(grid, grid, w0).view(grid, grid, w0), persistent=False)
        else:
            self.pos_emb = None

        # Conditioning (authors' model): Fourier features of c_noise and of the 9-dim augmentation vector
        # (zeros without augmentation), each -> Linear(mw, mw), plus a class embedding with a null class at
        # index num_classes; the sum feeds the mapping network. With these E has 117,003,805 parameters.
        self.time_emb, self.time_in = FourierFeatures(1, mw), linear(mw, mw)
        self.aug_emb, self.aug_in = FourierFeatures(AUG_FEATURES, mw), linear(mw, mw)
        self.class_emb = nn.Embedding(config.num_classes + 1, mw) if config.num_classes else None
        self.mapping = MappingNetwork(config.mapping_depth, mw, 3 * mw)

        # Axial RoPE (step D on): fixed frequencies per level, cos/sin computed once per stack.
        self.ropes = nn.ModuleList(AxialRoPE(config.head_dim, h) for h in config.heads) if config.pos_emb == "rope" else None

        def stack(level):
            return nn.ModuleList(TransformerLayer(config, level, i, attn_backend) for i in range(config.depths[level]))

        self.down = nn.ModuleList(stack(i) for i in range(n - 1))
        self.mid = stack(n - 1)
        self.up = nn.ModuleList(stack(i) for i in range(n - 1))
        self.merges = nn.ModuleList(TokenMerge(config.widths[i], config.widths[i + 1]) for i in range(n - 1))
        self.splits = nn.ModuleList(TokenSplit(config.widths[i + 1], config.widths[i]) for i in range(n - 1))
        self.skips = nn.ModuleList(SkipMerge(config.skip, config.widths[i]) for i in range(n - 1))
        self.out_norm = RMSNorm(w0)
        self.patch_out = TokenSplit(w0, config.out_channels, config.patch_size)
        zero_init(self.patch_out.proj)

    def condition(self, noise_cond, class_labels=None, aug_cond=None):
        b = noise_cond.shape[0]
        c = self.time_in(self.time_emb(noise_cond[:, None].float()))
        if aug_cond is None:
            aug_cond = noise_cond.new_zeros([b, AUG_FEATURES], dtype=torch.float32)
        c = c + self.aug_in(self.aug_emb(aug_cond))
        if self.class_emb is not None:
            if class_labels is None:  # all null class
                class_labels = torch.full([b], self.config.num_classes, dtype=torch.long, device=noise_cond.device)
            c = c + self.class_emb(class_labels)
        return self.mapping(c)

    def run_stack(self, level, stack, x, cond):
        rope = None
        if self.ropes is not None:
            rope = self.ropes[level](pixel_centres(x.shape[1], x.shape[2], device=x.device))
        for layer in stack:
            x = layer(x, rope, cond)
        return x

    def forward(self, x, noise_cond, class_labels=None, aug_cond=None):
        """x [B, C, H, W] (scaled by c_in), noise_cond [B] = log(sigma)/4, class_labels [B] in [0, num_classes]
        (num_classes = null; None = all null), aug_cond [B, 9] or None (zeros) -> [B, out_channels, H, W]."""
        cond = self.condition(noise_cond, class_labels, aug_cond)
        x = self.patch_in(x.movedim(1, -1))
        if self.pos_emb is not None:
            x = x + self.pos_emb.to(x.dtype)
        skips = []
        for level, (stack, merge) in enumerate(zip(self.down, self.merges)):
            x = self.run_stack(level, stack, x, cond)
            skips.append(x)
            x = merge(x)
        x = self.run_stack(len(skips), self.mid, x, cond)
        for level in reversed(range(len(skips))):
            x = self.run_stack(level, self.up[level], self.skips[level](self.splits[level](x), skips[level]), cond)
        return self.patch_out(self.out_norm(x)).movedim(-1, 1)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """AdamW groups of the authors' code: the mapping network and the AdaRMSNorm linears at lr/3; weight
        decay on Linear weights only, except the two input projections of the mapping network (noise-level
        and augmentation Fourier features -> width), which are created without it. Norm scales, the
        lerp factors, attention scales, embeddings and positions are never decayed."""
        mapping = {id(p) for p in self.mapping.parameters()}
        mapping |= {id(p) for m in self.modules() if isinstance(m, AdaRMSNorm) for p in m.parameters()}
        decay = {id(m.weight) for m in self.modules() if isinstance(m, nn.Linear)}
        decay -= {id(self.time_in.weight), id(self.aug_in.weight)}
        groups = {}
        for p in self.parameters():
            key = (id(p) in mapping, id(p) in decay)
            groups.setdefault(key, []).append(p)
        return [{"params": ps, "lr": lr / 3 if is_map else lr, "weight_decay": weight_decay if wd else 0.0}
                for (is_map, wd), ps in sorted(groups.items())]
