"""Attention kernels against naive reference implementations (NATTEN and Swin semantics)."""
import pytest
import torch

from hdit.model import attention as A


def qkv(b=1, h=9, w=10, heads=2, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, w, heads, d, generator=g) * 2 for _ in range(3)]


def dense_attention(q, k, v, allowed):
    """Softmax(q k^T) v over flattened tokens with a [N, N] bool mask; softmax scale 1."""
    b, h, w, n, d = q.shape
    q, k, v = (t.reshape(b, h * w, n, d).transpose(1, 2) for t in (q, k, v))
    logits = (q @ k.transpose(-1, -2)).masked_fill(~allowed, float("-inf"))
    return (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, h, w, n, d)


def naive_neighborhood(q, k, v, kernel):
    """Loop over queries; the window starts at clamp(i - k//2, 0, n - k) on each axis (NATTEN)."""
    b, h, w, n, d = q.shape
    out = torch.empty_like(q)
    for i in range(h):
        si = min(max(i - kernel // 2, 0), h - kernel)
        for j in range(w):
            sj = min(max(j - kernel // 2, 0), w - kernel)
            keys = k[:, si:si + kernel, sj:sj + kernel].reshape(b, -1, n, d)
            vals = v[:, si:si + kernel, sj:sj + kernel].reshape(b, -1, n, d)
            p = torch.einsum("bnd,bknd->bnk", q[:, i, j], keys).softmax(-1)
            out[:, i, j] = torch.einsum("bnk,bknd->bnd", p, vals)
    return out


def test_global_matches_dense_softmax_scale_1():
    q, k, v = qkv()
    allowed = torch.ones(90, 90, dtype=torch.bool)
    torch.testing.assert_close(A.global_attention(q, k, v), dense_attention(q, k, v, allowed))


@pytest.mark.parametrize("kernel", [3, 7])
def test_neighborhood_masked_equals_naive_loop(kernel):
    q, k, v = qkv(b=2, h=9, w=10)
    torch.testing.assert_close(A.neighborhood_attention(q, k, v, kernel, backend="masked"),
                               naive_neighborhood(q, k, v, kernel), atol=1e-5, rtol=1e-5)


def test_neighborhood_mask_exactly_k2_keys_shifted_inward():
    mask = A.neighborhood_mask(9, 10, 7, torch.device("cpu"))
    assert mask.shape == (90, 90)
    assert (mask.sum(-1) == 49).all()  # every query sees exactly k*k keys, also at the borders
    # the corner query's window is shifted inward: rows 0..6, columns 0..6
    corner = mask[0].reshape(9, 10)
    assert corner[:7, :7].all() and corner.sum() == 49
    assert A.neighborhood_mask(9, 10, 7, torch.device("cpu")) is mask  # cached


def test_neighborhood_equals_natten_forward_cpu():
    natten = pytest.importorskip("natten")
    q, k, v = qkv(h=8, w=9, d=16)
    with torch.no_grad():
        ref = natten.na2d(q, k, v, 7, scale=1.0)
    torch.testing.assert_close(A.neighborhood_attention(q, k, v, 7, backend="masked"), ref, atol=1e-4, rtol=1e-4)


def test_auto_backend_on_cpu_is_masked_and_trains():
    assert A.resolve_backend("auto", torch.device("cpu")) == "masked"
    q, k, v = (t.requires_grad_() for t in qkv())
    A.neighborhood_attention(q, k, v, 7).sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (q, k, v))


@pytest.mark.parametrize("h,w,kernel", [(16, 16, 7), (32, 48, 7), (24, 16, 3), (22, 22, 7)])
def test_neighborhood_tiled_equals_naive_loop_and_its_gradients(h, w, kernel):
    """The tiled CPU kernel (query tiles attend their key halo) is exact NATTEN attention, borders included,
    in values and gradients; grids it cannot tile fall back to the masked kernel."""
    q, k, v = (t.requires_grad_() for t in qkv(b=2, h=h, w=w, heads=2, d=8))
    out = A.neighborhood_attention(q, k, v, kernel, backend="tiled")
    torch.testing.assert_close(out, naive_neighborhood(q, k, v, kernel), atol=1e-5, rtol=1e-5)
    def grads(backend):  # in float64, so the comparison is not limited by float32 round-off
        x = [t.detach().double().requires_grad_() for t in (q, k, v)]
        return torch.autograd.grad(A.neighborhood_attention(*x, kernel, backend=backend).square().sum(), x)

    for a, b in zip(grads("tiled"), grads("masked")):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_tiled_mask_sees_exactly_k2_keys_per_query():
    mask = A.tiled_mask(32, 48, 16, 7, torch.device("cpu"))
    assert mask.shape == (2 * 3, 1, 16 * 16, 22 * 22)
    assert (mask.sum(-1) == 49).all()
    assert A.tile_size(32, 48, 7) == 16 and A.tile_size(16, 16, 7) == 8 and A.tile_size(9, 10, 7) is None


def test_auto_on_cpu_switches_to_tiled_above_32x32_tokens(monkeypatch):
    calls = []
    monkeypatch.setitem(A._NA_KERNELS, "tiled", lambda *a: calls.append("tiled") or a[0])
    monkeypatch.setitem(A._NA_KERNELS, "masked", lambda *a: calls.append("masked") or a[0])
    for h in (32, 40):
        A.neighborhood_attention(*qkv(h=h, w=h), 7)
    assert calls == ["masked", "tiled"]


def test_bad_arguments_are_named():
    q, k, v = qkv(h=6, w=6)
    with pytest.raises(ValueError, match="'nope'"):
        A.neighborhood_attention(q, k, v, 3, backend="nope")
    with pytest.raises(ValueError, match="size 7 exceeds the 6x6"):
        A.neighborhood_attention(q, k, v, 7)
    with pytest.raises(ValueError, match="divisible by window 4"):
        A.shifted_window_attention(*qkv(h=6, w=8), 4, 2)


def naive_swin_mask(h, w, window, shift):
    """Shifted windows without the cyclic roll: windows of the grid offset by `shift`, cut at the borders
    (which is what Swin's roll + region mask computes)."""
    def ids(n):
        return torch.div(torch.arange(n) - shift, window, rounding_mode="floor")

    r, c = ids(h), ids(w)
    rid = (r[:, None] * 1000 + c[None, :]).reshape(-1)
    return rid[:, None] == rid[None, :]


@pytest.mark.parametrize("shift", [0, 2, 4])
def test_shifted_window_equals_naive(shift):
    q, k, v = qkv(b=2, h=16, w=24, heads=2, d=8)
    ref = dense_attention(q, k, v, naive_swin_mask(16, 24, 8, shift))
    torch.testing.assert_close(A.shifted_window_attention(q, k, v, 8, shift), ref, atol=1e-5, rtol=1e-5)


def test_neighborhood_routes_through_custom_op_when_traced():
    q, k, v = qkv(h=8, w=8)
    traced = torch.jit.trace(lambda q, k, v: A.neighborhood_attention(q, k, v, 5), (q, k, v))
    assert "hdit::neighborhood_attention" in str(traced.graph)
    torch.testing.assert_close(traced(q, k, v), A.neighborhood_attention(q, k, v, 5, backend="masked"))
    meta = [t.to("meta") for t in (q, k, v)]
    assert A.neighborhood_attention_op(*meta, 5).shape == q.shape  # fake kernel


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["natten", "flex"])
def test_cuda_backends_match_masked(backend):
    q, k, v = (t.cuda() for t in qkv(b=2, h=16, w=16, heads=4, d=64))
    try:
        out = A.neighborhood_attention(q, k, v, 7, backend=backend)
    except ImportError as e:
        pytest.skip(f"{backend} unavailable: {e}")
    torch.testing.assert_close(out, A.neighborhood_attention(q, k, v, 7, backend="masked"), atol=2e-3, rtol=2e-3)
