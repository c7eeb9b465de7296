"""Tests for shared.parallel (tensor and pipeline parallelism, the planner) and activation
checkpointing in shared.model.

The 2-process checks run once, as ``torchrun --nproc_per_node=2 ch05_pretraining/parallel_demo.py
parity`` (gloo, 1 thread per process), and each test reads one part of its JSON. Oracles: the
unsplit block/model in the same process (outputs and every gradient, shard by shard), torch's
DTensor ``parallelize_module`` on the same MLP, and the paper's formulas (all-reduce count,
ZeRO figure 1, GPipe's bubble).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from shared.model import GPTConfig, GPTModel
from shared.parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    activation_bytes_per_layer,
    bubble_fraction,
    gpipe_schedule,
    gpt_num_parameters,
    pipeline_stages,
    plan,
    tensor_parallel_block,
    tp_comm_bytes_per_layer,
    zero_bytes_per_param,
)

ROOT = Path(__file__).resolve().parent.parent
#: fp32 round-off of a sum split in two (measured: at most 3e-6 on these sizes); a wrong
#: shard, a missing all-reduce or a missing tied-gradient sum gives differences of 1e-2 or more.
TOL = 1e-5


@pytest.fixture(scope="module")
def parity(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("parallel") / "parity.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    str(ROOT / "ch05_pretraining" / "parallel_demo.py"), "parity", "--out", str(out)],
                   check=True, env=env, cwd=ROOT, timeout=240, capture_output=True)
    data = json.loads(out.read_text())
    assert data["world_size"] == 2
    return data["results"]["parity"]


def test_tp_block_matches_unsplit_block(parity):
    for rank in parity:
        b = rank["block"]
        assert b["output_max_diff"] < TOL and b["input_grad_max_diff"] < TOL
        assert b["param_grad_max_diff"] < 1e-4, b["param_grad_diffs"]  # loss sum(w * y): gradients ~ 10
        # each rank holds half of the heads (qkv rows) and half of the MLP hidden units
        assert b["shapes"]["attn.qkv.weight"] == [48, 32] and b["shapes"]["mlp.fc.weight"] == [64, 32]
        assert b["shapes"]["mlp.proj.weight"] == [32, 64] and b["shapes"]["ln1.weight"] == [32]


def test_tp_comm_volume_counted_equals_formula(parity):
    b = parity[0]["block"]
    pred = b["predicted"]
    assert b["all_reduces"]["forward"] == 2 and b["all_reduces"]["total"] == pred["all_reduces"] == 4
    assert b["all_reduces"]["elements"] == pred["all_reduces"] * pred["elements_per_all_reduce"]


def test_tp_model_matches_unsplit_model(parity):
    for rank in parity:
        assert rank["model"]["logits_max_diff"] < TOL
        assert rank["model"]["param_grad_max_diff"] < TOL


def test_dtensor_parallelize_module_agrees(parity):
    d = parity[0]["dtensor"]
    assert d["runs"], d.get("error")
    assert d["max_diff_vs_ours"] < TOL and d["max_diff_vs_unsplit"] < TOL
    assert d["fc_local_shape"] == d["ours_fc_shape"]


def test_gpipe_matches_unsplit_model(parity):
    first, last = parity[0]["pipeline"], parity[1]["pipeline"]
    assert first["layers"] == [0, 2] and last["layers"] == [2, 4]
    assert abs(last["loss"] - last["loss_ref"]) < TOL
    for p in (first, last):
        assert p["param_grad_max_diff"] < TOL
        assert p["tok_emb_grad_max_diff"] < TOL  # tied embedding: both stages' parts summed


def test_bad_input_under_two_processes(parity):
    for label, message in parity[0]["errors"].items():
        assert message.startswith("ValueError"), (label, message)


# --------------------------------------------------------------------------------------
# One process (no process group: world size 1)
# --------------------------------------------------------------------------------------

def _cfg(**kw) -> GPTConfig:
    return GPTConfig(**{**dict(vocab_size=64, context_length=16, d_model=32, n_heads=4, n_layers=4), **kw})


def test_parallel_linears_without_group_equal_nn_linear():
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 12)
    x = torch.randn(2, 3, 8)
    assert torch.allclose(ColumnParallelLinear.from_linear(lin, parts=3)(x), lin(x))
    lin2 = torch.nn.Linear(12, 8)
    assert torch.allclose(RowParallelLinear.from_linear(lin2)(lin(x)), lin2(lin(x)), atol=1e-6)
    with pytest.raises(TypeError, match="linear"):
        ColumnParallelLinear.from_linear(torch.nn.Conv1d(2, 2, 1))
    with pytest.raises(ValueError, match="in_features"):
        ColumnParallelLinear(0, 4)
    with pytest.raises(ValueError, match="in_features=8"):
        ColumnParallelLinear.from_linear(lin)(torch.randn(2, 7))


def test_tensor_parallel_block_rejects_other_modules():
    with pytest.raises(TypeError, match="TransformerBlock"):
        tensor_parallel_block(torch.nn.Linear(2, 2))
    block = GPTModel(_cfg()).blocks[0]
    tensor_parallel_block(block)
    with pytest.raises(ValueError, match="already"):
        tensor_parallel_block(block)


def test_pipeline_stages_in_one_process_equal_the_model():
    torch.manual_seed(0)
    model = GPTModel(_cfg(n_layers=5))
    idx = torch.randint(0, 64, (2, 16))
    for n in (1, 2, 3, 5):
        stages = pipeline_stages(model, n)
        x = idx
        for s in stages:
            x = s(x)
        assert torch.allclose(x, model(idx), atol=1e-6)
        assert sum(len(s.blocks) for s in stages) == 5
    assert [s.layer_range for s in pipeline_stages(model, 2)] == [(0, 3), (3, 5)]
    assert [s.layer_range for s in pipeline_stages(model, 2, boundaries=[1])] == [(0, 1), (1, 5)]
    for bad in (0, 6, 2.0, True):
        with pytest.raises(ValueError, match="n_stages"):
            pipeline_stages(model, bad)
    with pytest.raises(ValueError, match="boundaries"):
        pipeline_stages(model, 3, boundaries=[3, 2])
    with pytest.raises(TypeError, match="GPTModel"):
        pipeline_stages(torch.nn.Linear(2, 2), 1)


@pytest.mark.parametrize("p,m", [(2, 1), (2, 4), (4, 8), (3, 5)])
def test_gpipe_timetable_idle_fraction_is_the_bubble(p, m):
    table = gpipe_schedule(p, m)
    assert len({len(row) for row in table}) == 1
    cells = [c for row in table for c in row]
    assert sum(c == "" for c in cells) / len(cells) == pytest.approx(bubble_fraction(p, m))
    assert bubble_fraction(p, m) == pytest.approx((p - 1) / (m + p - 1))
    # a stage only runs the backward of micro-batch k after the next stage has
    assert all(table[s].index("B0") > table[s + 1].index("B0") for s in range(p - 1))
    with pytest.raises(ValueError, match="n_micro"):
        bubble_fraction(2, 0)


def test_zero_bytes_reproduce_the_paper_figure_1():
    # Rajbhandari et al. (2020), figure 1: 7.5B parameters, K = 12, 64 GPUs: 120 / 31.4 / 16.6 / 1.9 GB
    got = [round(7.5e9 * sum(zero_bytes_per_param(s, 64).values()) / 1e9, 1) for s in range(4)]
    assert got == [120.0, 31.4, 16.6, 1.9]
    assert sum(zero_bytes_per_param(0, 8, "fp32").values()) == 16
    with pytest.raises(ValueError, match="stage"):
        zero_bytes_per_param(4, 2)
    with pytest.raises(ValueError, match="precision"):
        zero_bytes_per_param(1, 2, "fp8")


def test_activation_bytes_formula():
    # Korthikanti et al. (2022) eq. 1: s b h (34 + 5 a s / h)
    s, b, h, a = 2048, 1, 12288, 96
    assert activation_bytes_per_layer(s, b, h, a, flash=False) == s * b * h * (34 + 5 * a * s / h)
    assert activation_bytes_per_layer(s, b, h, a, tp=8, flash=False) == s * b * h * (10 + 24 / 8 + 5 * a * s / (h * 8))
    assert activation_bytes_per_layer(s, b, h, a, recompute=True) == 2 * s * b * h
    with pytest.raises(ValueError, match="tp"):
        activation_bytes_per_layer(s, b, h, a, tp=0)


def test_tp_clip_grad_norm_one_process_equals_torch():
    from shared.parallel import tp_clip_grad_norm_
    torch.manual_seed(0)
    model = GPTModel(_cfg())
    F.cross_entropy(model(torch.randint(0, 64, (2, 16))).flatten(0, 1), torch.randint(0, 64, (32,))).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    ref = float(torch.nn.utils.get_total_norm(grads))  # torch's global norm of the same gradients
    ours = tp_clip_grad_norm_(model, 0.1)
    assert ours == pytest.approx(ref, rel=1e-5) and ref > 0.1
    for p, g in zip(model.parameters(), grads):
        assert torch.allclose(p.grad, g * 0.1 / (ref + 1e-6), atol=1e-7)
    with pytest.raises(ValueError, match="max_norm"):
        tp_clip_grad_norm_(model, -1.0)


def test_tp_comm_bytes_ring_formula():
    c = tp_comm_bytes_per_layer(4, 1024, 768, 8)
    assert c["all_reduces"] == 4 and c["elements_per_all_reduce"] == 4 * 1024 * 768
    assert c["bytes_sent_per_rank"] == 4 * 2 * 7 / 8 * 4 * 1024 * 768 * 2
    assert tp_comm_bytes_per_layer(4, 1024, 768, 1)["bytes_sent_per_rank"] == 0
    with pytest.raises(ValueError, match="world_size"):
        tp_comm_bytes_per_layer(4, 1024, 768, 0)


def test_gpt_num_parameters_equals_the_model():
    for cfg in (_cfg(), _cfg(qkv_bias=True), GPTConfig.from_preset("gpt2-small", n_layers=2, vocab_size=500)):
        assert gpt_num_parameters(cfg) == GPTModel(cfg).num_parameters()


def test_plan_memory_and_ordering():
    rows = {r.strategy: r for r in plan("gpt2-medium", 8, 80, 450, global_batch=64, micro_batch=4)}
    ddp, z1, z2, z3 = (rows[k] for k in ("DDP", "ZeRO-1", "ZeRO-2", "ZeRO-3 / FSDP"))
    assert ddp.params_gb + ddp.grads_gb + ddp.optimizer_gb > z1.params_gb + z1.grads_gb + z1.optimizer_gb \
        > z2.params_gb + z2.grads_gb + z2.optimizer_gb > z3.params_gb + z3.grads_gb + z3.optimizer_gb
    # the parameter count is the model's own
    n_params = gpt_num_parameters(GPTConfig.from_preset("gpt2-medium"))  # = num_parameters(), tested above
    assert ddp.params_gb == pytest.approx(2 * n_params / 1e9)
    assert z3.comm_s == pytest.approx(1.5 * ddp.comm_s)
    assert "TP=8" in rows and "TP=2 x DP=4" in rows and any(k.startswith("PP=8") for k in rows)
    for bad in (dict(n_gpus=0), dict(gpu_memory_gb=-1), dict(mfu=1.5)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            plan("gpt2-small", **{**dict(n_gpus=8, gpu_memory_gb=80, bandwidth_gb_s=450), **bad})
    with pytest.raises(ValueError, match="model"):
        plan("gpt5", 8, 80, 450)
    with pytest.raises(TypeError, match="model"):
        plan(3, 8, 80, 450)


# --------------------------------------------------------------------------------------
# Activation checkpointing
# --------------------------------------------------------------------------------------

def test_activation_checkpointing_same_loss_and_grads_less_saved_memory():
    torch.manual_seed(0)
    model = GPTModel(_cfg(dropout=0.1))
    twin = copy.deepcopy(model)
    twin.activation_checkpointing = True
    idx = torch.randint(0, 64, (4, 16))

    def run(m):
        saved = {}

        def pack(t):
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t
        torch.manual_seed(1)  # the same dropout masks; checkpoint replays them in the recompute
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = F.cross_entropy(m(idx).flatten(0, 1), idx.flatten())
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in m.named_parameters()}, sum(saved.values())

    loss_a, grads_a, saved_a = run(model)
    loss_b, grads_b, saved_b = run(twin)
    assert torch.equal(loss_a, loss_b)
    for n in grads_a:
        assert torch.allclose(grads_a[n], grads_b[n], atol=1e-6), n
    assert saved_b < saved_a / 2
    # evaluation, no_grad and KV-cache decoding are unaffected
    twin.eval()
    with torch.no_grad():
        assert torch.allclose(twin(idx), model.eval()(idx))


# --------------------------------------------------------------------------------------
# pretrain.py: --activation-checkpointing, the loss-spike guard, <|endoftext|> documents
# --------------------------------------------------------------------------------------

PRETRAIN = ROOT / "ch05_pretraining" / "pretrain.py"


@functools.lru_cache(maxsize=1)
def _pretrain_module():
    spec = importlib.util.spec_from_file_location("pretrain_mod", PRETRAIN)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run_pretrain_here(argv: list[str]) -> tuple[int, str, str]:
    """``pretrain.main(argv)`` in this process (one process needs no torchrun; saves a torch import)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = _pretrain_module().main(argv)
    return code, out.getvalue(), err.getvalue()


def _pretrain(tmp_path: Path, name: str, *extra: str) -> tuple[str, list[dict]]:
    import numpy as np

    from shared.data import write_token_file
    data = tmp_path / "tokens.npy"
    if not data.exists():
        rng = np.random.default_rng(0)
        # a learnable stream: a repeated random "text" of 400 tokens
        write_token_file(data, np.tile(rng.integers(0, 64, 400), 20), 64)
    out = tmp_path / name
    code, stdout, stderr = _run_pretrain_here(
        ["--out", str(out), "--data", str(data), "--profile", "smoke", "--device", "cpu", "--preset", "tiny",
         "--vocab-size", "64", "--max-steps", "12", "--eval-interval", "0", "--batch-size", "4", *extra])
    assert code == 0, stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return stdout, records


def test_pretrain_loss_spike_rewinds_and_skips(tmp_path):
    # one run covers both new flags (the loss/gradient equality of checkpointing is tested above)
    stdout, records = _pretrain(tmp_path, "spike", "--spike-factor", "3", "--spike-warmup", "3",
                                "--checkpoint-interval", "4", "--debug-inject-spike-at", "6",
                                "--activation-checkpointing")
    assert "activation checkpointing" in stdout
    assert "loss spike at step 6" in stdout and "rewound to the checkpoint of step 4" in stdout
    rewinds = [r for r in records if "rewind_to" in r]
    assert len(rewinds) == 1 and rewinds[0]["rewind_to"] == 4 and rewinds[0]["data_shift"] == 3
    steps = [r["step"] for r in records if "rewind_to" not in r]
    assert steps == list(range(12))  # every step logged once; the spiked step is replaced
    assert max(r["loss"] for r in records if "rewind_to" not in r) < rewinds[0]["loss"] / 3
    code, _, stderr = _run_pretrain_here(["--out", str(tmp_path / "x"), "--profile", "smoke", "--spike-factor", "0.5"])
    assert code == 1 and "--spike-factor" in stderr


def test_encode_documents_puts_endoftext_between_documents():
    mod = _pretrain_module()
    from shared.tokenizer import ENDOFTEXT, BPETokenizer
    tok = BPETokenizer.train("to be or not to be " * 20, 256 + 10)
    eot = tok.special_tokens[ENDOFTEXT]
    ids = mod.encode_documents(["to be", "or not"], tok.encode, eot).tolist()
    assert ids.count(eot) == 2 and ids[-1] == eot
    assert tok.decode(ids) == f"to be{ENDOFTEXT}or not{ENDOFTEXT}"
    assert mod._first_chars(["abc", "defg"], 5) == ["abc", "de"]
    with pytest.raises(ValueError, match="docs"):
        mod.encode_documents([], tok.encode, eot)
    with pytest.raises(ValueError, match="eot_id"):
        mod.encode_documents(["a"], tok.encode, -1)


@pytest.mark.slow
def test_pretrain_tensor_parallel_matches_one_process_and_resumes(tmp_path):
    """2-process ``--strategy tp`` (stopped after 3 steps, resumed to 6) ends with the weights of
    an uninterrupted 1-process run: sharded training, global-norm clipping (active: lr 3e-3,
    clip 1.0, norms ~1), the gathered checkpoint and the re-sharded Adam state are all exact up
    to fp32 round-off (measured 4.5e-07)."""
    flags = ["--max-steps", "6", "--checkpoint-interval", "3", "--grad-clip", "1.0"]
    _pretrain(tmp_path, "single", *flags)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LLM_DEVICE": "cpu", "PYTHONPATH": str(ROOT)}
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(PRETRAIN),
            "--strategy", "tp", "--out", str(tmp_path / "tp"), "--data", str(tmp_path / "tokens.npy"),
            "--profile", "smoke", "--preset", "tiny", "--vocab-size", "64", "--eval-interval", "0",
            "--batch-size", "4", *flags]
    for extra in (["--debug-exit-after", "3"], ["--resume"]):
        proc = subprocess.run(base + extra, env=env, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resumed from" in proc.stdout and "tp x 2" in proc.stdout
    a = torch.load(tmp_path / "single" / "ckpt.pt", weights_only=True)
    b = torch.load(tmp_path / "tp" / "ckpt.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert a["model"][k].shape == b["model"][k].shape
        assert float((a["model"][k] - b["model"][k]).abs().max()) < 1e-5, k
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
