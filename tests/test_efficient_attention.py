"""Tests for shared.efficient_attention: FlashAttention tiling, sliding/sparse masks, linear attention.

Oracles: ``F.scaled_dot_product_attention`` (outputs, gradients and logsumexp via
``torch.logsumexp`` of explicit scores), masks built by explicit Python loops from their
definitions, the parallel form of linear attention written out here, and ``gradcheck``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import shared.attention as attention
from shared.attention import build_attention_mask
from shared.efficient_attention import (flash_attention, flash_attention_forward, linear_attention,
                                        sliding_window_mask, strided_sparse_mask)


def _qkv(B, H, T, d, T_k=None, d_v=None, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    T_k = T if T_k is None else T_k
    d_v = d if d_v is None else d_v
    return (torch.randn(B, H, T, d, generator=g, dtype=dtype), torch.randn(B, H, T_k, d, generator=g, dtype=dtype),
            torch.randn(B, H, T_k, d_v, generator=g, dtype=dtype))


def test_reexported_from_shared_attention():
    for name in ("flash_attention", "linear_attention", "sliding_window_mask", "strided_sparse_mask"):
        assert getattr(attention, name) is getattr(__import__("shared.efficient_attention", fromlist=[name]), name)
        assert name in attention.__all__


@pytest.mark.parametrize("T", [1, 5, 64, 100, 129])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("blocks", [(64, 64), (16, 48), (7, 1), (128, 32)])
def test_flash_equals_sdpa(T, causal, blocks):
    q, k, v = _qkv(2, 3, T, 16, seed=T)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    out = flash_attention(q, k, v, causal=causal, block_q=blocks[0], block_k=blocks[1])
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert (out - ref).abs().max() < 1e-5


@pytest.mark.parametrize("d, d_v", [(1, 1), (8, 8), (64, 64), (32, 12)])
def test_flash_head_dims(d, d_v):
    q, k, v = _qkv(1, 2, 77, d, d_v=d_v, seed=d)
    for causal in (True, False):
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        assert (flash_attention(q, k, v, causal=causal, block_q=32, block_k=16) - ref).abs().max() < 1e-5


def test_flash_logsumexp_and_scale():
    q, k, v = _qkv(2, 2, 50, 8)
    out, lse = flash_attention(q, k, v, causal=True, block_q=16, block_k=16, return_lse=True)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(8)
    scores = scores.masked_fill(torch.ones(50, 50, dtype=torch.bool).triu(1), float("-inf"))
    assert lse.shape == (2, 2, 50) and torch.allclose(lse, torch.logsumexp(scores, -1), atol=1e-5)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3)
    assert torch.allclose(flash_attention(q, k, v, scale=0.3, block_q=16, block_k=8), ref, atol=1e-5)


def test_flash_queries_after_cached_keys():
    """T_q < T_k: the queries are the last T_q positions (a decode step), as build_attention_mask."""
    q, k, v = _qkv(2, 2, 9, 16, T_k=70)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=build_attention_mask(9, 70))
    assert (flash_attention(q, k, v, block_q=4, block_k=16) - ref).abs().max() < 1e-5
    ref_nc = F.scaled_dot_product_attention(q, k, v)
    assert (flash_attention(q, k, v, causal=False, block_q=4, block_k=16) - ref_nc).abs().max() < 1e-5


def test_flash_skips_tiles_above_the_diagonal(monkeypatch):
    """Causal: only the tiles on or below the diagonal are computed (T/b (T/b + 1) / 2 of them)."""
    import shared.efficient_attention as ea
    calls = []
    real = ea._tile_mask
    monkeypatch.setattr(ea, "_tile_mask", lambda *a: calls.append(a[:4]) or real(*a))
    q, k, v = _qkv(1, 1, 256, 8)
    with torch.no_grad():
        flash_attention_forward(q, k, v, causal=True, block_q=32, block_k=32)
    assert len(calls) == 8 * 9 // 2
    assert all(j0 <= i0 for i0, _, j0, _ in calls)
    calls.clear()
    with torch.no_grad():
        flash_attention_forward(q, k, v, causal=True, block_q=32, block_k=32, window=32)
    assert len(calls) == 8 + 7  # the band: the diagonal tile and the one left of it


@pytest.mark.parametrize("window", [1, 3, 16, 40, 500])
def test_flash_sliding_window_equals_sdpa_with_mask(window):
    q, k, v = _qkv(2, 2, 100, 8, seed=window)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=sliding_window_mask(100, window))
    assert (flash_attention(q, k, v, block_q=16, block_k=24, window=window) - ref).abs().max() < 1e-5


def test_flash_backward_matches_sdpa_gradients():
    for causal, window, T in ((True, None, 45), (False, None, 33), (True, 7, 40)):
        q, k, v = (t.requires_grad_() for t in _qkv(2, 2, T, 8, seed=T))
        g = torch.randn(2, 2, T, 8, generator=torch.Generator().manual_seed(1))
        mask = sliding_window_mask(T, window) if window else None
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)
        ref_grads = torch.autograd.grad(ref, (q, k, v), g)
        out = flash_attention(q, k, v, causal=causal, block_q=16, block_k=8, window=window)
        grads = torch.autograd.grad(out, (q, k, v), g)
        for name, a, b in zip("qkv", grads, ref_grads):
            assert (a - b).abs().max() < 1e-5, (name, causal, window)


def test_flash_gradcheck_float64():
    q, k, v = (t.requires_grad_() for t in _qkv(1, 1, 11, 4, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda a, b, c: flash_attention(a, b, c, block_q=4, block_k=3), (q, k, v))


def test_flash_half_precision_accumulates_in_fp32():
    q, k, v = _qkv(1, 2, 70, 16)
    out = flash_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), block_q=16, block_k=16)
    ref = F.scaled_dot_product_attention(q.bfloat16().float(), k.bfloat16().float(), v.bfloat16().float(), is_causal=True)
    assert out.dtype == torch.bfloat16 and (out.float() - ref).abs().max() < 2e-2


def test_flash_bad_input():
    q, k, v = _qkv(1, 2, 8, 4)
    for kwargs, match in ((dict(block_q=0), "block_q"), (dict(block_k=-1), "block_k"), (dict(block_q=2.0), "block_q"),
                          (dict(block_k=True), "block_k"), (dict(window=0), "window"), (dict(causal=1), "causal")):
        with pytest.raises((ValueError, TypeError), match=match):
            flash_attention(q, k, v, **kwargs)
    with pytest.raises(ValueError, match="mismatched"):
        flash_attention(q, k[:, :1], v)
    with pytest.raises(ValueError, match="mismatched"):
        flash_attention(q, k, v[:, :, :5])
    with pytest.raises(ValueError, match="head size"):
        flash_attention(q, k[..., :3], v)
    with pytest.raises(ValueError, match=r"\[B, H, T, d\]"):
        flash_attention(q[0], k[0], v[0])
    with pytest.raises(ValueError, match="floating"):
        flash_attention(q.long(), k.long(), v.long())
    with pytest.raises(ValueError, match="dtype"):
        flash_attention(q, k.double(), v)
    with pytest.raises(ValueError, match="T_q <= T_k"):
        flash_attention(q, k[:, :, :4], v[:, :, :4])
    with pytest.raises(ValueError, match="empty"):
        flash_attention(q, k[:, :, :0], v[:, :, :0], causal=False)
    with pytest.raises(TypeError, match="q must be"):
        flash_attention(q.tolist(), k, v)


def _loop_mask(T, allowed):
    return torch.tensor([[allowed(i, j) for j in range(T)] for i in range(T)])


def test_sliding_window_mask_against_loops():
    for T, w in ((1, 1), (7, 1), (10, 3), (9, 9), (5, 20)):
        expected = _loop_mask(T, lambda i, j: i - w < j <= i)
        m = sliding_window_mask(T, w)
        assert m.dtype == torch.bool and torch.equal(m, expected)
        assert int(m.sum(-1).max()) == min(w, T)  # at most w keys per query: O(T * w)
    assert torch.equal(sliding_window_mask(6, 6), torch.ones(6, 6, dtype=torch.bool).tril())


def test_strided_sparse_mask_against_loops():
    for T, block, stride in ((16, 4, 4), (20, 3, 5), (8, 1, 1), (12, 12, 2)):
        expected = _loop_mask(T, lambda i, j: j <= i and (i - j < block or (i - j) % stride == 0))
        assert torch.equal(strided_sparse_mask(T, block, stride), expected)
    m = strided_sparse_mask(64, 8, 8)
    # sparse: at most block + i // stride keys per query (here <= 16 of up to 64)
    assert int(m.sum(-1).max()) <= 8 + 63 // 8 and m.sum() < 0.4 * torch.ones(64, 64).tril().sum()
    # every key reachable in two hops (local then strided): (M @ M) covers the causal triangle
    two_hops = (m.float() @ m.float()) > 0
    assert torch.equal(two_hops, torch.ones(64, 64, dtype=torch.bool).tril())


@pytest.mark.parametrize("fn, args", [(sliding_window_mask, (0, 2)), (sliding_window_mask, (4, 0)),
                                      (sliding_window_mask, (4.0, 2)), (strided_sparse_mask, (8, 0, 2)),
                                      (strided_sparse_mask, (8, 2, -1)), (strided_sparse_mask, (-8, 2, 2))])
def test_masks_bad_input(fn, args):
    with pytest.raises(ValueError, match="must be a positive int"):
        fn(*args)


def _linear_reference(q, k, v, causal):
    """Eq. 2 of Katharopoulos et al. written out with an explicit similarity matrix."""
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    sim = fq @ fk.transpose(-2, -1)
    if causal:
        sim = sim.tril()
    return (sim @ v) / sim.sum(-1, keepdim=True)


@pytest.mark.parametrize("causal", [True, False])
def test_linear_attention_forms_agree(causal):
    q, k, v = _qkv(2, 3, 70, 8, d_v=5, dtype=torch.float64)
    ref = _linear_reference(q, k, v, causal)
    for form, chunk in (("parallel", 64), ("recurrent", 64), ("chunked", 16), ("chunked", 1), ("chunked", 100)):
        out = linear_attention(q, k, v, causal=causal, form=form, chunk_size=chunk, eps=0.0)
        assert out.shape == (2, 3, 70, 5)
        assert (out - ref).abs().max() < 1e-10, (form, chunk)


def test_linear_attention_is_causal_and_differs_from_softmax():
    q, k, v = _qkv(1, 2, 30, 8)
    out = linear_attention(q, k, v)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 20:] += 3.0
    v2[:, :, 20:] -= 3.0
    assert torch.allclose(linear_attention(q, k2, v2)[:, :, :20], out[:, :, :20], atol=1e-6)
    assert (out - F.scaled_dot_product_attention(q, k, v, is_causal=True)).abs().max() > 1e-2


def test_linear_attention_bad_input():
    q, k, v = _qkv(1, 2, 8, 4)
    with pytest.raises(ValueError, match="form"):
        linear_attention(q, k, v, form="fast")
    with pytest.raises(ValueError, match="chunk_size"):
        linear_attention(q, k, v, chunk_size=0)
    with pytest.raises(ValueError, match="T_q=4"):
        linear_attention(q[:, :, :4], k, v)
    with pytest.raises(ValueError, match="mismatched"):
        linear_attention(q, k, v[:, :1])
    with pytest.raises(TypeError, match="causal"):
        linear_attention(q, k, v, causal="yes")
