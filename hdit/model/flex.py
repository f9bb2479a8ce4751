"""FlexAttention kernels for HDiT's local attention (backend "flex" of `hdit.model.attention`).

Neighborhood attention (NATTEN semantics: kernel k, dilation 1, every query attends to exactly k*k
keys, the window shifted inward at the borders; docs/METHOD.md §2) and Swin
shifted-window attention (ablation B1: window 8, shift 4, wrapped regions masked) are written as
FlexAttention `mask_mod`s over a row-major token grid.

Speed (docs/PERFORMANCE.md): a block mask depends only on (grid, kernel/window/shift, device), so it
is built once, memory-bounded at block granularity, and cached; every later call only runs the
block-sparse kernel. On CUDA the kernel is `torch.compile(flex_attention)` (fused, forward and
backward); on CPU the uncompiled forward runs (PyTorch has no CPU FlexAttention backward: train on CPU
with the "masked" backend).

Layout: q, k, v are `[B, H, W, heads, d]` (NATTEN's), logits scale already folded into q/k (HDiT's
cosine-sim attention, softmax scale 1), output the same shape.
"""
from __future__ import annotations

import warnings

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

BLOCK_SIZE = 128  # FlexAttention's default sparse block (query and key tiles)
_MASK_CHUNK = 1 << 24  # mask entries evaluated at once while building a block mask
_BLOCK_MASKS: dict[tuple, BlockMask] = {}  # plain dict: torch.compile traces a hit as a constant
_compiled_flex = None


def _pair(x, name: str) -> tuple[int, int]:
    t = (x, x) if isinstance(x, int) else tuple(x)
    if len(t) != 2 or not all(isinstance(v, int) for v in t):
        raise ValueError(f"{name}={x!r}; expected an int or a pair of ints")
    return t


# --------------------------------------------------------------------------------------------
# mask_mods (b, h, q_idx, kv_idx) -> bool; token index = y * W + x. Written with broadcasting
# tensor ops so the same function serves FlexAttention (vmapped scalars) and dense evaluation.
# --------------------------------------------------------------------------------------------

def neighborhood_mask_mod(height: int, width: int, kernel_size):
    """NATTEN neighborhood: keys in the k x k window starting at clamp(i - k//2, 0, L - k) per axis."""
    kh, kw = _pair(kernel_size, "kernel_size")
    for k, n, axis in ((kh, height, "height"), (kw, width, "width")):
        if k < 1 or k % 2 == 0:
            raise ValueError(f"kernel_size {k} must be a positive odd integer (NATTEN semantics)")
        if k > n:
            raise ValueError(f"kernel_size {k} is larger than the grid {axis} {n}")

    def mask_mod(b, h, q_idx, kv_idx):
        qy, qx = q_idx // width, q_idx % width
        ky, kx = kv_idx // width, kv_idx % width
        y0 = (qy - kh // 2).clamp(0, height - kh)  # window shifted inward at the borders
        x0 = (qx - kw // 2).clamp(0, width - kw)
        return (ky >= y0) & (ky < y0 + kh) & (kx >= x0) & (kx < x0 + kw)

    return mask_mod


def shifted_window_mask_mod(height: int, width: int, window_size, shift):
    """Swin attention (cyclic shift by -shift, windows, wrapped regions masked, shift back).

    In the original (unrolled) coordinates this is: tokens attend within the same group per axis,
    group = (y + window - shift) // window. The wrapped Swin window splits into the groups of
    [0, shift) and [L - window + shift, L), which is exactly what Swin's region mask does.
    """
    wh, ww = _pair(window_size, "window_size")
    sh, sw = _pair(shift, "shift")
    for w, s, n, axis in ((wh, sh, height, "height"), (ww, sw, width, "width")):
        if w < 1 or n % w:
            raise ValueError(f"window_size {w} must be positive and divide the grid {axis} {n}")
        if not 0 <= s < w:
            raise ValueError(f"shift {s} must be in [0, window_size={w})")
    n_tokens = height * width

    def mask_mod(b, h, q_idx, kv_idx):
        qy, qx = q_idx // width, q_idx % width
        ky, kx = kv_idx // width, kv_idx % width
        same_y = (qy + wh - sh) // wh == (ky + wh - sh) // wh
        same_x = (qx + ww - sw) // ww == (kx + ww - sw) // ww
        return same_y & same_x & (kv_idx < n_tokens)  # padded keys past the grid never match

    return mask_mod


# --------------------------------------------------------------------------------------------
# Block masks: built once per (kind, grid, params, device), then cached.
# --------------------------------------------------------------------------------------------

def build_block_mask(mask_mod, n_tokens: int, device, block_size: int = BLOCK_SIZE) -> BlockMask:
    """BlockMask for a self-attention `mask_mod` over `n_tokens`, evaluated in chunks of query blocks.

    Same result as `create_block_mask(mask_mod, None, None, n, n)` (full blocks kept apart so the
    kernel skips mask_mod on them), but peak memory stays ~_MASK_CHUNK entries, so 1024 px grids
    (65536 tokens) need no dense N x N mask.
    """
    nb = -(-n_tokens // block_size)
    kv = torch.arange(nb * block_size, device=device)
    kv_valid = (kv < n_tokens).view(1, nb, block_size)
    rows = max(1, _MASK_CHUNK // (block_size * nb * block_size))  # query blocks per chunk
    partial, full = [], []
    for start in range(0, nb, rows):
        q = torch.arange(start * block_size, min(nb, start + rows) * block_size, device=device)
        m = mask_mod(None, None, q[:, None], kv[None, :]) & (q < n_tokens)[:, None] & kv_valid.view(1, -1)
        m = m.view(-1, block_size, nb, block_size).sum(dim=(1, 3))  # [q blocks, kv blocks] counts
        full.append(m == block_size * block_size)
        partial.append((m > 0) & (m < block_size * block_size))
    partial, full = torch.cat(partial)[None, None], torch.cat(full)[None, None]

    def ordered(dense):  # (blocks per row, their column indices first)
        dense = dense.to(torch.int32)
        cols = torch.argsort(dense, dim=-1, descending=True, stable=True)
        return dense.sum(-1, dtype=torch.int32), cols.to(torch.int32)

    (kv_num, kv_idx), (full_num, full_idx) = ordered(partial), ordered(full)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block_size,
                                    mask_mod=mask_mod, seq_lengths=(n_tokens, n_tokens))


def _cached(key: tuple, make) -> BlockMask:
    bm = _BLOCK_MASKS.get(key)
    if bm is None:
        with torch.inference_mode(False):  # a mask first built while sampling must also serve training
            bm = _BLOCK_MASKS[key] = make()
    return bm


def neighborhood_block_mask(height: int, width: int, kernel_size, device) -> BlockMask:
    device = torch.device(device)
    key = ("neighborhood", height, width, _pair(kernel_size, "kernel_size"), device)
    return _cached(key, lambda: build_block_mask(neighborhood_mask_mod(height, width, kernel_size),
                                                 height * width, device))


def shifted_window_block_mask(height: int, width: int, window_size, shift, device) -> BlockMask:
    device = torch.device(device)
    key = ("shifted_window", height, width, _pair(window_size, "window_size"), _pair(shift, "shift"), device)
    return _cached(key, lambda: build_block_mask(shifted_window_mask_mod(height, width, window_size, shift),
                                                 height * width, device))


def clear_block_mask_cache() -> None:
    _BLOCK_MASKS.clear()


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------

def _flex(device: torch.device):
    """Compiled FlexAttention on CUDA (fused kernels); the eager forward elsewhere. Inside a compiled
    model the plain op is traced into the surrounding graph, which fuses it the same way."""
    global _compiled_flex
    if device.type != "cuda" or torch.compiler.is_compiling():
        return flex_attention
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


def _attend(q, k, v, block_mask: BlockMask):
    if not (q.shape == k.shape == v.shape and q.dim() == 5):
        raise ValueError(f"q, k, v must share one [B, H, W, heads, d] shape; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    B, H, W, nh, d = q.shape
    # q/k may come out of an fp32 cosine normalisation while v is in the autocast dtype.
    q, k = q.to(v.dtype), k.to(v.dtype)
    q, k, v = (t.reshape(B, H * W, nh, d).transpose(1, 2) for t in (q, k, v))  # [B, heads, N, d]
    if q.device.type == "cpu":
        # inductor's CPU flex template (torch 2.14.1) fails to lower strided views ("too many values to unpack")
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
            raise NotImplementedError("FlexAttention has no CPU backward in PyTorch; train on CPU with "
                                      "the 'masked' attention backend (backend='flex' is for CUDA training)")
        with warnings.catch_warnings():  # the eager path is the intended CPU path here
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            out = flex_attention(q, k, v, block_mask=block_mask, scale=1.0)
    else:
        out = _flex(q.device)(q, k, v, block_mask=block_mask, scale=1.0)
    return out.transpose(1, 2).reshape(B, H, W, nh, d)


def neighborhood_attention_flex(q, k, v, kernel_size):
    """Neighborhood attention with exact NATTEN semantics; `[B, H, W, heads, d]` in and out."""
    _, H, W, _, _ = q.shape
    return _attend(q, k, v, neighborhood_block_mask(H, W, kernel_size, q.device))


def shifted_window_attention_flex(q, k, v, window_size, shift):
    """Swin shifted-window attention (shift 0 = plain windows); `[B, H, W, heads, d]` in and out."""
    _, H, W, _, _ = q.shape
    return _attend(q, k, v, shifted_window_block_mask(H, W, window_size, shift, q.device))
