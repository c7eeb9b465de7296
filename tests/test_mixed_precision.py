"""The T4 path (fp16 autocast + GradScaler), run on the CPU so it cannot rot without a GPU.

On a CUDA GPU without bf16 tensor cores (Colab's T4) the course computes in fp16 and scales the
loss (``shared.train.autocast_context`` / ``make_grad_scaler``). Here both are swapped for their
CPU equivalents (``torch.autocast("cpu", torch.float16)``, ``GradScaler("cpu")``, which run the
same scale / unscale / skip-on-overflow logic), and the training loops are checked to

* keep **one** scaler for the whole run (a fresh one per step forgets its calibrated scale and,
  started too high, skips every step), and
* skip a step whose fp16 gradients overflowed, back the scale off, and then train.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

import shared.train as st
from shared.model import GPTConfig, GPTModel

INIT_SCALE = 2.0 ** 40  # far too high: the first fp16 backward overflows


@pytest.fixture
def fp16_like_a_t4(monkeypatch):
    """Make the course's mixed precision behave as on a T4, on the CPU. Returns the scalers made."""
    made: list[torch.amp.GradScaler] = []

    def scaler(device):
        s = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE, growth_interval=1000)
        made.append(s)
        return s

    monkeypatch.setattr(st, "autocast_context", lambda device: torch.autocast("cpu", dtype=torch.float16))
    monkeypatch.setattr(st, "make_grad_scaler", scaler)
    return made


def _batches(seed=0, V=64, T=16, B=8):
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, V, (4096,), generator=g)

    def get_batch():
        i = torch.randint(0, len(data) - T - 1, (B,), generator=g)
        x = torch.stack([data[j:j + T] for j in i])
        y = torch.stack([data[j + 1:j + T + 1] for j in i])
        return x, y
    return get_batch


def test_train_keeps_one_scaler_backs_off_after_overflow_and_learns(fp16_like_a_t4):
    torch.manual_seed(0)
    model = GPTModel(GPTConfig(vocab_size=64, context_length=16, d_model=32, n_heads=2, n_layers=1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = st.configure_optimizer(model, lr=3e-3)
    cfg = st.TrainConfig(max_steps=40, max_lr=3e-3, warmup_steps=0, eval_interval=0)
    hist = st.train(model, opt, _batches(), cfg)
    (scaler,) = fp16_like_a_t4  # one scaler for all 40 steps
    assert scaler.get_scale() < INIT_SCALE, "overflowing steps must back the loss scale off"
    assert all(np.isfinite(hist["loss"])), "fp16 losses must stay finite (the loss is computed in fp32)"
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items()), \
        "once the scale is low enough, the optimizer must step"
    assert np.mean(hist["loss"][-5:]) < np.mean(hist["loss"][:5])


def test_a_step_whose_fp16_gradients_overflow_is_skipped(fp16_like_a_t4):
    torch.manual_seed(0)
    model = GPTModel(GPTConfig(vocab_size=64, context_length=16, d_model=32, n_heads=2, n_layers=1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = st.configure_optimizer(model, lr=3e-3)
    cfg = st.TrainConfig(max_steps=1, max_lr=3e-3, warmup_steps=0, eval_interval=0)
    scaler = st.make_grad_scaler("cpu")
    st.train_step(model, opt, _batches(), 0, cfg, scaler=scaler)
    assert scaler.get_scale() == INIT_SCALE / 2, "an overflow halves the scale"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), \
        "the overflowed step must leave the weights untouched"


def test_pretrain_script_keeps_one_scaler_for_the_whole_run(fp16_like_a_t4, tmp_path):
    from tests.test_pretrain import STEPS, _args, metrics, run_here
    from shared.data import load_shakespeare, write_token_file

    ids = np.frombuffer(load_shakespeare("val")[:60_000].encode("utf-8"), dtype=np.uint8)
    data = write_token_file(tmp_path / "bytes.npy", ids, vocab_size=256)
    assert run_here(_args(data, tmp_path / "run", grad_accum=1)) == 0
    assert len(fp16_like_a_t4) == 1, f"pretrain.py made {len(fp16_like_a_t4)} scalers for {STEPS} steps; want 1"
    assert fp16_like_a_t4[0].get_scale() < INIT_SCALE
    assert all(np.isfinite(r["loss"]) for r in metrics(tmp_path / "run"))


def test_the_real_cpu_path_is_fp32_without_a_scaler():
    assert isinstance(st.autocast_context("cpu"), contextlib.nullcontext)
    assert not st.make_grad_scaler("cpu").is_enabled()
