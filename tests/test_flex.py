"""FlexAttention neighborhood / shifted-window attention against naive references written here."""
import pytest
import torch

from hdit.model import flex

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture
def fp32_highest():
    """Exact fp32 matmuls (no TF32) for the CUDA comparisons, whatever ran before in this process."""
    prev = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(prev)


# ---- naive references ------------------------------------------------------------------------

def natten_mask(H, W, k):
    """Dense [N, N] mask with NATTEN's rule, written as explicit loops over queries."""
    m = torch.zeros(H * W, H * W, dtype=torch.bool)
    for y in range(H):
        for x in range(W):
            y0 = min(max(y - k // 2, 0), H - k)
            x0 = min(max(x - k // 2, 0), W - k)
            for ky in range(y0, y0 + k):
                for kx in range(x0, x0 + k):
                    m[y * W + x, ky * W + kx] = True
    return m


def masked_attention(q, k, v, mask):
    B, H, W, nh, d = q.shape
    q, k, v = (t.reshape(B, H * W, nh, d).transpose(1, 2) for t in (q, k, v))
    logits = (q @ k.transpose(-1, -2)).masked_fill(~mask, float("-inf"))
    return (logits.softmax(-1) @ v).transpose(1, 2).reshape(B, H, W, nh, d)


def swin_reference(q, k, v, w, s):
    """Swin (Liu et al. 2021): cyclic shift, window partition, region mask, shift back."""
    B, H, W, nh, d = q.shape
    q, k, v = (torch.roll(t, (-s, -s), dims=(1, 2)) for t in (q, k, v))
    region = torch.zeros(H, W, dtype=torch.long)
    cuts = lambda L: (slice(0, L - w), slice(L - w, L - s), slice(L - s, L)) if s else (slice(0, L),)  # noqa: E731
    for i, hs in enumerate(cuts(H)):
        for j, ws in enumerate(cuts(W)):
            region[hs, ws] = 3 * i + j

    def windows(t):  # [B, H, W, ...] -> [B, nWh, nWw, w*w, ...]
        n = t.shape[0]
        t = t.reshape(n, H // w, w, W // w, w, *t.shape[3:]).transpose(2, 3)
        return t.reshape(n, H // w, W // w, w * w, *t.shape[5:])

    qw, kw, vw = (windows(t).transpose(-3, -2) for t in (q, k, v))  # [B, nWh, nWw, nh, w*w, d]
    r = windows(region[None])[0]  # [nWh, nWw, w*w]
    allowed = (r[..., :, None] == r[..., None, :])[None, :, :, None]
    logits = (qw @ kw.transpose(-1, -2)).masked_fill(~allowed, float("-inf"))
    o = (logits.softmax(-1) @ vw).transpose(-3, -2)  # [B, nWh, nWw, w*w, nh, d]
    o = o.reshape(B, H // w, W // w, w, w, nh, d).transpose(2, 3).reshape(B, H, W, nh, d)
    return torch.roll(o, (s, s), dims=(1, 2))


def qkv(B, H, W, nh=2, d=16, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return [(3 * torch.randn(B, H, W, nh, d, generator=g)).to(device) for _ in range(3)]


# ---- CPU: exact semantics ----------------------------------------------------------------------

@pytest.mark.parametrize("H,W,k", [(7, 7, 7), (9, 9, 3), (12, 20, 5), (16, 11, 7), (13, 13, 1)])
def test_neighborhood_matches_naive(H, W, k):
    q, k_, v = qkv(2, H, W)
    out = flex.neighborhood_attention_flex(q, k_, v, k)
    ref = masked_attention(q, k_, v, natten_mask(H, W, k))
    assert out.shape == q.shape
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_neighborhood_mask_properties():
    """Every query sees exactly k*k keys, itself included; corner windows are shifted inward."""
    H, W, k = 10, 13, 5
    m = flex.neighborhood_mask_mod(H, W, k)(None, None, torch.arange(H * W)[:, None], torch.arange(H * W)[None])
    assert torch.equal(m, natten_mask(H, W, k))
    assert (m.sum(1) == k * k).all() and m.diagonal().all()
    assert m[0].view(H, W)[:k, :k].all()  # top-left query: window [0, k) x [0, k)


@pytest.mark.parametrize("H,W,w,s", [(8, 8, 4, 2), (16, 8, 8, 4), (12, 16, 4, 1), (8, 12, 4, 0)])
def test_shifted_window_matches_swin(H, W, w, s):
    q, k, v = qkv(2, H, W, seed=1)
    out = flex.shifted_window_attention_flex(q, k, v, w, s)
    torch.testing.assert_close(out, swin_reference(q, k, v, w, s), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["neighborhood", "shifted_window"])
@pytest.mark.parametrize("block", [16, 32])
def test_block_mask_structure(kind, block, monkeypatch):
    """Chunked block-mask construction = torch's dense create_block_mask, and it covers the mask."""
    from torch.nn.attention.flex_attention import create_block_mask

    monkeypatch.setattr(flex, "_MASK_CHUNK", 1)  # one query block per chunk: exercises the chunk loop
    H, W = 12, 20  # 240 tokens: the last block is padded
    mm = flex.neighborhood_mask_mod(H, W, 5) if kind == "neighborhood" else flex.shifted_window_mask_mod(H, W, 4, 2)
    ours = flex.build_block_mask(mm, H * W, "cpu", block_size=block)
    theirs = create_block_mask(mm, None, None, H * W, H * W, device="cpu", BLOCK_SIZE=block)
    assert torch.equal(ours.to_dense(), theirs.to_dense())
    assert torch.equal(ours.kv_num_blocks, theirs.kv_num_blocks)
    assert torch.equal(ours.full_kv_num_blocks, theirs.full_kv_num_blocks)
    dense = mm(None, None, torch.arange(H * W)[:, None], torch.arange(H * W)[None])
    nb = ours.to_dense()[0, 0].repeat_interleave(block, 0).repeat_interleave(block, 1)[: H * W, : H * W]
    assert not (dense & ~nb.bool()).any()  # no allowed pair lives in a skipped block
    assert ours.sparsity() > 30  # real block sparsity at this size


def test_block_mask_cache(monkeypatch):
    flex.clear_block_mask_cache()
    calls = []
    build = flex.build_block_mask
    monkeypatch.setattr(flex, "build_block_mask", lambda *a, **kw: calls.append(a[1]) or build(*a, **kw))
    q, k, v = qkv(1, 9, 9)
    for _ in range(3):
        flex.neighborhood_attention_flex(q, k, v, 3)
        flex.shifted_window_attention_flex(q[:, :8, :8], k[:, :8, :8], v[:, :8, :8], 4, 2)
    assert calls == [81, 64]  # one build per (kind, grid, params, device), then hits
    assert flex.neighborhood_block_mask(9, 9, 3, "cpu") is flex.neighborhood_block_mask(9, 9, (3, 3), "cpu")
    assert flex.neighborhood_block_mask(9, 9, 5, "cpu") is not flex.neighborhood_block_mask(9, 9, 3, "cpu")
    assert len(calls) == 3


@pytest.mark.parametrize("bad", [
    lambda q: flex.neighborhood_attention_flex(q, q, q, 4),  # even kernel
    lambda q: flex.neighborhood_attention_flex(q, q, q, 11),  # kernel > grid
    lambda q: flex.shifted_window_attention_flex(q, q, q, 3, 1),  # window does not divide 8
    lambda q: flex.shifted_window_attention_flex(q, q, q, 4, 4),  # shift >= window
    lambda q: flex.neighborhood_attention_flex(q, q[:, :4], q, 3),  # shape mismatch
])
def test_bad_arguments(bad):
    with pytest.raises(ValueError):
        bad(torch.zeros(1, 8, 8, 1, 16))


def test_cpu_backward_is_refused_clearly():
    q = torch.zeros(1, 8, 8, 1, 16, requires_grad=True)
    with pytest.raises(NotImplementedError, match="masked"):
        flex.neighborhood_attention_flex(q, q, q, 3)


# ---- CUDA: compiled kernels ----------------------------------------------------------------------

@CUDA
@pytest.mark.gpu
@pytest.mark.parametrize("H,W", [(32, 32), (24, 40)])
def test_cuda_fp32_forward_and_backward(H, W, fp32_highest):
    q, k, v = (t.requires_grad_() for t in qkv(2, H, W, nh=3, d=64, device="cuda"))
    out = flex.neighborhood_attention_flex(q, k, v, 7)
    mask = natten_mask(H, W, 7).cuda()
    qr, kr, vr = (t.detach().clone().requires_grad_() for t in (q, k, v))
    ref = masked_attention(qr, kr, vr, mask)
    torch.testing.assert_close(out, ref, atol=2e-4, rtol=2e-4)
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g)
    for a, b in ((q, qr), (k, kr), (v, vr)):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-3, rtol=1e-3)


@CUDA
@pytest.mark.gpu
def test_cuda_shifted_window_and_bf16(fp32_highest):
    q, k, v = qkv(2, 32, 32, nh=2, d=64, seed=3, device="cuda")
    out = flex.shifted_window_attention_flex(q, k, v, 8, 4)
    torch.testing.assert_close(out, swin_reference(q, k, v, 8, 4), atol=2e-4, rtol=2e-4)
    q, k = q / 10, k / 10  # logits ~ N(0, 0.7): bf16 rounding stays well inside the tolerance
    qb, kb, vb = (t.bfloat16() for t in (q, k, v))
    out = flex.neighborhood_attention_flex(qb, kb, vb, 7)
    assert out.dtype == torch.bfloat16
    ref = masked_attention(q, k, v, natten_mask(32, 32, 7).cuda())
    torch.testing.assert_close(out.float(), ref, atol=5e-2, rtol=5e-2)
