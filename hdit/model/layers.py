"""HDiT building blocks (paper Sec. 4, Figure 4; docs/METHOD.md §2).

Token grids are NHWC: `[B, H, W, C]`. No Linear in HDiT has a bias.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def zero_init(layer: nn.Linear) -> nn.Linear:
    """Zero-initialised output projections replace DiT's adaptive gates (Sec. 4, Figure 4)."""
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def linear(in_features: int, out_features: int) -> nn.Linear:
    return nn.Linear(in_features, out_features, bias=False)


# --- tokens <-> pixels -----------------------------------------------------------------------

def unshuffle(x: torch.Tensor, p: int) -> torch.Tensor:
    """[B, H, W, C] -> [B, H/p, W/p, p*p*C] (channel order: row offset, column offset, C)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // p, p, w // p, p, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // p, w // p, p * p * c)


def shuffle(x: torch.Tensor, p: int) -> torch.Tensor:
    """Inverse of `unshuffle`."""
    b, h, w, c = x.shape
    x = x.reshape(b, h, w, p, p, c // (p * p)).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * p, w * p, c // (p * p))


class TokenMerge(nn.Module):
    """p x p pixel-unshuffle + Linear: patch embedding (p = patch size) and level downsampling (p = 2)."""

    def __init__(self, in_features: int, out_features: int, p: int = 2):
        super().__init__()
        self.p = p
        self.proj = linear(in_features * p * p, out_features)

    def forward(self, x):
        return self.proj(unshuffle(x, self.p))


class TokenSplit(nn.Module):
    """Linear + p x p pixel-shuffle: level upsampling (p = 2) and the output layer (p = patch size)."""

    def __init__(self, in_features: int, out_features: int, p: int = 2):
        super().__init__()
        self.p = p
        self.proj = linear(in_features, out_features * p * p)

    def forward(self, x):
        return shuffle(self.proj(x), self.p)


class SkipMerge(nn.Module):
    """Merge of the upsampled path with the skip (Table 2): learnable lerp (ours, f init 0.5),
    addition (original hourglass) or concatenation + Linear(2w -> w) (U-Net)."""

    def __init__(self, kind: str, width: int):
        super().__init__()
        self.kind = kind
        if kind == "lerp":
            self.fac = nn.Parameter(torch.full([1], 0.5))
        elif kind == "concat":
            self.proj = linear(2 * width, width)
        elif kind != "add":
            raise ValueError(f"skip={kind!r}; expected 'lerp', 'add' or 'concat'")

    def forward(self, x, skip):
        if self.kind == "lerp":
            return torch.lerp(skip, x, self.fac.to(x.dtype))
        if self.kind == "add":
            return x + skip
        return self.proj(torch.cat((x, skip), dim=-1))


# --- normalisation ---------------------------------------------------------------------------

def rms_norm(x: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / RMS(x) * scale, the statistics in fp32."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    mean_sq = x.to(dtype).pow(2).mean(dim=-1, keepdim=True)
    return x * (scale.to(dtype) * torch.rsqrt(mean_sq + eps)).to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, features: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(features))

    def forward(self, x):
        return rms_norm(x, self.scale, self.eps)


class AdaRMSNorm(nn.Module):
    """RMSNorm whose scale is 1 + Linear(cond), the Linear zero-initialised; no shift, no gate."""

    def __init__(self, features: int, cond_features: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.linear = zero_init(linear(cond_features, features))

    def forward(self, x, cond):
        return rms_norm(x, self.linear(cond).unflatten(0, (-1, 1, 1)) + 1, self.eps)


# --- feed-forward ----------------------------------------------------------------------------

class LinearGEGLU(nn.Linear):
    """Linear(d -> 2 d_ff) then x * gelu(gate) (Shazeer 2020)."""

    def __init__(self, in_features: int, d_ff: int):
        super().__init__(in_features, 2 * d_ff, bias=False)

    def forward(self, x):
        x, gate = super().forward(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """AdaRMSNorm -> GEGLU (d_ff = 3d, step C on) or GELU MLP (d_ff = 4d, steps A-B2) -> zero-init Linear."""

    def __init__(self, width: int, d_ff: int, cond_features: int, kind: str = "geglu", dropout: float = 0.0):
        super().__init__()
        self.norm = AdaRMSNorm(width, cond_features)
        self.up = LinearGEGLU(width, d_ff) if kind == "geglu" else nn.Sequential(linear(width, d_ff), nn.GELU())
        self.dropout = nn.Dropout(dropout)
        self.down = zero_init(linear(d_ff, width))

    def forward(self, x, cond):
        return self.down(self.dropout(self.up(self.norm(x, cond))))


# --- positions -------------------------------------------------------------------------------

def pixel_centres(h: int, w: int, device=None) -> torch.Tensor:
    """[h, w, 2] (row, column) pixel-centre coordinates in [-1, 1] (4 tokens: -.75 -.25 .25 .75)."""
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * (2 / h) - 1
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * (2 / w) - 1
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1)


class AxialRoPE(nn.Module):
    """2D axial RoPE on the first half of each head (Sec. 4): head_dim/8 frequencies per axis (8 for
    head_dim 64), log-spaced in [pi, 10 pi) and interleaved across heads; rotated pairs are (i, i + r)
    with r = head_dim/4, the first r/2 angles for the row axis and the rest for the column axis."""

    def __init__(self, head_dim: int, heads: int):
        super().__init__()
        n = head_dim // 8
        freqs = torch.linspace(math.log(math.pi), math.log(10 * math.pi), heads * n + 1)[:-1].exp()
        self.register_buffer("freqs", freqs.view(n, heads).T.contiguous(), persistent=False)  # [heads, n]

    def forward(self, pos):
        """pos [H, W, 2] -> cos, sin of shape [H, W, 1, heads, head_dim/4] (broadcast over q/k)."""
        theta = (pos[..., None, :, None] * self.freqs.to(pos.dtype)[:, None]).flatten(-2)  # [H, W, heads, 2n]
        return theta.cos().unsqueeze(-3), theta.sin().unsqueeze(-3)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (i, i + r) of x [..., heads, d] by the angles; dims >= 2r pass through."""
    r = cos.shape[-1]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2, rest = x[..., :r], x[..., r:2 * r], x[..., 2 * r:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest), dim=-1)


def sincos_2d(h: int, w: int, dim: int, device=None) -> torch.Tensor:
    """Fixed 2D sin-cos embedding [h*w, dim] as in DiT/MAE: first half encodes the column, second
    half the row; each half is [sin, cos] of position * 10000^(-i/(dim/4))."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, device=device, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float64),
                                torch.arange(w, device=device, dtype=torch.float64), indexing="ij")

    def emb(p):
        out = p.reshape(-1, 1) * omega
        return torch.cat((out.sin(), out.cos()), dim=1)

    return torch.cat((emb(cols), emb(rows)), dim=1).float()


# --- conditioning ----------------------------------------------------------------------------

class FourierFeatures(nn.Module):
    """[cos, sin](2 pi x W^T), W ~ N(0, std^2) fixed (a persistent buffer)."""

    def __init__(self, in_features: int, out_features: int, std: float = 1.0):
        super().__init__()
        self.register_buffer("weight", torch.randn(out_features // 2, in_features) * std)

    def forward(self, x):
        f = 2 * math.pi * x @ self.weight.T
        return torch.cat((f.cos(), f.sin()), dim=-1)


class MappingNetwork(nn.Module):
    """RMSNorm, depth x [RMSNorm, GEGLU, zero-init Linear, residual], RMSNorm (Sec. 4)."""

    def __init__(self, depth: int, width: int, d_ff: int, dropout: float = 0.0):
        super().__init__()
        self.in_norm = RMSNorm(width)
        self.blocks = nn.ModuleList(
            nn.ModuleDict(dict(norm=RMSNorm(width), up=LinearGEGLU(width, d_ff), down=zero_init(linear(d_ff, width))))
            for _ in range(depth))
        self.dropout = nn.Dropout(dropout)
        self.out_norm = RMSNorm(width)

    def forward(self, x):
        x = self.in_norm(x)
        for b in self.blocks:
            x = x + b["down"](self.dropout(b["up"](b["norm"](x))))
        return self.out_norm(x)
