"""Tests for shared.hardware: MFU uses the peak of the dtype the run computes in."""

import pytest
import torch

from shared.hardware import amp_dtype, has_native_bf16, mfu, peak_flops
from shared.train import autocast_context


def _fake_gpu(monkeypatch, name: str, bf16: bool) -> None:
    """A GPU called ``name``; ``bf16``: Ampere or newer (compute capability 8.0) or a T4 (7.5).
    ``is_bf16_supported`` answers True either way, as it does on a real T4 (emulated bf16)."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0) if bf16 else (7, 5))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.version, "hip", None)


def test_a_t4_reports_mfu_against_its_fp16_peak(monkeypatch):
    """Colab's T4 has no bf16 tensor cores: the course runs it in fp16, whose peak (65 TFLOP/s)
    is known, even though ``torch.cuda.is_bf16_supported()`` says True (bf16 is emulated)."""
    _fake_gpu(monkeypatch, "Tesla T4", bf16=False)
    assert has_native_bf16("cuda") is False
    assert amp_dtype("cuda") == torch.float16
    assert peak_flops("cuda", amp_dtype("cuda")) == 65e12
    assert peak_flops("cuda", torch.bfloat16) is None  # what the chapter used to ask for
    assert mfu(1_000, 6.5e9, peak_flops("cuda", amp_dtype("cuda"))) == pytest.approx(0.1)


def test_an_h100_uses_its_bf16_peak(monkeypatch):
    _fake_gpu(monkeypatch, "NVIDIA H100 80GB HBM3", bf16=True)
    assert has_native_bf16("cuda") is True
    assert amp_dtype("cuda") == torch.bfloat16
    assert peak_flops("cuda", amp_dtype("cuda")) == 989e12


def test_the_cpu_computes_in_fp32_and_has_no_peak():
    assert amp_dtype("cpu") == torch.float32 and has_native_bf16("cpu") is False
    assert peak_flops("cpu", amp_dtype("cpu")) is None
    assert mfu(1e4, 1e6, None) is None
    assert isinstance(autocast_context("cpu"), type(autocast_context(torch.device("cpu"))))
