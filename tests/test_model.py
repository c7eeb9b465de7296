"""shared.model: config validation, presets, parameter/FLOP counts, causality, shapes, tying,
and LayerNorm/GELU against their formulas. (Logits against Hugging Face GPT-2: test_weights.py.)"""

import math

import pytest
import torch
import torch.nn.functional as F

from shared.model import GELU, PRESETS, FeedForward, GPTConfig, GPTModel, LayerNorm, TransformerBlock

TINY = dict(vocab_size=97, context_length=32, d_model=48, n_heads=4, n_layers=2, qkv_bias=True)


def tiny_model(seed: int = 0, **overrides) -> GPTModel:
    torch.manual_seed(seed)
    return GPTModel(GPTConfig(**{**TINY, **overrides})).eval()


def meta_model(cfg: GPTConfig) -> GPTModel:
    with torch.device("meta"):  # no memory, no init time: only shapes
        return GPTModel(cfg)


# ------------------------------------------------------------------------------ GPTConfig


def test_config_defaults_and_head_dim():
    cfg = GPTConfig()
    assert (cfg.vocab_size, cfg.context_length, cfg.d_model, cfg.n_heads, cfg.n_layers) == (50257, 1024, 768, 12, 12)
    assert cfg.head_dim == 64
    assert GPTConfig(**TINY).head_dim == 12
    assert GPTConfig(**TINY).to_dict() == {**TINY, "dropout": 0.0}


@pytest.mark.parametrize("kwargs, match", [
    (dict(d_model=100, n_heads=12), "not divisible"),
    (dict(n_heads=0), "n_heads must be a positive int"),
    (dict(n_layers=-1), "n_layers must be a positive int"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(context_length=1.5), "context_length"),
    (dict(d_model=True), "d_model"),
    (dict(dropout=1.0), "dropout"),
    (dict(dropout=-0.1), "dropout"),
    (dict(dropout="0.1"), "dropout"),
    (dict(qkv_bias="yes"), "qkv_bias"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GPTConfig(**kwargs)


@pytest.mark.parametrize("name, d_model, n_heads, n_layers", [
    ("gpt2-small", 768, 12, 12), ("gpt2-medium", 1024, 16, 24),
    ("gpt2-large", 1280, 20, 36), ("gpt2-xl", 1600, 25, 48),
])
def test_presets(name, d_model, n_heads, n_layers):
    cfg = GPTConfig.from_preset(name)
    assert (cfg.d_model, cfg.n_heads, cfg.n_layers) == (d_model, n_heads, n_layers)
    assert (cfg.vocab_size, cfg.context_length, cfg.qkv_bias, cfg.dropout) == (50257, 1024, True, 0.0)
    assert cfg.head_dim == 64


def test_preset_overrides_and_unknown():
    cfg = GPTConfig.from_preset("gpt2-small", context_length=256, dropout=0.1)
    assert (cfg.context_length, cfg.dropout, cfg.d_model) == (256, 0.1, 768)
    with pytest.raises(ValueError, match="unknown preset 'gpt2-huge'"):
        GPTConfig.from_preset("gpt2-huge")
    with pytest.raises(ValueError, match="not divisible"):
        GPTConfig.from_preset("gpt2-small", n_heads=7)


# ------------------------------------------------------------------------------ counts


def hand_count(cfg: GPTConfig, tied: bool = True) -> int:
    """Parameters of GPT-2 by hand: embeddings + L blocks + final LN (+ untied head)."""
    C, V, L = cfg.d_model, cfg.vocab_size, cfg.n_layers
    qkv = 3 * C * C + (3 * C if cfg.qkv_bias else 0)
    attn = qkv + C * C + C                  # + output projection
    mlp = C * 4 * C + 4 * C + 4 * C * C + C  # fc + proj
    block = attn + mlp + 2 * 2 * C          # two LayerNorms (weight + bias)
    total = V * C + cfg.context_length * C + L * block + 2 * C
    return total if tied else total + V * C


def test_124m_parameter_count():
    model = meta_model(GPTConfig.from_preset("gpt2-small"))
    assert model.num_parameters() == 124_439_808
    assert model.num_parameters() == hand_count(model.cfg)
    # Kaplan's N leaves out the embeddings (the tied head goes with them).
    assert model.num_parameters(non_embedding=True) == 124_439_808 - 50257 * 768 - 1024 * 768 == 85_056_000


@pytest.mark.parametrize("name, expected", [
    ("gpt2-medium", 354_823_168), ("gpt2-large", 774_030_080), ("gpt2-xl", 1_557_611_200),
])
def test_preset_parameter_counts(name, expected):
    model = meta_model(GPTConfig.from_preset(name))
    assert model.num_parameters() == expected == hand_count(model.cfg)


def test_tiny_parameter_count_real_tensors():
    model = tiny_model()
    assert model.num_parameters() == hand_count(model.cfg)
    no_bias = tiny_model(qkv_bias=False)
    assert no_bias.num_parameters() == hand_count(no_bias.cfg) == model.num_parameters() - 2 * 3 * 48


def test_flops_per_token_hand_formula():
    model = meta_model(GPTConfig.from_preset("gpt2-small"))
    C, V, L = 768, 50257, 12
    per_block = 12 * C * C + 13 * C  # 3C^2 + C^2 + 8C^2 weights; 3C + C + 4C + C biases + 4C LayerNorm
    n_matmul = L * per_block + 2 * C + V * C  # + final LN + LM head (tied, but it is a matmul)
    for T in (1, 128, 1024):
        assert model.flops_per_token(T) == 6 * n_matmul + 12 * L * T * C
    assert model.flops_per_token() == model.flops_per_token(1024)
    # 6N dominates at T=1024 for 124M: the attention term is ~13% of the total.
    assert 0.1 < 12 * L * 1024 * C / model.flops_per_token() < 0.15
    assert math.isclose(model.flops_per_token(1024), 855_166_464.0)


# ------------------------------------------------------------------------------ forward


def test_logits_shape_and_dtype():
    model = tiny_model()
    idx = torch.randint(0, 97, (3, 20))
    logits = model(idx)
    assert logits.shape == (3, 20, 97) and logits.dtype == torch.float32
    assert model.hidden_states(idx).shape == (3, 20, 48)
    assert torch.isfinite(logits).all()
    assert model(torch.randint(0, 97, (1, 32))).shape == (1, 32, 97)  # exactly context_length


def test_too_long_sequence_raises():
    model = tiny_model()
    with pytest.raises(ValueError, match="sequence length 33 exceeds context_length=32"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_bad_idx_raises():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="integer token ids"):
        model(torch.zeros(1, 5))


def test_causality():
    """Changing token t changes no logits before t, and does change some at t or later."""
    model = tiny_model()
    idx = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(0))
    base = model(idx)
    for t in (0, 7, 23):
        other = idx.clone()
        other[:, t] = (other[:, t] + 1) % 97
        out = model(other)
        torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=1e-6)
        assert (out[:, t:] - base[:, t:]).abs().max() > 1e-4


def test_causality_via_gradients():
    """d logits[:, t] / d embeddings[:, s] is zero for every s > t."""
    model = tiny_model()
    idx = torch.randint(0, 97, (1, 10))
    emb = model.tok_emb(idx).detach().requires_grad_(True)
    x = emb + model.pos_emb(torch.arange(10))
    for block in model.blocks:
        x = block(x)
    model.final_norm(x)[0, 4].sum().backward()
    g = emb.grad[0].abs().sum(-1)
    assert (g[5:] == 0).all() and (g[:5] > 0).all()


def test_batch_rows_are_independent():
    model = tiny_model()
    idx = torch.randint(0, 97, (4, 16))
    torch.testing.assert_close(model(idx)[2:3], model(idx[2:3]), rtol=1e-5, atol=1e-5)


def test_kv_cache_matches_full_forward():
    model = tiny_model()
    idx = torch.randint(0, 97, (2, 12))
    full = model(idx)
    cache = model.new_kv_cache()
    steps = [model(idx[:, :5], kv_cache=cache)] + [model(idx[:, t:t + 1], kv_cache=cache) for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == 12


def test_dropout_only_in_training():
    model = tiny_model(dropout=0.5)
    idx = torch.randint(0, 97, (2, 8))
    torch.testing.assert_close(model(idx), model(idx))  # eval: deterministic
    model.train()
    assert not torch.allclose(model(idx), model(idx))


# ------------------------------------------------------------------------------ tying


def test_weight_tying():
    model = tiny_model()
    assert model.lm_head.weight is model.tok_emb.weight
    sd = model.state_dict()
    assert sd["lm_head.weight"].data_ptr() == sd["tok_emb.weight"].data_ptr()
    untied = sum(p.numel() for p in model.parameters()) + 97 * 48
    assert model.num_parameters() == untied - 97 * 48  # counted once
    # The head's gradient and the embedding's gradient land in the same tensor.
    model(torch.randint(0, 97, (1, 8))).sum().backward()
    assert model.tok_emb.weight.grad is not None and model.lm_head.weight.grad is model.tok_emb.weight.grad
    # lm_head is h @ W_emb^T: logits are dot products with the token embeddings.
    idx = torch.randint(0, 97, (1, 6))
    torch.testing.assert_close(model(idx), model.hidden_states(idx) @ model.tok_emb.weight.T)


def test_init_scales_residual_projections():
    torch.manual_seed(0)
    model = GPTModel(GPTConfig(vocab_size=100, context_length=16, d_model=256, n_heads=4, n_layers=8))
    std = model.blocks[0].mlp.proj.weight.std().item()
    assert abs(std - 0.02 / math.sqrt(16)) < 0.001
    assert abs(model.blocks[0].mlp.fc.weight.std().item() - 0.02) < 0.001
    assert abs(model.tok_emb.weight.std().item() - 0.02) < 0.001


# ------------------------------------------------------------------------------ components


def test_layernorm_matches_formula_and_torch():
    torch.manual_seed(0)
    ln = LayerNorm(16)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    x = 3 * torch.randn(4, 5, 16) + 2
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)  # biased variance, as in the paper
    expected = (x - mean) / torch.sqrt(var + 1e-5) * ln.weight + ln.bias
    torch.testing.assert_close(ln(x), expected, rtol=1e-5, atol=1e-5)
    ref = torch.nn.LayerNorm(16)
    ref.load_state_dict(ln.state_dict())
    torch.testing.assert_close(ln(x), ref(x))
    y = LayerNorm(16)(x)  # default affine: zero mean, unit variance per position
    torch.testing.assert_close(y.mean(-1), torch.zeros(4, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(-1, unbiased=False), torch.ones(4, 5), atol=1e-3, rtol=0)


def test_gelu_matches_tanh_formula():
    x = torch.linspace(-6, 6, 1001)
    expected = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    torch.testing.assert_close(GELU()(x), expected, rtol=1e-6, atol=1e-6)
    exact = x * 0.5 * (1 + torch.erf(x / math.sqrt(2)))  # x * Phi(x)
    assert (GELU()(x) - exact).abs().max() < 1e-3  # the tanh form approximates it closely
    assert GELU()(torch.tensor(-0.75)) < 0  # unlike ReLU, slightly negative for x < 0


def test_feedforward_shape_and_expansion():
    ff = FeedForward(48)
    assert ff.fc.weight.shape == (192, 48) and ff.proj.weight.shape == (48, 192)
    x = torch.randn(2, 5, 48)
    torch.testing.assert_close(ff(x), ff.proj(F.gelu(ff.fc(x), approximate="tanh")))


def test_block_is_pre_ln_residual():
    torch.manual_seed(0)
    block = TransformerBlock(GPTConfig(**TINY)).eval()
    x = torch.randn(2, 10, 48)
    h = x + block.attn(block.ln1(x))
    torch.testing.assert_close(block(x), h + block.mlp(block.ln2(h)))


def test_presets_table_is_complete():
    assert set(PRESETS) == {"gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl"}


# ------------------------------------------------------------------------------ MFU peaks


@pytest.mark.parametrize("name, dtype, tflops", [
    ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989.0),   # SXM: the figure Chapter 5 quotes
    ("NVIDIA H100 PCIe", torch.bfloat16, 756.0),
    ("NVIDIA A100-SXM4-80GB", torch.bfloat16, 312.0),
    ("NVIDIA L40S", torch.bfloat16, 362.0),             # not L4's 121
    ("NVIDIA A10G", torch.bfloat16, None),              # not A10's 125: unknown beats wrong
    ("cpu", torch.bfloat16, None),
])
def test_peak_flops_table(monkeypatch, name, dtype, tflops):
    import shared.hardware as hw

    monkeypatch.setattr(hw, "device_name", lambda device=None: name)
    peak = hw.peak_flops("cuda", dtype)
    assert peak == (None if tflops is None else tflops * 1e12)


def test_mfu_of_124m():
    from shared.hardware import mfu

    fpt = meta_model(GPTConfig.from_preset("gpt2-small")).flops_per_token(1024)
    assert math.isclose(mfu(400_000, fpt, 989e12), 400_000 * fpt / 989e12)
    assert mfu(400_000, fpt, None) is None
