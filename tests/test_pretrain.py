"""Tests for ch05_pretraining/pretrain.py and shared.distributed.

Each slow test runs the script as a subprocess (``torchrun`` for 2-process gloo runs on the
CPU) with a tiny model: d_model 32, 2 layers, context 32, byte-level vocabulary (256) over a
token file cut from the Shakespeare corpus in tmp_path. Oracles:

* DDP and FSDP parity: 2 processes x 2 accumulation micro-steps at global batch 8 end with
  the same parameters as 1 process with one micro-step of 8 (the same global batches).
* Resume: a run killed with SIGKILL after a checkpoint and resumed with ``--resume`` logs
  the same losses as the uninterrupted process had logged, dropout included (every rank's
  RNG is restored); FSDP stopped half-way and resumed still matches the 1-process run.
* Failures: NaN loss on one rank, corrupt and mismatched checkpoints, a batch that does not split.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.distributed import (
    DistInfo,
    global_batch_offsets,
    micro_batch_size,
    rank_offsets,
    read_windows,
    training_memory_bytes,
)

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = str(ROOT / "ch05_pretraining" / "pretrain.py")
STEPS = 6
#: After STEPS AdamW steps, the total weight update of a 2-process run may differ from the
#: 1-process run's by this fraction of its norm, per tensor. Only the fp32 summation order
#: differs (measured: at most 6e-5, global 1e-5; max |weight difference| 1.5e-5 at lr 3e-3,
#: where AdamW's g / sqrt(v) magnifies rounding in near-zero early gradients). Wrong sharding,
#: a missing 1/grad_accum or unsynchronised gradients give differences of order 0.1 to 1.
PARITY_REL_TOL = 1e-3


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_CURRENT_TEST",)}
    env.update(OMP_NUM_THREADS="1", LLM_DEVICE="cpu", LLM_PROFILE="smoke", PYTHONUNBUFFERED="1")
    return env


@pytest.fixture(scope="module")
def token_file(tmp_path_factory) -> Path:
    """UTF-8 bytes of part of the held-out plays: ids < 256, no tokenizer needed."""
    from shared.data import load_shakespeare, write_token_file
    ids = np.frombuffer(load_shakespeare("val")[:120_000].encode("utf-8"), dtype=np.uint8)
    return write_token_file(tmp_path_factory.mktemp("data") / "bytes.npy", ids, vocab_size=256)


def _args(data: Path, out: Path, *extra: str, grad_accum: int = 2) -> list[str]:
    return ["--out", str(out), "--data", str(data), "--vocab-size", "256", "--preset", "tiny",
            "--d-model", "32", "--n-layers", "2", "--n-heads", "2", "--context-length", "32",
            "--max-steps", str(STEPS), "--batch-size", "8", "--grad-accum", str(grad_accum),
            "--lr", "3e-3", "--warmup-steps", "2", "--eval-interval", "3", "--eval-iters", "2",
            "--checkpoint-interval", "2", "--seed", "0", "--profile", "smoke", "--device", "cpu", *extra]


def _command(args: list[str], nproc: int, strategy: str) -> list[str]:
    if nproc == 1:
        return [sys.executable, SCRIPT, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            SCRIPT, "--strategy", strategy, *args]


def run(args: list[str], nproc: int = 1, strategy: str = "ddp", check: bool = True,
        timeout: float = 150) -> subprocess.CompletedProcess:
    proc = subprocess.run(_command(args, nproc, strategy), capture_output=True, text=True,
                          timeout=timeout, env=_env(), cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"pretrain.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@functools.lru_cache(maxsize=1)
def _pretrain_module():
    spec = importlib.util.spec_from_file_location("pretrain", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_here(args: list[str]) -> int:
    """Run pretrain.py's ``main`` in this process (one process, no torch start-up cost),
    leaving the Python, NumPy and torch random states of the test session as they were."""
    py, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            return _pretrain_module().main(args)
        finally:
            random.setstate(py)
            np.random.set_state(np_state)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "ckpt.pt", weights_only=True)["model"]


# --------------------------------------------------------------------------------------
# Fast unit tests of the sharding arithmetic
# --------------------------------------------------------------------------------------

def test_micro_batch_size_splits_global_batch_and_rejects_remainders():
    assert micro_batch_size(64, 4, 2) == 8
    with pytest.raises(ValueError, match="multiple of world_size x --grad-accum = 2 x 3 = 6"):
        micro_batch_size(8, 2, 3)
    with pytest.raises(ValueError, match="positive integer"):
        micro_batch_size(8, 0, 1)


def test_rank_slices_partition_the_global_batch_in_order():
    offsets = global_batch_offsets(10_000, 32, 24, seed=3, step=7)
    assert offsets.shape == (24,) and offsets.min() >= 0 and offsets.max() <= 10_000 - 33
    np.testing.assert_array_equal(offsets, global_batch_offsets(10_000, 32, 24, seed=3, step=7))
    assert not np.array_equal(offsets, global_batch_offsets(10_000, 32, 24, seed=3, step=8))
    for world, accum in ((1, 1), (2, 3), (4, 2), (3, 1)):
        parts = [m for r in range(world) for m in rank_offsets(offsets, DistInfo(rank=r, world_size=world), accum)]
        assert len(parts) == world * accum and {len(m) for m in parts} == {24 // (world * accum)}
        np.testing.assert_array_equal(np.concatenate(parts), offsets)  # union = global batch, same order


def test_read_windows_shifts_targets_by_one():
    tokens = np.arange(100, dtype=np.uint16)
    x, y = read_windows(tokens, np.array([0, 50]), 8)
    assert x.shape == y.shape == (2, 8) and x.dtype == torch.long
    assert torch.equal(x[1], torch.arange(50, 58)) and torch.equal(y, x + 1)
    with pytest.raises(ValueError, match="window offsets"):
        read_windows(tokens, np.array([95]), 8)


def test_training_memory_fsdp_divides_by_world_size():
    ddp, fsdp = training_memory_bytes(1_000, "ddp", 8), training_memory_bytes(1_000, "fsdp", 8)
    assert ddp["total"] == 16_000 and fsdp["total"] == 2_000


# --------------------------------------------------------------------------------------
# Multi-process runs
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def single_run(token_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single")
    run(_args(token_file, out, grad_accum=1))  # one process, one micro-batch of 8
    return out


def _initial_weights(out: Path) -> dict[str, torch.Tensor]:
    """The weights the run started from: pretrain.py seeds, then builds the model."""
    from shared.model import GPTConfig, GPTModel
    cfg = torch.load(out / "ckpt.pt", weights_only=True)["config"]
    torch.manual_seed(0)
    return GPTModel(GPTConfig(**cfg)).state_dict()


def _assert_parity(out: Path, reference: Path) -> None:
    """Per tensor, the 2-process run's total update (final - initial weights) differs from the
    1-process run's by at most PARITY_REL_TOL of its norm; the logged losses agree to 1e-5."""
    ref, got, init = weights(reference), weights(out), _initial_weights(reference)
    assert ref.keys() == got.keys()
    for k in ref:
        update = (ref[k] - init[k]).norm()
        assert update > 0, f"{k} did not train"
        rel = ((got[k] - ref[k]).norm() / update).item()
        assert rel <= PARITY_REL_TOL, f"{k}: update differs from the 1-process run by {rel:.2e} of its norm"
    ref_loss = [r["loss"] for r in metrics(reference)]
    got_loss = [r["loss"] for r in metrics(out)]
    assert len(got_loss) == len(ref_loss) == STEPS
    np.testing.assert_allclose(got_loss, ref_loss, rtol=0, atol=1e-5)
    assert ref_loss[-1] < ref_loss[0]  # it trains


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(token_file, single_run, tmp_path):
    run(_args(token_file, tmp_path), nproc=2, strategy="ddp")
    _assert_parity(tmp_path, single_run)
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["extra"]["run"]["world_size"] == 2


@pytest.mark.slow
def test_fsdp_two_processes_match_one_process_across_a_resume(token_file, single_run, tmp_path):
    """FSDP2, stopped after 3 of 6 steps and resumed from its checkpoint, ends where 1 process
    does; its checkpoint also resumes as a single process."""
    run(_args(token_file, tmp_path, "--debug-exit-after", "3"), nproc=2, strategy="fsdp")
    mid = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert mid["step"] == 3 and mid["extra"]["run"]["strategy"] == "fsdp"
    other = tmp_path / "one_process"
    other.mkdir()
    shutil.copy(tmp_path / "ckpt.pt", other / "ckpt.pt")
    run(_args(token_file, tmp_path, "--resume"), nproc=2, strategy="fsdp")
    _assert_parity(tmp_path, single_run)
    # The same FSDP checkpoint also resumes in one process (another strategy and world size).
    assert run_here(_args(token_file, other, "--resume", grad_accum=1)) == 0
    assert [r["step"] for r in metrics(other)] == [3, 4, 5]
    np.testing.assert_allclose([r["loss"] for r in metrics(other)],
                               [r["loss"] for r in metrics(single_run)][3:], rtol=0, atol=1e-5)
    # full (unsharded) tensors with plain GPTModel names: loadable without torch.distributed
    from shared.checkpoint import load_model
    assert load_model(tmp_path / "ckpt.pt").tok_emb.weight.shape == (256, 32)


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (Linux /proc)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _kill_tree(pid: int) -> None:
    """SIGKILL torchrun and its workers (they run in sessions of their own), workers first."""
    for child in _children(pid):
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc to find torchrun's workers")
def test_resume_after_sigkill_gives_the_same_losses(token_file, tmp_path):
    """DDP with dropout, checkpoint every 4 steps, SIGKILLed while at step 6 of 8, then resumed
    from step 4: steps 4 and 5 give exactly the losses the uninterrupted process logged (so
    weights, AdamW state, data position and every rank's dropout RNG were restored)."""
    args = _args(token_file, tmp_path, "--dropout", "0.1", "--max-steps", "8", "--checkpoint-interval", "4",
                 "--eval-interval", "5")
    proc = subprocess.Popen(_command([*args, "--debug-hang-after", "6"], 2, "ddp"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=_env(), cwd=ROOT, start_new_session=True)
    try:
        deadline = time.monotonic() + 150
        while not ((tmp_path / "metrics.jsonl").exists() and metrics(tmp_path)[-1:] and
                   metrics(tmp_path)[-1]["step"] == 5):
            assert proc.poll() is None, "the run ended before step 5"
            assert time.monotonic() < deadline, "step 5 not reached within 150 s"
            time.sleep(0.1)
    finally:
        _kill_tree(proc.pid)
        proc.wait(timeout=30)
    before = metrics(tmp_path)
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["step"] == 4
    run([*args, "--resume"], nproc=2)
    after = metrics(tmp_path)
    assert [r["step"] for r in after] == list(range(8))
    assert after[:4] == before[:4]  # steps before the checkpoint are kept as logged
    for old, new in zip(before[4:6], after[4:6]):
        assert abs(new["loss"] - old["loss"]) <= 1e-6, (old, new)
        assert new["lr"] == old["lr"] and abs(new["grad_norm"] - old["grad_norm"]) <= 1e-5
    assert abs(after[5]["val_loss"] - before[5]["val_loss"]) <= 1e-6


@pytest.mark.slow
def test_nan_loss_stops_all_ranks_with_a_clear_message(token_file, tmp_path):
    proc = run(_args(token_file, tmp_path, "--debug-inject-nan-at", "2"), nproc=2, check=False)
    assert proc.returncode != 0
    assert "loss is nan (not finite) at step 2" in proc.stderr, proc.stderr[-2000:]
    assert max(r["step"] for r in metrics(tmp_path)) == 1  # nothing logged from the bad step on


@pytest.mark.slow
def test_corrupt_checkpoint_gives_a_clear_error(token_file, single_run, tmp_path, capsys):
    data = (single_run / "ckpt.pt").read_bytes()
    (tmp_path / "ckpt.pt").write_bytes(data[: len(data) // 2])  # truncated, as by a full disk
    assert run_here(_args(token_file, tmp_path, "--resume", grad_accum=1)) == 1
    err = capsys.readouterr().err
    assert "pretrain.py: error: " in err and "is not a valid checkpoint" in err, err


@pytest.mark.slow
def test_mismatched_checkpoint_gives_a_clear_error(token_file, single_run, tmp_path, capsys):
    shutil.copy(single_run / "ckpt.pt", tmp_path / "ckpt.pt")
    assert run_here(_args(token_file, tmp_path, "--resume", "--d-model", "64", grad_accum=1)) == 1
    err = capsys.readouterr().err
    assert "was written for another model" in err and "d_model=32 (this run: 64)" in err, err


# --------------------------------------------------------------------------------------
# Finished work, damaged files and lost workers
# --------------------------------------------------------------------------------------

def test_rerunning_a_finished_run_is_refused_without_resume_or_overwrite(token_file, tmp_path, capsys):
    args = _args(token_file, tmp_path, "--max-steps", "2", "--eval-interval", "0", grad_accum=1)
    assert run_here(args) == 0
    before_metrics, before_ckpt = (tmp_path / "metrics.jsonl").read_bytes(), (tmp_path / "ckpt.pt").read_bytes()
    capsys.readouterr()
    assert run_here(args) == 1
    err = capsys.readouterr().err
    assert "already holds a run (metrics up to step 1 and a checkpoint ckpt.pt)" in err, err
    assert "--resume" in err and "--overwrite" in err
    assert (tmp_path / "metrics.jsonl").read_bytes() == before_metrics  # nothing was touched
    assert (tmp_path / "ckpt.pt").read_bytes() == before_ckpt
    assert run_here([*args, "--resume"]) == 0  # finished: nothing to do, nothing lost
    assert "already finished" in capsys.readouterr().out
    assert (tmp_path / "metrics.jsonl").read_bytes() == before_metrics
    assert run_here([*args, "--overwrite"]) == 0  # asked for: starts again
    assert [r["step"] for r in metrics(tmp_path)] == [0, 1]


def test_damaged_checkpoint_tensor_bytes_fail_the_checksum(token_file, tmp_path, capsys):
    from tests.test_train import damage_tensor_bytes
    args = _args(token_file, tmp_path, "--max-steps", "2", "--eval-interval", "0", grad_accum=1)
    assert run_here(args) == 0
    damage_tensor_bytes(tmp_path / "ckpt.pt")
    capsys.readouterr()
    assert run_here([*args, "--max-steps", "3", "--resume"]) == 1
    err = capsys.readouterr().err
    assert "pretrain.py: error: " in err and "do not match the checksum" in err, err


def test_out_whose_parent_is_a_file_is_a_clear_error(token_file, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert run_here(_args(token_file, tmp_path / "afile" / "run", grad_accum=1)) == 1
    err = capsys.readouterr().err
    assert "pretrain.py: error: " in err and "is a file, not a directory" in err, err


@pytest.mark.slow
def test_help_is_printed_once_under_torchrun(tmp_path):
    proc = subprocess.run(_command(["--help"], 2, "ddp"), capture_output=True, text=True, timeout=120,
                          env=_env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("usage: pretrain.py") == 1, proc.stdout[:3000]
    assert "--overwrite" in proc.stdout


@pytest.mark.slow
def test_a_killed_worker_tells_the_user_to_resume(token_file, tmp_path):
    args = _args(token_file, tmp_path, "--max-steps", "8", "--checkpoint-interval", "2", "--eval-interval", "0",
                 "--debug-kill-after", "3")
    proc = run(args, nproc=2, check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "A worker probably died or was killed" in out and "again with --resume" in out, out[-3000:]
    ours = proc.stderr.split("torch.distributed.elastic")[0]  # before torchrun's own report
    assert "Traceback" not in ours.split("pretrain.py: error")[0], ours[-3000:]  # no gloo traceback first
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["step"] == 2  # what --resume continues from
