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
import copy
import importlib
import random

import numpy as np
import pytest
import torch

import shared.train as st
from shared.model import GPTConfig, GPTModel

INIT_SCALE = 2.0 ** 40  # far too high: the first fp16 backward overflows


#: Every module whose training loop runs under ``autocast_context`` with ``make_grad_scaler``.
LOOP_MODULES = [st, *(importlib.import_module(f"shared.{m}") for m in ("instruct", "dpo", "grpo", "finetune"))]


def _fake_t4(monkeypatch, init_scale: float) -> list[torch.amp.GradScaler]:
    made: list[torch.amp.GradScaler] = []

    def scaler(device):
        s = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=1000)
        made.append(s)
        return s

    for module in LOOP_MODULES:  # each imported the two names itself
        monkeypatch.setattr(module, "autocast_context", lambda device: torch.autocast("cpu", dtype=torch.float16))
        monkeypatch.setattr(module, "make_grad_scaler", scaler)
    return made


@pytest.fixture
def fp16_like_a_t4(monkeypatch):
    """The course's mixed precision as on a T4, on the CPU, with a loss scale far too high to
    start with. Returns the scalers made."""
    return _fake_t4(monkeypatch, INIT_SCALE)


@pytest.fixture
def fp16_default_scale(monkeypatch):
    """As :func:`fp16_like_a_t4`, with GradScaler's default starting scale (2**16)."""
    return _fake_t4(monkeypatch, 2.0 ** 16)


def _tiny(seed=0, V=64, dropout=0.0):
    torch.manual_seed(seed)
    return GPTModel(GPTConfig(vocab_size=V, context_length=32, d_model=32, n_heads=2, n_layers=1, dropout=dropout))


def _changed(model, before) -> bool:
    return any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def _batches(seed=0, V=64, T=16, B=8):
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, V, (4096,), generator=g)

    def get_batch():
        i = torch.randint(0, len(data) - T - 1, (B,), generator=g)
        x = torch.stack([data[j:j + T] for j in i])
        y = torch.stack([data[j + 1:j + T + 1] for j in i])
        return x, y
    return get_batch


def _setup(max_steps: int):
    """A tiny GPT, a copy of its weights, its AdamW and a constant-rate TrainConfig."""
    model = _tiny()
    before = copy.deepcopy(model.state_dict())
    cfg = st.TrainConfig(max_steps=max_steps, max_lr=3e-3, warmup_steps=0, eval_interval=0)
    return model, before, st.configure_optimizer(model, lr=3e-3), cfg


def test_train_keeps_one_scaler_backs_off_after_overflow_and_learns(fp16_like_a_t4):
    model, before, opt, cfg = _setup(40)
    hist = st.train(model, opt, _batches(), cfg)
    (scaler,) = fp16_like_a_t4  # one scaler for all 40 steps
    assert scaler.get_scale() < INIT_SCALE, "overflowing steps must back the loss scale off"
    assert all(np.isfinite(hist["loss"])), "fp16 losses must stay finite (the loss is computed in fp32)"
    assert _changed(model, before), "once the scale is low enough, the optimizer must step"
    assert np.mean(hist["loss"][-5:]) < np.mean(hist["loss"][:5])


def test_a_step_whose_fp16_gradients_overflow_is_skipped(fp16_like_a_t4):
    model, before, opt, cfg = _setup(1)
    scaler = st.make_grad_scaler("cpu")
    st.train_step(model, opt, _batches(), 0, cfg, scaler=scaler)
    assert scaler.get_scale() == INIT_SCALE / 2, "an overflow halves the scale"
    assert not _changed(model, before), "the overflowed step must leave the weights untouched"


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


def test_post_training_loops_run_in_fp16_with_one_scaler_each(fp16_default_scale):
    """Chapter 7's loops (instruction tuning, DPO, GRPO, classification) on the T4 path."""
    from shared.dpo import train_dpo
    from shared.finetune import GPTClassifier, Passage, set_trainable, train_classifier
    from shared.grpo import train_grpo
    from shared.instruct import train_instructions
    from shared.tokenizer import BPETokenizer

    m = _tiny()
    before = copy.deepcopy(m.state_dict())
    ex = [([1, 2, 3], [4, 5, 6]), ([7, 8], [9, 10, 11, 12]), ([13], [14, 15])] * 5
    hist = train_instructions(m, ex, steps=6, batch_size=4, lr=1e-2)
    assert len(fp16_default_scale) == 1 and all(np.isfinite(hist["loss"])) and _changed(m, before)

    policy, reference = _tiny(), _tiny()
    pairs = [([1, 2, 3, 4], [10, 11], [20, 21]), ([5, 6, 7], [12], [22]), ([8, 9], [13, 14, 15], [23, 24])]
    hist = train_dpo(policy, reference, pairs, steps=8, beta=0.5, batch_size=3, lr=1e-2)
    assert len(fp16_default_scale) == 2 and all(np.isfinite(hist["loss"]))
    assert hist["loss"][0] == pytest.approx(np.log(2), abs=1e-3), "policy = reference: the first DPO loss is ln 2"
    assert hist["loss"][-1] < hist["loss"][0]

    data = [Passage(ids=(1 + lab * 10,) * 6, label=lab, slug="x", text="") for lab in range(3)] * 4
    clf = GPTClassifier(_tiny(), n_classes=3)
    set_trainable(clf, "head")
    hist = train_classifier(clf, data, steps=15, batch_size=12, lr=3e-2)
    assert len(fp16_default_scale) == 3 and hist["loss"][-1] < hist["loss"][0]

    tok = BPETokenizer.train("to be or not to be that is the question " * 30, vocab_size=280)
    model = _tiny(V=tok.vocab_size)
    recs = [{"instruction": "Say a word.", "input": w, "output": w} for w in ("be", "not", "that", "is")]
    pol, coin = copy.deepcopy(model), random.Random(0)
    hist = train_grpo(pol, model, tok, recs, lambda rec, text: float(coin.random() < 0.5), steps=3, group_size=4,
                      prompts_per_step=2, lr=1e-2, seed=1, max_new_tokens=4)
    assert len(fp16_default_scale) == 4 and all(np.isfinite(hist["loss"]))


def test_train_resume_carries_the_loss_scale_on(fp16_like_a_t4, tmp_path):
    """A resumed fp16 run continues with the checkpoint's loss scale, not a fresh 2**40."""
    def run(max_steps, path, resume):
        model, _, opt, _ = _setup(max_steps)
        cfg = st.TrainConfig(max_steps=max_steps, max_lr=3e-3, warmup_steps=0, eval_interval=0,
                             checkpoint_path=str(path), checkpoint_interval=3, resume=resume)
        st.train(model, opt, _batches(), cfg)
        return fp16_like_a_t4[-1].get_scale()

    full = run(6, tmp_path / "a.pt", False)                 # six overflowing steps: 2**40 / 2**6
    assert full == INIT_SCALE / 2 ** 6
    run(3, tmp_path / "b.pt", False)
    saved = torch.load(tmp_path / "b.pt", weights_only=True)["extra"]["grad_scaler"]
    assert saved["scale"] == INIT_SCALE / 2 ** 3
    assert run(6, tmp_path / "b.pt", True) == full, "the resumed run must start from the saved scale"


def test_pretrain_resume_carries_the_loss_scale_on(fp16_like_a_t4, tmp_path):
    from tests.test_pretrain import _args, run_here
    from shared.data import load_shakespeare, write_token_file

    ids = np.frombuffer(load_shakespeare("val")[:60_000].encode("utf-8"), dtype=np.uint8)
    data = write_token_file(tmp_path / "bytes.npy", ids, vocab_size=256)
    assert run_here(_args(data, tmp_path / "full", grad_accum=1)) == 0
    full = fp16_like_a_t4[-1].get_scale()
    assert run_here(_args(data, tmp_path / "cut", "--debug-exit-after", "3", grad_accum=1)) == 0
    saved = torch.load(tmp_path / "cut" / "ckpt.pt", weights_only=True)["extra"]["grad_scaler"]
    assert saved["scale"] == fp16_like_a_t4[-1].get_scale() > full
    assert run_here(_args(data, tmp_path / "cut", "--resume", grad_accum=1)) == 0
    assert fp16_like_a_t4[-1].get_scale() == full, "pretrain.py --resume must restore the loss scale"
