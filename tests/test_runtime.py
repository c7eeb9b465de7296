import importlib

import pytest
import torch

from shared import runtime


def test_smoke_under_pytest():
    assert runtime.get_profile() == "smoke"
    assert runtime.pick(smoke=1, cpu=2, gpu=3) == 1
    assert runtime.get_device().type == "cpu"


@pytest.mark.parametrize("value, expected", [("smoke", "smoke"), ("default", "default"), ("DEFAULT", "default")])
def test_profile_switch(monkeypatch, value, expected):
    monkeypatch.setenv("LLM_PROFILE", value)
    assert runtime.get_profile() == expected


def test_ci_selects_smoke(monkeypatch):
    monkeypatch.delenv("LLM_PROFILE", raising=False)
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    monkeypatch.setenv("CI", "true")
    assert runtime.get_profile() == "smoke"
    monkeypatch.delenv("CI")
    assert runtime.get_profile() == "default"


def test_bad_profile_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("LLM_PROFILE", "fast")
    with pytest.raises(ValueError, match="LLM_PROFILE"):
        runtime.get_profile()


def test_default_profile_picks_by_device(monkeypatch):
    monkeypatch.setenv("LLM_PROFILE", "default")
    monkeypatch.setenv("LLM_DEVICE", "cpu")
    assert runtime.pick(smoke=1, cpu=2, gpu=3) == 2
    monkeypatch.setenv("LLM_DEVICE", "cuda")
    assert runtime.pick(smoke=1, cpu=2, gpu=3) == 3
    assert runtime.pick(smoke=1, cpu=2) == 2  # gpu defaults to the cpu value
    monkeypatch.setenv("LLM_DEVICE", "mps")
    assert runtime.pick(smoke=1, cpu=2, gpu=3) == 3


def test_set_seed_repeats():
    runtime.set_seed(123)
    a = torch.randn(4)
    runtime.set_seed(123)
    assert torch.equal(a, torch.randn(4))


def test_module_constants_exist():
    mod = importlib.reload(runtime)
    assert mod.PROFILE == "smoke" and mod.DEVICE == torch.device("cpu")
