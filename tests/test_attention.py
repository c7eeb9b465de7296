"""Tests for ``shared.attention``: causal multi-head self-attention and its KV cache.

Oracles:
* ``torch.nn.functional.scaled_dot_product_attention(is_causal=True)`` applied to queries,
  keys and values that the test computes itself from the module's weights;
* a per-query Python loop written straight from Vaswani et al. (2017), eq. 1;
* a 2-token example computed by hand (numbers written out below).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from shared.attention import KVCache, MultiHeadAttention, build_attention_mask

BOTH_PATHS = pytest.mark.parametrize("use_sdpa", [True, False], ids=["sdpa", "hand"])


def make(d_in=12, d_out=16, context_length=32, n_heads=4, dropout=0.0, qkv_bias=True,
         use_sdpa=True, seed=0) -> MultiHeadAttention:
    torch.manual_seed(seed)
    m = MultiHeadAttention(d_in, d_out, context_length, n_heads, dropout=dropout,
                           qkv_bias=qkv_bias, use_sdpa=use_sdpa)
    return m.eval()


def reference_attention(m: MultiHeadAttention, x: torch.Tensor) -> torch.Tensor:
    """Independent oracle: project with the documented weight layout, then torch's SDPA."""
    B, T, _ = x.shape
    d_out, H = m.d_out, m.n_heads
    hd = d_out // H
    W = m.qkv.weight  # [3 * d_out, d_in], rows [W_q; W_k; W_v]
    b = m.qkv.bias if m.qkv.bias is not None else torch.zeros(3 * d_out)
    q = x @ W[:d_out].T + b[:d_out]
    k = x @ W[d_out:2 * d_out].T + b[d_out:2 * d_out]
    v = x @ W[2 * d_out:].T + b[2 * d_out:]

    def heads(t):  # head h owns feature block [h*hd, (h+1)*hd)
        return torch.stack([t[..., h * hd:(h + 1) * hd] for h in range(H)], dim=1)  # [B, H, T, hd]

    out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), is_causal=True)
    merged = torch.cat([out[:, h] for h in range(H)], dim=-1)  # [B, T, d_out]
    return merged @ m.out_proj.weight.T + m.out_proj.bias


def loop_attention(m: MultiHeadAttention, x: torch.Tensor) -> torch.Tensor:
    """Second oracle: eq. 1 of Vaswani et al. one query at a time, no masking tricks."""
    B, T, _ = x.shape
    d_out, H = m.d_out, m.n_heads
    hd = d_out // H
    q, k, v = F.linear(x, m.qkv.weight, m.qkv.bias).split(d_out, dim=-1)
    out = torch.zeros(B, T, d_out, dtype=x.dtype)
    for b in range(B):
        for h in range(H):
            sl = slice(h * hd, (h + 1) * hd)
            for i in range(T):
                scores = torch.stack([q[b, i, sl] @ k[b, j, sl] for j in range(i + 1)]) / math.sqrt(hd)
                w = torch.softmax(scores, dim=0)  # only keys 0..i exist for query i
                out[b, i, sl] = sum(w[j] * v[b, j, sl] for j in range(i + 1))
    return F.linear(out, m.out_proj.weight, m.out_proj.bias)


# ----------------------------------------------------------------------------- oracles
@BOTH_PATHS
@pytest.mark.parametrize("qkv_bias", [False, True])
def test_matches_sdpa_oracle(use_sdpa, qkv_bias):
    m = make(use_sdpa=use_sdpa, qkv_bias=qkv_bias)
    x = torch.randn(3, 9, 12)
    with torch.no_grad():
        torch.testing.assert_close(m(x), reference_attention(m, x), atol=1e-5, rtol=1e-5)


@BOTH_PATHS
def test_matches_per_query_loop(use_sdpa):
    m = make(d_in=6, d_out=8, n_heads=2, use_sdpa=use_sdpa)
    x = torch.randn(2, 5, 6)
    with torch.no_grad():
        torch.testing.assert_close(m(x), loop_attention(m, x), atol=1e-5, rtol=1e-5)


@BOTH_PATHS
def test_two_token_hand_computation(use_sdpa):
    """d_in = d_out = 2, one head, W_q = W_k = W_v = I, out_proj = I with zero bias.

    x1 = [1, 0], x2 = [1, 1], so q = k = v = x and d_k = 2.
    Token 1 sees only itself:            out1 = v1 = [1, 0].
    Token 2 scores: q2.k1 = 1, q2.k2 = 2;  divided by sqrt(2): [0.70711, 1.41421].
    softmax: e^0.70711 = 2.02811, e^1.41421 = 4.11325, sum 6.14136
             -> weights [0.33024, 0.66976]  (= 1 / (1 + e^0.70711) and its complement)
    out2 = 0.33024 * [1, 0] + 0.66976 * [1, 1] = [1.0, 0.66976].
    """
    m = MultiHeadAttention(2, 2, context_length=4, n_heads=1, use_sdpa=use_sdpa).eval()
    with torch.no_grad():
        m.qkv.weight.copy_(torch.cat([torch.eye(2)] * 3))
        m.out_proj.weight.copy_(torch.eye(2))
        m.out_proj.bias.zero_()
        out = m(torch.tensor([[[1.0, 0.0], [1.0, 1.0]]]))
    expected = torch.tensor([[[1.0, 0.0], [1.0, 0.66976]]])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    # The weight itself, from the closed form, to more digits.
    assert abs(out[0, 1, 1].item() - 1 / (1 + math.exp(-1 / math.sqrt(2)))) < 1e-6


def test_sdpa_and_hand_written_paths_agree_forward_and_backward():
    fast = make(use_sdpa=True)
    slow = make(use_sdpa=False)
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(2, 17, 12, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y_fast, y_slow = fast(x), slow(x2)
    torch.testing.assert_close(y_fast, y_slow, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(y_fast)
    y_fast.backward(g)
    y_slow.backward(g)
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-5, rtol=1e-5)
    for (name, p_fast), (_, p_slow) in zip(fast.named_parameters(), slow.named_parameters()):
        torch.testing.assert_close(p_fast.grad, p_slow.grad, atol=1e-5, rtol=1e-5, msg=name)


# ----------------------------------------------------------------------------- causality
@BOTH_PATHS
def test_future_tokens_do_not_change_earlier_outputs(use_sdpa):
    m = make(use_sdpa=use_sdpa)
    x = torch.randn(2, 10, 12)
    with torch.no_grad():
        y = m(x)
        for t in (1, 4, 9):
            x2 = x.clone()
            x2[:, t:] = torch.randn_like(x2[:, t:]) * 10
            y2 = m(x2)
            torch.testing.assert_close(y2[:, :t], y[:, :t], atol=1e-6, rtol=1e-6)
            assert not torch.allclose(y2[:, t:], y[:, t:]), "the changed positions should change"


@BOTH_PATHS
def test_jacobian_is_block_lower_triangular(use_sdpa):
    m = make(d_in=4, d_out=4, n_heads=2, use_sdpa=use_sdpa)
    x = torch.randn(1, 5, 4)
    J = torch.autograd.functional.jacobian(lambda inp: m(inp), x)  # [1, 5, 4, 1, 5, 4]
    dep = J[0, :, :, 0].abs().sum(dim=(1, 3))  # [T_out, T_in]
    assert torch.all(dep.triu(diagonal=1) == 0), "an output depends on a later input"
    assert torch.all(dep.diagonal() > 0) and torch.all(dep.tril(-1)[1:, 0] > 0)


# ----------------------------------------------------------------------------- shapes, errors
@BOTH_PATHS
@pytest.mark.parametrize("B,T,d_in,d_out,H", [(1, 1, 8, 8, 1), (4, 7, 5, 12, 3), (2, 32, 16, 16, 16)])
def test_shapes(use_sdpa, B, T, d_in, d_out, H):
    m = make(d_in=d_in, d_out=d_out, n_heads=H, use_sdpa=use_sdpa)
    assert m.head_dim == d_out // H
    assert m(torch.randn(B, T, d_in)).shape == (B, T, d_out)


@pytest.mark.parametrize("d_out,H", [(10, 3), (16, 5), (8, 0)])
def test_d_out_not_divisible_by_heads_raises(d_out, H):
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(8, d_out, 16, H)


@BOTH_PATHS
def test_sequence_longer_than_context_raises(use_sdpa):
    m = make(context_length=8, use_sdpa=use_sdpa)
    m(torch.randn(1, 8, 12))  # exactly context_length is fine
    with pytest.raises(ValueError, match="context_length"):
        m(torch.randn(1, 9, 12))


# ----------------------------------------------------------------------------- dropout
@BOTH_PATHS
def test_dropout_active_in_train_identity_in_eval(use_sdpa):
    m = make(dropout=0.5, use_sdpa=use_sdpa)
    ref = make(dropout=0.0, use_sdpa=use_sdpa)  # same seed -> same weights
    x = torch.randn(2, 12, 12)
    with torch.no_grad():
        m.eval()
        torch.testing.assert_close(m(x), ref(x))  # eval: dropout is the identity
        torch.testing.assert_close(m(x), m(x))
        m.train()
        a, b = m(x), m(x)
    assert not torch.allclose(a, b), "train mode: two calls should drop different weights"
    assert not torch.allclose(a, ref(x).detach())
    # First query sees one key with weight 1: dropped -> 0, kept -> 1/(1-p) = 2.


def test_dropout_is_unbiased_on_attention_weights():
    """Inverted dropout keeps E[weights] unchanged, so the mean train output -> eval output."""
    m = make(d_in=4, d_out=4, n_heads=1, dropout=0.3, use_sdpa=False)
    x = torch.randn(1, 6, 4)
    with torch.no_grad():
        expected = m.eval()(x)
        m.train()
        torch.manual_seed(1)
        mean = m(x.expand(4000, -1, -1)).mean(0, keepdim=True)  # 4000 independent dropout masks
    torch.testing.assert_close(mean, expected, atol=0.05, rtol=0)


# ----------------------------------------------------------------------------- state-dict contract
@pytest.mark.parametrize("qkv_bias", [False, True])
def test_state_dict_contract(qkv_bias):
    d_in, d_out = 12, 16
    m = make(d_in=d_in, d_out=d_out, qkv_bias=qkv_bias)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    expected = {"qkv.weight": (3 * d_out, d_in), "out_proj.weight": (d_out, d_out), "out_proj.bias": (d_out,)}
    if qkv_bias:
        expected["qkv.bias"] = (3 * d_out,)
    assert shapes == expected  # the causal mask is a non-persistent buffer: not saved
    # Loading into the other path works and gives the same function.
    other = make(d_in=d_in, d_out=d_out, qkv_bias=qkv_bias, use_sdpa=False, seed=99)
    other.load_state_dict(m.state_dict(), strict=True)
    x = torch.randn(1, 5, d_in)
    with torch.no_grad():
        torch.testing.assert_close(other(x), m(x), atol=1e-5, rtol=1e-5)


def test_qkv_row_layout_is_query_key_value():
    """Zeroing the value rows (the last third) must zero the attention output before out_proj."""
    m = make(qkv_bias=False)
    with torch.no_grad():
        m.qkv.weight[2 * m.d_out:] = 0
        m.out_proj.bias.zero_()
        assert torch.all(m(torch.randn(1, 4, 12)) == 0)
    m = make(qkv_bias=False)
    with torch.no_grad():  # zero queries and keys: uniform causal average of the values
        m.qkv.weight[:2 * m.d_out] = 0
        x = torch.randn(1, 4, 12)
        v = x @ m.qkv.weight[2 * m.d_out:].T
        avg = torch.cumsum(v, dim=1) / torch.arange(1, 5).view(1, 4, 1)
        torch.testing.assert_close(m(x), m.out_proj(avg), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- KV cache
@BOTH_PATHS
@pytest.mark.parametrize("chunks", [(5, 1, 1, 1, 1), (3, 4, 1, 2)], ids=["decode", "chunked"])
def test_kv_cache_equals_full_recomputation(use_sdpa, chunks):
    m = make(use_sdpa=use_sdpa)
    T = sum(chunks)
    x = torch.randn(2, T, 12)
    cache = KVCache(n_layers=1, max_len=m.context_length)
    outs, start = [], 0
    with torch.no_grad():
        full = m(x)
        for n in chunks:
            outs.append(m(x[:, start:start + n], kv_cache=cache, layer_idx=0))
            cache.length += n  # the model advances the cache once per forward
            start += n
    torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == T
    assert cache.bytes() == 2 * 1 * 2 * m.n_heads * m.context_length * m.head_dim * 4


def test_kv_cache_overflow_and_layers():
    m = make(context_length=8)
    cache = KVCache(n_layers=2, max_len=6)
    assert cache.bytes() == 0
    with torch.no_grad():
        m(torch.randn(1, 4, 12), kv_cache=cache, layer_idx=1)
        cache.length += 4
        assert torch.all(cache.k[0] == 0) and not torch.all(cache.k[1] == 0)
        with pytest.raises(ValueError, match="overflow"):
            m(torch.randn(1, 3, 12), kv_cache=cache, layer_idx=1)


# ----------------------------------------------------------------------------- padding mask
@BOTH_PATHS
def test_left_padded_row_equals_unpadded_row(use_sdpa):
    m = make(use_sdpa=use_sdpa)
    n_pad, T = 3, 6
    real = torch.randn(1, T, 12)
    long_row = torch.randn(1, n_pad + T, 12)
    padded = torch.cat([torch.randn(1, n_pad, 12) * 100, real], dim=1)  # garbage in the pads
    x = torch.cat([padded, long_row])  # [2, n_pad + T, 12]
    mask = torch.ones(2, n_pad + T, dtype=torch.long)
    mask[0, :n_pad] = 0
    with torch.no_grad():
        out = m(x, attn_mask=mask)
        alone = m(real)
        full = m(long_row)
    assert not torch.isnan(out).any(), "a fully masked (padding) query row produced NaN"
    torch.testing.assert_close(out[0, n_pad:], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], full[0], atol=1e-5, rtol=1e-5)  # unpadded row unaffected


@BOTH_PATHS
def test_padding_mask_with_cache_decoding(use_sdpa):
    m = make(use_sdpa=use_sdpa)
    n_pad, T, steps = 2, 4, 3
    real = torch.randn(1, T + steps, 12)
    x = torch.cat([torch.randn(1, n_pad, 12), real], dim=1)  # [1, n_pad + T + steps, 12]
    mask = torch.ones(1, n_pad + T + steps, dtype=torch.bool)
    mask[0, :n_pad] = False
    cache = KVCache(1, m.context_length)
    with torch.no_grad():
        outs = [m(x[:, :n_pad + T], attn_mask=mask[:, :n_pad + T], kv_cache=cache)]
        cache.length = n_pad + T
        for s in range(steps):
            end = n_pad + T + s + 1
            outs.append(m(x[:, end - 1:end], attn_mask=mask[:, :end], kv_cache=cache))
            cache.length = end
        got = torch.cat(outs, dim=1)[:, n_pad:]
        expected = m(real)
    assert not torch.isnan(got).any()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_attn_mask_of_wrong_length_raises():
    m = make()
    with pytest.raises(ValueError, match="attn_mask"):
        m(torch.randn(1, 5, 12), attn_mask=torch.ones(1, 4))


def test_matches_hugging_face_gpt2_attention():
    """The documented layout: qkv = HF ``c_attn`` (a Conv1D, ``[d_in, 3*d_out]``) transposed."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.gpt2.modeling_gpt2 import GPT2Attention

    cfg = transformers.GPT2Config(n_embd=16, n_head=4, n_positions=32, attn_pdrop=0.0, resid_pdrop=0.0)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = GPT2Attention(cfg, layer_idx=0).eval()
    m = MultiHeadAttention(16, 16, 32, 4, qkv_bias=True).eval()
    with torch.no_grad():
        m.qkv.weight.copy_(hf.c_attn.weight.T)
        m.qkv.bias.copy_(hf.c_attn.bias)
        m.out_proj.weight.copy_(hf.c_proj.weight.T)
        m.out_proj.bias.copy_(hf.c_proj.bias)
        x = torch.randn(2, 9, 16)
        # Recent transformers build the causal mask at model level, so pass it (additive, 4-D);
        # older versions also apply their own causal buffer, which gives the same result.
        causal = torch.full((9, 9), float("-inf")).triu(1)[None, None]
        out = hf(x, attention_mask=causal)
        expected = out[0] if isinstance(out, tuple) else out
        torch.testing.assert_close(m(x), expected, atol=1e-5, rtol=1e-5)


# --- build_attention_mask: built once per forward by the model, shared by every layer -------------

@pytest.mark.parametrize("T, T_k", [(1, 1), (4, 4), (1, 6), (3, 7)])
@pytest.mark.parametrize("padded", [False, True])
def test_attention_mask_matches_brute_force(T, T_k, padded):
    torch.manual_seed(0)
    key_padding = (torch.rand(2, T_k) > 0.3).long() if padded else None
    got = build_attention_mask(T, T_k, key_padding)
    B = 2 if padded else 1
    want = torch.zeros(B, 1, T, T_k, dtype=torch.bool)
    for b in range(B):
        for i in range(T):
            q = T_k - T + i  # absolute position of query i
            for j in range(T_k):
                want[b, 0, i, j] = j <= q and (key_padding is None or bool(key_padding[b, j]) or j == q)
    if got is None:  # only allowed where plain causal attention needs no mask
        assert not padded and (T == T_k or T == 1)
    else:
        assert torch.equal(got, want)


def test_prebuilt_mask_equals_key_padding_mask():
    torch.manual_seed(0)
    m = MultiHeadAttention(12, 12, context_length=16, n_heads=3).eval()
    x = torch.randn(2, 6, 12)
    key_padding = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    with torch.no_grad():
        a = m(x, attn_mask=key_padding)
        b = m(x, attn_mask=build_attention_mask(6, 6, key_padding))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="covers 5 positions, expected 6"):
        build_attention_mask(6, 6, key_padding[:, :5])


def test_a_float_4d_mask_is_refused_not_added_to_the_scores():
    """A float 0/1 mask would be *added* to the scores by SDPA: the future would leak."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 8, context_length=8, n_heads=2).eval()
    x = torch.randn(1, 4, 8)
    causal = build_attention_mask(4, 4, torch.ones(1, 4))  # bool [1, 1, 4, 4]
    assert causal.dtype == torch.bool
    with pytest.raises(TypeError, match="attn_mask must be boolean"):
        mha(x, attn_mask=causal.float())
    # The boolean mask is honoured: changing a future token leaves earlier outputs alone.
    y = mha(x, attn_mask=causal)
    x2 = x.clone()
    x2[:, 3] += 1.0
    assert torch.allclose(mha(x2, attn_mask=causal)[:, :3], y[:, :3], atol=1e-6)


def test_kv_cache_used_by_one_module_refuses_to_overwrite_slot_zero():
    """MultiHeadAttention alone does not advance the cache (the model does): a second chunk
    would overwrite position 0. The cache says so; advancing it gives the uncached result."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 8, context_length=8, n_heads=2).eval()
    x = torch.randn(1, 6, 8)
    cache = KVCache(n_layers=1, max_len=8)
    mha(x[:, :3], kv_cache=cache)
    with pytest.raises(ValueError, match="length was not advanced"):
        mha(x[:, 3:], kv_cache=cache)
    cache = KVCache(n_layers=1, max_len=8)
    first = mha(x[:, :3], kv_cache=cache)
    cache.length += 3
    second = mha(x[:, 3:], kv_cache=cache)
    assert torch.allclose(torch.cat([first, second], 1), mha(x), atol=1e-5)
    cache.length = 3  # moving back (discarding positions) frees them for new keys
    assert torch.allclose(mha(x[:, 3:], kv_cache=cache), second, atol=1e-6)
