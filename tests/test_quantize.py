"""shared.quantize: error bounds, round trips, packing, QuantLinear, GGUF codecs against `gguf`."""

import numpy as np
import pytest
import torch
from torch import nn

from shared.quantize import (QuantLinear, dequantize, gguf_dequantize, gguf_quantize, int_mm_available,
                             model_bytes, quantize, quantize_model)
from shared.quantize import pack_int4, unpack_int4


def _step(qt, cols):
    """The scale of each element's group, [rows, cols]."""
    s = qt.scale
    if qt.group_size == "tensor":
        return s.expand(-1, cols).expand(qt.data.size(0), cols)
    return s.repeat_interleave(cols // s.size(1), dim=1)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", ["tensor", None, 16, 64])
@pytest.mark.parametrize("symmetric", [True, False])
def test_error_bound_per_element(bits, group_size, symmetric):
    g = torch.Generator().manual_seed(bits * 7 + (group_size or 0 if group_size != "tensor" else 1))
    w = torch.randn(24, 128, generator=g) * torch.rand(24, 1, generator=g) * 3
    w[3, 5] = 25.0  # an outlier
    qt = quantize(w, bits, group_size, symmetric)
    err = (w - dequantize(qt)).abs()
    assert bool((err <= _step(qt, 128) / 2 * (1 + 1e-5) + 1e-7).all())
    q = qt.int_values()
    lo, hi = (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1)
    assert int(q.min()) >= lo and int(q.max()) <= hi
    if symmetric:  # absmax: some element of each group reaches +-qmax exactly
        assert int(q.abs().max()) == hi


def test_finer_groups_give_smaller_error():
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    w[:, 7] *= 20  # one outlier input feature
    errs = [float((w - dequantize(quantize(w, 4, gs))).pow(2).mean()) for gs in ("tensor", None, 128, 32)]
    assert errs[0] >= errs[1] > errs[2] > errs[3]


def test_zero_is_exact_and_all_zero_rows():
    w = torch.randn(8, 32)
    w[2] = 0
    w[0, :4] = 0
    for sym in (True, False):
        d = dequantize(quantize(w, 4, 16, sym))
        assert torch.equal(d[2], torch.zeros(32)) and torch.equal(d[0, :4], torch.zeros(4))


def test_exactly_representable_round_trip():
    # integers times a power-of-two scale survive int8 absmax quantization exactly
    q = torch.randint(-127, 128, (16, 64))
    q[:, 0] = 127
    w = q.float() * 0.25
    assert torch.equal(dequantize(quantize(w, 8, None)), w)


def test_int4_packing_two_per_byte():
    q = torch.randint(0, 16, (5, 12), dtype=torch.uint8)
    p = pack_int4(q)
    assert p.shape == (5, 6) and p.dtype == torch.uint8
    assert torch.equal(p[:, 0] & 0x0F, q[:, 0]) and torch.equal(p[:, 0] >> 4, q[:, 1])
    assert torch.equal(unpack_int4(p), q.to(torch.int16))
    w = torch.randn(64, 256)
    assert quantize(w, 4, 32).data.numel() == 64 * 128
    assert quantize(w, 8, 32).data.numel() == 64 * 256


def test_shapes_and_dtypes_preserved():
    w = torch.randn(2, 3, 32, dtype=torch.bfloat16)
    qt = quantize(w, 8, 16)
    assert dequantize(qt).shape == w.shape
    assert dequantize(qt, torch.bfloat16).dtype == torch.bfloat16


@pytest.mark.parametrize("kwargs, match", [
    (dict(bits=5), "bits"), (dict(bits=16), "bits"), (dict(bits=True), "bits"),
    (dict(group_size=48), "does not divide"), (dict(group_size=0), "group_size"),
    (dict(group_size=2.0), "group_size"), (dict(symmetric="yes"), "symmetric"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        quantize(torch.randn(4, 64), **kwargs)


def test_bad_tensors():
    with pytest.raises(ValueError, match="floating"):
        quantize(torch.ones(4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        quantize(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="even"):
        quantize(torch.randn(4, 33), bits=4)
    with pytest.raises(TypeError, match="QuantizedTensor"):
        dequantize(torch.randn(3))


@pytest.mark.parametrize("bits, group_size, symmetric", [(8, None, True), (8, 32, False), (4, 32, True), (4, 64, False)])
def test_quant_linear_dequant_path(bits, group_size, symmetric):
    torch.manual_seed(0)
    lin = nn.Linear(128, 48)
    ql = QuantLinear.from_linear(lin, bits, group_size, symmetric)
    x = torch.randn(2, 5, 128)
    w_hat = dequantize(quantize(lin.weight, bits, group_size, symmetric))
    torch.testing.assert_close(ql(x), x @ w_hat.T + lin.bias, atol=1e-5, rtol=1e-5)
    assert ql.path == "dequant"


@pytest.mark.skipif(not int_mm_available(), reason="torch._int_mm does not run here")
def test_quant_linear_int_mm_path():
    torch.manual_seed(0)
    lin = nn.Linear(128, 64)
    ql = QuantLinear.from_linear(lin, 8, None, True, path="int_mm")
    x = torch.randn(7, 128)
    # oracle: the same W8A8 arithmetic in float64
    qw = quantize(lin.weight, 8, None)
    s_x = x.abs().amax(-1, keepdim=True) / 127
    q_x = torch.round(x / s_x).clamp(-127, 127)
    ref = (q_x.double() @ qw.int_values().double().T) * s_x.double() * qw.scale[:, 0].double() + lin.bias.double()
    torch.testing.assert_close(ql(x).double(), ref, atol=1e-4, rtol=1e-5)
    rel = (ql(x) - lin(x)).norm() / lin(x).norm()
    assert rel < 0.02
    with pytest.raises(ValueError, match="int_mm"):
        QuantLinear.from_linear(lin, 4, 32, True, path="int_mm")


def test_quantize_model_and_bytes():
    from shared.model import GPTConfig, GPTModel
    torch.manual_seed(0)
    model = GPTModel(GPTConfig(vocab_size=64, context_length=16, d_model=32, n_heads=2, n_layers=2)).eval()
    idx = torch.randint(0, 64, (2, 10))
    q8, q4 = quantize_model(model, 8), quantize_model(model, 4, 16)
    assert isinstance(model.blocks[0].attn.qkv, nn.Linear)  # the original is untouched
    assert isinstance(q8.blocks[0].attn.qkv, QuantLinear) and isinstance(q8.lm_head, nn.Linear)
    with torch.no_grad():
        ref = model(idx)
        assert (q8(idx) - ref).abs().max() < 0.05 * ref.abs().max()
        assert (q4(idx) - ref).abs().max() < 0.5 * ref.abs().max()
    assert model_bytes(q4) < model_bytes(q8) < model_bytes(model)
    with pytest.raises(ValueError, match="does not divide"):
        quantize_model(model, 4, 24)
    assert isinstance(model.blocks[0].mlp.fc, nn.Linear)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_1"])
def test_gguf_codecs_match_the_gguf_library(qtype):
    gguf = pytest.importorskip("gguf")
    t = getattr(gguf.GGMLQuantizationType, qtype)
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((16, 256)) * rng.uniform(0.01, 3, (16, 1))).astype(np.float32)
    w[0, :32] = 0.0       # an all-zero block
    w[1, :32] = 1.5       # a constant block
    ours = gguf_quantize(torch.from_numpy(w), qtype)
    ref = gguf.quants.quantize(w, t)
    assert ours.dtype == np.uint8 and ours.shape == ref.shape
    assert np.array_equal(ours, ref)                     # byte for byte
    assert np.array_equal(gguf_dequantize(ours, qtype), gguf.quants.dequantize(ref, t))
    back = gguf_dequantize(ours, qtype)
    step = np.abs(w).reshape(-1, 32).max(-1) / 127 if qtype == "Q8_0" else np.ptp(w.reshape(-1, 32), -1) / 15
    # half a step plus fp16 rounding of the stored scale/min
    assert (np.abs(back - w).reshape(-1, 32).max(-1) <= step * 0.5 * 1.01 + np.abs(w).reshape(-1, 32).max(-1) * 2e-3 + 1e-6).all()


def test_gguf_bad_input():
    with pytest.raises(ValueError, match="multiple of 32"):
        gguf_quantize(np.zeros((2, 48), np.float32), "Q8_0")
    with pytest.raises(ValueError, match="qtype"):
        gguf_quantize(np.zeros((2, 32), np.float32), "Q5_K")
    with pytest.raises(ValueError, match="uint8"):
        gguf_dequantize(np.zeros((2, 33), np.uint8), "Q8_0")


def test_peak_memory_counts_live_tensors():
    from shared.quantize import PeakMemory
    x = torch.randn(256, 256)
    with PeakMemory() as pm:
        a = x * 2          # 256 KiB alive
        b = a + 1          # 512 KiB alive
        del a, b
        c = x.sum()
    assert 512 * 1024 <= pm.peak < 600 * 1024
    with PeakMemory() as pm2:
        for _ in range(5):
            y = x * 2      # each result replaces the last: never more than two alive at once
    assert pm2.peak <= 2 * 256 * 1024 + 1024
    del c, y
