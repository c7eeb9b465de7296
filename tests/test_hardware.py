"""Tests for shared.hardware: MFU uses the peak of the dtype the run computes in."""

import pytest
import torch

from shared.hardware import amp_dtype, mfu, peak_flops
from shared.train import autocast_context


def _fake_gpu(monkeypatch, name: str, bf16: bool) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)


def test_a_t4_reports_mfu_against_its_fp16_peak(monkeypatch):
    """Colab's T4 has no bf16: the course runs it in fp16, whose peak (65 TFLOP/s) is known."""
    _fake_gpu(monkeypatch, "Tesla T4", bf16=False)
    assert amp_dtype("cuda") == torch.float16
    assert peak_flops("cuda", amp_dtype("cuda")) == 65e12
    assert peak_flops("cuda", torch.bfloat16) is None  # what the chapter used to ask for
    assert mfu(1_000, 6.5e9, peak_flops("cuda", amp_dtype("cuda"))) == pytest.approx(0.1)


def test_an_h100_uses_its_bf16_peak(monkeypatch):
    _fake_gpu(monkeypatch, "NVIDIA H100 80GB HBM3", bf16=True)
    assert amp_dtype("cuda") == torch.bfloat16
    assert peak_flops("cuda", amp_dtype("cuda")) == 989e12


def test_the_cpu_computes_in_fp32_and_has_no_peak():
    assert amp_dtype("cpu") == torch.float32
    assert peak_flops("cpu", amp_dtype("cpu")) is None
    assert mfu(1e4, 1e6, None) is None
    assert isinstance(autocast_context("cpu"), type(autocast_context(torch.device("cpu"))))
