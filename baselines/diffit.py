"""DiffiT in image space (Hatamizadeh et al. 2023, "DiffiT: Diffusion Vision Transformers for Image
Generation"; appendix H.1 Tables S.2/S.3 and I.1), as a third backbone of the harness.

A U-shaped encoder/decoder over pixels (no patching): a 3x3 convolutional tokenizer, then per level
L_i DiffiT ResBlocks; between levels a stride-2 convolution (encoder) or nearest x2 + 3x3 convolution
(decoder), which keep the channel count ("convolutional-based downsampling and upsampling layers", I.1);
the first ResBlock of a level changes it (Table S.2: 64x64x128 -> 32x32x128 -> 32x32x256). The decoder
concatenates the encoder's output of the same resolution to its upsampled input (the U-Net skip at every
resolution; Table S.3's 64x64x256 upsampled map becomes 64x64x128, which only a concatenation followed
by the ResBlock's convolution can produce), then a head of GroupNorm, Swish and a 3x3 convolution.

DiffiT ResBlock (paper eq. 9-10):   x^ = Conv3x3(Swish(GN(x)));   x = DiffiT-Block(x^, x_t) + x
DiffiT Transformer block (eq. 7-8): x^ = TMSA(LN(x), x_t) + x;   x = MLP(LN(x^)) + x^
TMSA (eq. 3-5): q = x W_qs + x_t W_qt, k = x W_ks + x_t W_kt, v = x W_vs + x_t W_vt;
                Attention(Q, K, V) = Softmax(Q K^T / sqrt(d) + B) V,
computed in non-overlapping w x w windows (w = 8 at 64 px, 4 at 32 px; I.1) with B a learned relative
position bias per head over the (2w - 1)^2 offsets inside a window (Swin's table). Where a level's grid is
smaller than w the window is the whole grid (e.g. the 4x4 level of a 4-level model at 32 px).

Choices the appendix leaves open, and what we took (docs/DIFFIT.md):
- x_t: the noise level through DiT's sinusoidal embedder (256 frequencies -> Linear-SiLU-Linear, width
  `mapping_width`), plus a class embedding for class-conditional configs, summed (the authors' latent
  DiffiT); the harness passes EDM's c_noise = log(sigma) / 4 (the EDM preconditioning DiffiT trains with).
- LayerNorm without affine (eps 1e-6), qkv and time projections with bias, MLP 4x with tanh-GELU (timm
  `Mlp`), head_dim from the config; when a ResBlock changes the width its residual is a 1x1 convolution.
- GroupNorm groups: min(32, channels / 4) (EDM's rule). The head's convolution is zero-initialised.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Mlp
from torch import nn

from baselines.dit import LabelEmbedder, TimestepEmbedder
from hdit.configs import ConfigError, ModelConfig


# --- convolutions that fvcore can trace on meta tensors ----------------------------------------
# `hdit flops` traces models with torch.jit on the meta device, where aten's convolution fails its shape
# checks. While tracing, `Conv2d` therefore calls the custom op `hdit::conv2d` (real kernel: F.conv2d; fake
# kernel: the output shape), for which `hdit.flops` registers the MAC count out_elements * in_ch * k * k.
# Training and sampling never go through the custom op.

@torch.library.custom_op("hdit::conv2d", mutates_args=())
def conv2d_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    return F.conv2d(x, weight, bias, stride, padding)


@conv2d_op.register_fake
def _(x, weight, bias, stride, padding):
    k = weight.shape[-1]
    size = [(n + 2 * padding - k) // stride + 1 for n in x.shape[-2:]]
    return x.new_empty(x.shape[0], weight.shape[0], *size)


class Conv2d(nn.Conv2d):
    """nn.Conv2d (square kernel, symmetric padding) that traces on meta tensors via `hdit::conv2d`."""

    def forward(self, x):
        if torch.jit.is_tracing():
            return conv2d_op(x, self.weight, self.bias, self.stride[0], self.padding[0])
        return super().forward(x)


def group_norm(channels: int) -> nn.GroupNorm:
    """EDM's GroupNorm: 32 groups, at least 4 channels per group."""
    return nn.GroupNorm(min(32, max(1, channels // 4)), channels, eps=1e-6)


def relative_position_index(window: int) -> torch.Tensor:
    """[w^2, w^2] index into the (2w - 1)^2 offset table: row p, column q -> offset pos_p - pos_q."""
    ij = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    d = (ij[:, :, None] - ij[:, None, :]) + (window - 1)  # [2, w^2, w^2], offsets shifted to [0, 2w - 2]
    return d[0] * (2 * window - 1) + d[1]


def window_partition(x: torch.Tensor, w: int) -> torch.Tensor:
    """[B, H, W, C] -> [B * (H/w) * (W/w), w * w, C], windows in row-major order."""
    b, h, wd, c = x.shape
    x = x.reshape(b, h // w, w, wd // w, w, c).transpose(2, 3)
    return x.reshape(-1, w * w, c)


def window_merge(x: torch.Tensor, w: int, b: int, h: int, wd: int) -> torch.Tensor:
    """Inverse of `window_partition`."""
    x = x.reshape(b, h // w, wd // w, w, w, -1).transpose(2, 3)
    return x.reshape(b, h, wd, -1)


class WindowTMSA(nn.Module):
    """Time-dependent multi-head self-attention in non-overlapping windows, with relative position bias."""

    def __init__(self, width: int, heads: int, window: int, time_width: int):
        super().__init__()
        self.heads, self.window = heads, window
        self.qkv = nn.Linear(width, 3 * width)  # W_qs, W_ks, W_vs
        self.qkv_time = nn.Linear(time_width, 3 * width)  # W_qt, W_kt, W_vt: the time token's linear terms
        self.proj = nn.Linear(width, width)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)

    def window_at(self, h: int, w: int) -> int:
        win = min(self.window, h, w)
        if h % win or w % win:
            raise ValueError(f"a {h}x{w} grid cannot be split into {win}x{win} attention windows")
        return win

    def bias(self, win: int) -> torch.Tensor:
        """B: [heads, win^2, win^2]. A window smaller than the table's uses its top-left win x win positions,
        whose pairwise offsets are a subset of the table's: B depends only on pos_p - pos_q either way."""
        pos = (torch.arange(win, device=self.relative_position_index.device)[:, None] * self.window
               + torch.arange(win, device=self.relative_position_index.device)[None]).flatten()
        index = self.relative_position_index[pos][:, pos]
        return self.relative_position_bias_table[index].permute(2, 0, 1)

    def forward(self, x: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        """x: [B, H, W, C] (already layer-normed), x_t: [B, time_width] -> [B, H, W, C]."""
        b, h, wd, c = x.shape
        win = self.window_at(h, wd)
        qkv = self.qkv(x) + self.qkv_time(x_t)[:, None, None, :]  # eq. 3-5: spatial + temporal terms
        qkv = window_partition(qkv, win).unflatten(-1, (3, self.heads, c // self.heads)).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B * windows, heads, win^2, d]
        bias = self.bias(win).to(q.dtype)[None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # softmax(QK^T / sqrt(d) + B) V
        out = window_merge(out.transpose(1, 2).flatten(2), win, b, h, wd)
        return self.proj(out)


class DiffiTBlock(nn.Module):
    """DiffiT Transformer block (eq. 7-8) on an NHWC grid."""

    def __init__(self, width: int, heads: int, window: int, time_width: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = WindowTMSA(width, heads, window, time_width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(width, int(width * mlp_ratio), act_layer=lambda: nn.GELU(approximate="tanh"))

    def forward(self, x, x_t):
        x = x + self.attn(self.norm1(x), x_t)
        return x + self.mlp(self.norm2(x))


class DiffiTResBlock(nn.Module):
    """DiffiT ResBlock (eq. 9-10) on NCHW maps; `in_ch != out_ch` gets a 1x1 convolution as its residual."""

    def __init__(self, in_ch: int, out_ch: int, heads: int, window: int, time_width: int):
        super().__init__()
        self.norm = group_norm(in_ch)
        self.conv = Conv2d(in_ch, out_ch, 3, padding=1)
        self.block = DiffiTBlock(out_ch, heads, window, time_width)
        self.skip = Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x, x_t):
        h = self.conv(F.silu(self.norm(x)))
        h = self.block(h.permute(0, 2, 3, 1), x_t).permute(0, 3, 1, 2)
        return h + self.skip(x)


class Level(nn.Module):
    """L consecutive ResBlocks at one resolution; the first one maps in_ch -> width."""

    def __init__(self, in_ch: int, width: int, depth: int, heads: int, window: int, time_width: int):
        super().__init__()
        self.blocks = nn.ModuleList(DiffiTResBlock(in_ch if i == 0 else width, width, heads, window, time_width)
                                    for i in range(depth))

    def forward(self, x, x_t):
        for block in self.blocks:
            x = block(x, x_t)
        return x


class Downsample(nn.Sequential):
    def __init__(self, ch: int):
        super().__init__(Conv2d(ch, ch, 3, stride=2, padding=1))


class Upsample(nn.Sequential):
    def __init__(self, ch: int):
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), Conv2d(ch, ch, 3, padding=1))


def check_config(config: ModelConfig) -> None:
    """The config values this model can build, with errors naming the bad value."""
    problems = []
    if config.family != "diffit":
        problems.append(f"family={config.family!r} (expected 'diffit')")
    if set(config.attention) != {"window"}:
        problems.append(f"attention={config.attention} (expected 'window' at every level)")
    if config.skip != "concat":
        problems.append(f"skip={config.skip!r} (expected 'concat': the U-Net skip of Table S.3)")
    if config.patch_size != 1:
        problems.append(f"patch_size={config.patch_size} (expected 1: image-space DiffiT tokenizes every pixel)")
    if config.window_size < 1 or config.window_size & (config.window_size - 1):
        problems.append(f"window_size={config.window_size} (expected a power of two)")
    if config.resolution % 2 ** (len(config.widths) - 1):
        problems.append(f"resolution={config.resolution} (expected a multiple of {2 ** (len(config.widths) - 1)} "
                        f"for {len(config.widths)} levels)")
    if problems:
        raise ConfigError("DiffiT cannot build " + "; ".join(problems))


class DiffiT(nn.Module):
    """Image-space DiffiT: forward(x, noise_cond, class_labels=None) per docs/ARCHITECTURE.md."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        check_config(config)
        self.config = config
        widths, heads, tw = config.widths, config.heads, config.mapping_width
        self.t_embedder = TimestepEmbedder(tw)
        self.y_embedder = LabelEmbedder(config.num_classes, tw) if config.num_classes else None
        self.tokenizer = Conv2d(config.in_channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList(Downsample(widths[i - 1]) for i in range(1, len(widths)))
        self.encoder = nn.ModuleList(Level(widths[max(i - 1, 0)], widths[i], config.depths[i], heads[i],
                                           config.window_size, tw) for i in range(len(widths)))
        self.up = nn.ModuleList(Upsample(widths[i + 1]) for i in range(len(widths) - 1))
        self.decoder = nn.ModuleList(Level(widths[i + 1] + widths[i], widths[i], config.depths[i], heads[i],
                                           config.window_size, tw) for i in range(len(widths) - 1))
        self.head = nn.Sequential(group_norm(widths[0]), nn.SiLU(),
                                  Conv2d(widths[0], config.out_channels, 3, padding=1))
        self.initialize_weights()

    def initialize_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.zeros_(self.head[-1].weight)  # the network starts as D(x) = c_skip x under EDM
        nn.init.zeros_(self.head[-1].bias)

    def time_token(self, noise_cond, class_labels, batch: int, device) -> torch.Tensor:
        x_t = self.t_embedder(noise_cond.reshape(-1).expand(batch))
        if self.y_embedder is not None:
            if class_labels is None:
                class_labels = torch.full([batch], self.config.num_classes, dtype=torch.long, device=device)
            x_t = x_t + self.y_embedder(class_labels)
        return x_t

    def forward(self, x, noise_cond, class_labels=None):
        """x [B, C, H, W] (EDM: c_in * x_noisy), noise_cond [B] (EDM: c_noise), class_labels [B] or None."""
        x_t = self.time_token(noise_cond, class_labels, x.shape[0], x.device)
        h, skips = self.tokenizer(x), []
        for i, level in enumerate(self.encoder):
            h = level(h if i == 0 else self.down[i - 1](h), x_t)
            skips.append(h)
        for i in reversed(range(len(self.decoder))):
            h = self.decoder[i](torch.cat([self.up[i](h), skips[i]], dim=1), x_t)
        return self.head(h)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """One learning rate; weight decay only on Linear and Conv weights (never biases, norms or the bias table)."""
        decay = {id(m.weight) for m in self.modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
        params = list(self.parameters())
        return [g for g in ({"params": [p for p in params if id(p) in decay], "lr": lr, "weight_decay": weight_decay},
                            {"params": [p for p in params if id(p) not in decay], "lr": lr, "weight_decay": 0.0})
                if g["params"]]
