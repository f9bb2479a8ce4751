"""Attention kernels (docs/ARCHITECTURE.md "Attention backend contract").

Every kernel takes q, k, v of shape [B, H, W, heads, d] (NATTEN's layout) with the logit scale already
folded into q and k (HDiT: cosine similarity x learned scale), uses softmax scale 1 and returns
[B, H, W, heads, d].

- `global_attention`: SDPA over all H*W tokens (O(n^2)).
- `neighborhood_attention`: each query attends exactly k x k keys, the window shifted inward at the
  borders (NATTEN semantics, Hassani et al. 2023; dilation 1, no relative position bias). Backends:
  "masked" (pure PyTorch, SDPA over all tokens with a cached neighborhood mask: O(N^2), small grids),
  "tiled" (pure PyTorch, queries in t x t tiles attend their (t+k-1)^2 key halo: O(N), trains the
  paper-size models on CPU up to 1024 px), "natten" (natten.na2d; forward-only on CPU), "flex"
  (FlexAttention, `hdit.model.flex`), "auto".
- `shifted_window_attention`: Swin (Liu et al. 2021) windows of w x w tokens, cyclically shifted by
  `shift`, with the wrapped-around regions masked apart.

FLOP counting: fvcore traces the model with torch.jit, and a masked SDPA would be counted as global
attention. While tracing (`torch.jit.is_tracing()`) `neighborhood_attention` therefore calls the
custom op `hdit::neighborhood_attention` (real kernel: the masked backend; fake kernel for meta
tensors), for which `hdit.flops` registers the 2*N*d*k^2 handle. Training never goes through the
custom op, so it needs no autograd formula. Shifted windows need no custom op: their SDPA over
[B, windows, heads, w^2, d] already has the 2*N*d*w^2 shape.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from einops import rearrange

NA_BACKENDS = ("auto", "masked", "tiled", "natten", "flex")
MASKED_MAX_TOKENS = 1024  # "auto" on CPU: the O(N^2) masked kernel up to 32x32 tokens, tiled above
SW_BACKENDS = ("auto", "windows", "flex")


def _to_seq(x):  # [B, H, W, heads, d] -> [B, heads, H*W, d]
    return x.flatten(1, 2).transpose(1, 2)


def _from_seq(x, h, w):  # inverse of _to_seq
    return x.transpose(1, 2).unflatten(1, (h, w))


def global_attention(q, k, v):
    _, h, w, _, _ = q.shape
    return _from_seq(F.scaled_dot_product_attention(_to_seq(q), _to_seq(k), _to_seq(v), scale=1.0), h, w)


def _mask_cache(build):
    """Cache of a mask builder keyed by its arguments (grid, kernel/window, device: a handful per model). A plain
    dict rather than functools.lru_cache: torch.compile traces through lru_cache and would rebuild the N x N mask
    inside the graph on every call, while a hit in a dict is read as a constant of the graph."""
    cache: dict[tuple, torch.Tensor] = {}

    @functools.wraps(build)
    def cached(*args):
        if args not in cache:
            cache[args] = build(*args)
        return cache[args]

    cached.cache_clear = cache.clear
    return cached


# --- neighborhood attention ------------------------------------------------------------------

def _window_starts(n: int, kernel_size: int, device) -> torch.Tensor:
    """NATTEN: the window of query i is [s, s + k) with s = clamp(i - k//2, 0, n - k)."""
    return (torch.arange(n, device=device) - kernel_size // 2).clamp(0, n - kernel_size)


@_mask_cache
def neighborhood_mask(h: int, w: int, kernel_size: int, device: torch.device) -> torch.Tensor:
    """[h*w, h*w] bool, True where key j lies in query i's k x k neighborhood. Cached per (h, w, k, device)."""
    def axis(n):  # [query, key]
        s, j = _window_starts(n, kernel_size, device)[:, None], torch.arange(n, device=device)[None]
        return (j >= s) & (j < s + kernel_size)

    with torch.inference_mode(False):  # a mask cached while sampling must be usable in training
        return (axis(h)[:, None, :, None] & axis(w)[None, :, None, :]).reshape(h * w, h * w)


def _na_masked(q, k, v, kernel_size):
    _, h, w, _, _ = q.shape
    mask = neighborhood_mask(h, w, kernel_size, q.device)
    return _from_seq(F.scaled_dot_product_attention(_to_seq(q), _to_seq(k), _to_seq(v), attn_mask=mask, scale=1.0),
                     h, w)


def _halo_starts(n: int, tile: int, kernel_size: int, device) -> torch.Tensor:
    """First key row of each query tile's halo: the halo [s, s + tile + k - 1) holds every NATTEN window of
    the tile's queries (their windows start between the first and the last query's start)."""
    first_query = torch.arange(0, n, tile, device=device)
    return (first_query - kernel_size // 2).clamp(0, n - (tile + kernel_size - 1))


def _halo_axis_mask(n: int, tile: int, kernel_size: int, device) -> torch.Tensor:
    """[tiles, tile, halo] bool: query (tile i, offset a) may attend halo key b on this axis."""
    halo = tile + kernel_size - 1
    key = _halo_starts(n, tile, kernel_size, device)[:, None] + torch.arange(halo, device=device)  # [tiles, halo]
    start = _window_starts(n, kernel_size, device).view(-1, tile)  # [tiles, tile]
    return (key[:, None, :] >= start[:, :, None]) & (key[:, None, :] < start[:, :, None] + kernel_size)


@_mask_cache
def tiled_mask(h: int, w: int, tile: int, kernel_size: int, device: torch.device) -> torch.Tensor:
    """[tiles_h * tiles_w, 1, tile^2, halo^2] bool: each query sees exactly its k x k window inside the halo."""
    with torch.inference_mode(False):  # a mask cached while sampling must be usable in training
        rows, cols = _halo_axis_mask(h, tile, kernel_size, device), _halo_axis_mask(w, tile, kernel_size, device)
        m = rows[:, None, :, None, :, None] & cols[None, :, None, :, None, :]  # [th, tw, a, a', b, b']
        halo = tile + kernel_size - 1
        return m.reshape(-1, 1, tile * tile, halo * halo)


def _gather_halos(x, tile: int, kernel_size: int):
    """[B, H, W, heads, d] -> [B * tiles, heads, halo^2, d]: each query tile's key halo."""
    b, h, w, n, d = x.shape
    halo = tile + kernel_size - 1
    rows = (_halo_starts(h, tile, kernel_size, x.device)[:, None] + torch.arange(halo, device=x.device)).flatten()
    cols = (_halo_starts(w, tile, kernel_size, x.device)[:, None] + torch.arange(halo, device=x.device)).flatten()
    x = x[:, rows][:, :, cols]  # [B, th * halo, tw * halo, heads, d]
    return rearrange(x, "b (th i) (tw j) n d -> (b th tw) n (i j) d", i=halo, j=halo)


def tile_size(h: int, w: int, kernel_size: int, tiles=(16, 8)) -> int | None:
    """The query tile of the tiled kernel: the largest of `tiles` that divides the grid and whose halo fits
    (None: use the masked kernel). Larger tiles do more redundant work (halo 22^2 vs 7^2 keys at k = 7) in
    fewer, larger SDPA calls, which on CPU is faster: 256x256 tokens, 2 heads, fwd+bwd 2.5 s (16) vs 3.4 s (8)."""
    for tile in tiles:
        if h % tile == 0 and w % tile == 0 and min(h, w) >= tile + kernel_size - 1:
            return tile
    return None


def _na_tiled(q, k, v, kernel_size):
    b, h, w, n, d = q.shape
    tile = tile_size(h, w, kernel_size)
    if tile is None:
        return _na_masked(q, k, v, kernel_size)
    mask = tiled_mask(h, w, tile, kernel_size, q.device)
    qt = rearrange(q, "b (th i) (tw j) n d -> (b th tw) n (i j) d", i=tile, j=tile)
    kt, vt = _gather_halos(k, tile, kernel_size), _gather_halos(v, tile, kernel_size)
    out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask.repeat(b, 1, 1, 1), scale=1.0)
    return rearrange(out, "(b th tw) n (i j) d -> b (th i) (tw j) n d", b=b, th=h // tile, i=tile, j=tile)


def _na_natten(q, k, v, kernel_size):
    import natten

    return natten.na2d(q.contiguous(), k.contiguous(), v.contiguous(), kernel_size, scale=1.0)


def _na_flex(q, k, v, kernel_size):
    from hdit.model.flex import neighborhood_attention_flex

    return neighborhood_attention_flex(q, k, v, kernel_size)


@functools.lru_cache(maxsize=1)
def _has_libnatten() -> bool:
    try:
        import natten
    except ImportError:
        return False
    return bool(getattr(natten, "HAS_LIBNATTEN", False))


def resolve_backend(backend: str, device: torch.device) -> str:
    """"auto": NATTEN's fused CUDA kernels when on CUDA with libnatten, else flex on CUDA; on CPU "masked"
    (per call: tiled above MASKED_MAX_TOKENS tokens, see `neighborhood_attention`)."""
    if backend not in NA_BACKENDS:
        raise ValueError(f"neighborhood attention backend {backend!r}; expected one of {NA_BACKENDS}")
    if backend != "auto":
        return backend
    if device.type == "cuda":
        return "natten" if _has_libnatten() else "flex"
    return "masked"


@torch.library.custom_op("hdit::neighborhood_attention", mutates_args=())
def neighborhood_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Traceable neighborhood attention (used only under torch.jit tracing, e.g. by `hdit flops`)."""
    return _na_masked(q, k, v, kernel_size)


@neighborhood_attention_op.register_fake
def _(q, k, v, kernel_size):
    return torch.empty_like(q)


_NA_KERNELS = {"masked": _na_masked, "tiled": _na_tiled, "natten": _na_natten, "flex": _na_flex}


def _check(q, k, v, what: str, size: int):
    if q.dim() != 5 or q.shape != k.shape or k.shape[:-1] != v.shape[:-1]:
        raise ValueError(f"{what}: q, k, v must be [B, H, W, heads, d]; got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if size > q.shape[1] or size > q.shape[2]:
        raise ValueError(f"{what}: size {size} exceeds the {q.shape[1]}x{q.shape[2]} token grid")


def neighborhood_attention(q, k, v, kernel_size: int, backend: str = "auto"):
    _check(q, k, v, "neighborhood_attention", kernel_size)
    if torch.jit.is_tracing():
        return neighborhood_attention_op(q, k, v, kernel_size)
    kernel = resolve_backend(backend, q.device)
    if backend == "auto" and kernel == "masked" and q.shape[1] * q.shape[2] > MASKED_MAX_TOKENS:
        kernel = "tiled"  # the masked kernel's N^2 mask and logits do not fit above ~64x64 tokens
    return _NA_KERNELS[kernel](q, k, v, kernel_size)


# --- shifted-window attention (ablation B1) -------------------------------------------------

@_mask_cache
def swin_mask(h: int, w: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    """[h/w * w/w windows, 1, window^2, window^2] bool for the cyclically shifted grid: tokens attend only
    within their region (Swin: slices [0, n - window), [n - window, n - shift), [n - shift, n) per axis)."""
    def regions(n):
        r = torch.zeros(n, dtype=torch.long, device=device)
        r[n - window:] = 1
        r[n - shift:] = 2
        return r

    with torch.inference_mode(False):  # a mask cached while sampling must be usable in training
        label = regions(h)[:, None] * 3 + regions(w)[None, :]  # [h, w]
        label = label.reshape(h // window, window, w // window, window).transpose(1, 2).reshape(-1, window * window)
        return (label[:, :, None] == label[:, None, :])[:, None]


def _windows(x, window):  # [B, H, W, heads, d] -> [B, nW, heads, window^2, d]
    return rearrange(x, "b (hw i) (ww j) n d -> b (hw ww) n (i j) d", i=window, j=window)


def _unwindows(x, h, w, window):  # inverse of _windows
    return rearrange(x, "b (hw ww) n (i j) d -> b (hw i) (ww j) n d", hw=h // window, i=window, j=window)


def shifted_window_attention(q, k, v, window_size: int, shift: int, backend: str = "auto"):
    """Window attention on the grid rolled by (-shift, -shift), Swin-masked when shift > 0, rolled back."""
    _check(q, k, v, "shifted_window_attention", window_size)
    if backend not in SW_BACKENDS:
        raise ValueError(f"shifted window attention backend {backend!r}; expected one of {SW_BACKENDS}")
    _, h, w, _, _ = q.shape
    if h % window_size or w % window_size or not 0 <= shift < window_size:
        raise ValueError(f"shifted_window_attention: grid {h}x{w} must be divisible by window {window_size} "
                         f"and 0 <= shift {shift} < window")
    if backend == "flex":
        from hdit.model.flex import shifted_window_attention_flex

        return shifted_window_attention_flex(q, k, v, window_size, shift)
    if shift:
        q, k, v = (torch.roll(t, (-shift, -shift), dims=(1, 2)) for t in (q, k, v))
    mask = swin_mask(h, w, window_size, shift, q.device) if shift else None
    x = F.scaled_dot_product_attention(*(_windows(t, window_size) for t in (q, k, v)), attn_mask=mask, scale=1.0)
    x = _unwindows(x, h, w, window_size)
    return torch.roll(x, (shift, shift), dims=(1, 2)) if shift else x
