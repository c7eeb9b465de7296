"""One command that proves the course on a GPU: ``python -m shared.gpucheck --out report.json``.

It measures, on one device, and writes a JSON report plus a Markdown summary (``report.md``):

1. **Training throughput** of GPT-2 124M at context 1024 in bf16 (fp16 + GradScaler where bf16
   is missing, e.g. a T4), with fused AdamW: tokens/s and MFU, eager and ``torch.compile``.
   MFU uses the peak of the dtype actually used (:func:`shared.hardware.peak_flops`).
2. **KV-cache decoding** at batch 1 and 8, 512 new tokens: speed-up over recomputation, after
   checking that the greedy tokens are identical.
3. **Attention**: ``F.scaled_dot_product_attention`` against the hand-written path (Chapter 3),
   forward+backward time and peak memory, T = 1k..8k.
4. **The course model's GPU recipe** (:data:`shared.pretrained.RECIPES` ``["gpu"]``) end to
   end: wall time and held-out bits per byte.
5. **Every narrated notebook** under ``LLM_PROFILE=default``, executed headless (nothing is
   written back), with its wall time and any error, within what is left of ``--budget``, so
   items 1-4 always report.

``--device cpu --quick`` runs the same code paths at toy sizes (and one notebook under the smoke
profile) in under 2 minutes; the test suite runs it (``tests/test_gpucheck.py``), so the script
cannot rot. Each item catches its own
errors: one failure is reported in the JSON and the others still run.

Example::

    python -m shared.gpucheck --out gpu_report.json              # on a GPU (budgeted ~8 min; not yet run on one)
    python -m shared.gpucheck --device cpu --quick --out /tmp/r.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = ["run_checks", "main", "train_throughput", "kv_cache_decoding", "attention_sweep",
           "course_recipe", "notebooks"]

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- helpers

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: torch.device) -> float | None:
    """Peak allocated memory since the last reset, MiB (CUDA only; None on the CPU)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return None


def _timeit(fn, device: torch.device, warmup: int, iters: int) -> float:
    """Median seconds per call of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


# ----------------------------------------------------------------------------- 1. training throughput

def _batch_for(device: torch.device, quick: bool) -> int:
    """Micro-batch for GPT-2 124M at T = 1024: larger where memory allows (higher MFU)."""
    if quick:
        return 4
    if device.type != "cuda":
        return 2
    gib = torch.cuda.get_device_properties(device).total_memory / 2**30
    return 32 if gib >= 70 else 16 if gib >= 35 else 8


def train_throughput(device: torch.device, quick: bool, compile_: bool = True) -> dict:
    """Tokens/s and MFU of one training step (forward, backward, fused AdamW), eager and compiled.

    GPT-2 124M (``gpt2-small``, context 1024) on a GPU; a toy GPT under ``quick``. Both modes
    start from the same weights and batch, so their first-step losses must agree
    (``compile_loss_diff``); a mode that fails is reported with its error and the other still runs.
    """
    from shared.hardware import amp_dtype, device_name, mfu, peak_flops
    from shared.model import GPTConfig, GPTModel
    from shared.train import autocast_context, configure_optimizer, cross_entropy_loss, make_grad_scaler

    if quick:
        cfg = GPTConfig(vocab_size=512, context_length=64, d_model=64, n_heads=4, n_layers=2)
        warmup, iters = 1, 3
    else:
        cfg = GPTConfig.from_preset("gpt2-small")
        warmup, iters = 3, 10
    B, T = _batch_for(device, quick), cfg.context_length
    dtype = amp_dtype(device)  # what autocast_context computes in: the peak to quote
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    peak = peak_flops(device, dtype)
    rows, first_loss = [], {}
    modes = ["eager"] + (["compile"] if compile_ else [])
    for mode in modes:
        try:
            torch.manual_seed(0)
            model = GPTModel(cfg).to(device)
            # fused AdamW: one kernel for the whole update (CUDA, and the CPU since torch 2.4)
            optimizer = configure_optimizer(model, lr=1e-4, weight_decay=0.1, fused=True)
            scaler = make_grad_scaler(device)
            fwd = torch.compile(model) if mode == "compile" else model
            gen = torch.Generator().manual_seed(1)
            x = torch.randint(0, cfg.vocab_size, (B, T), generator=gen).to(device)
            y = torch.randint(0, cfg.vocab_size, (B, T), generator=gen).to(device)

            def step():
                with autocast_context(device):
                    loss = cross_entropy_loss(fwd(x), y)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                return loss.detach()

            _reset_peak(device)
            t0 = time.perf_counter()
            first_loss[mode] = float(step())  # the first step includes compilation
            first = time.perf_counter() - t0
            sec = _timeit(step, device, warmup, iters)
            tps = B * T / sec
            rows.append({"mode": mode, "batch_size": B, "context_length": T, "seconds_per_step": sec,
                         "first_step_seconds": first, "first_step_loss": first_loss[mode],
                         "tokens_per_s": tps, "mfu": mfu(tps, model.flops_per_token(T), peak),
                         "peak_memory_mib": _peak_mib(device),
                         "fused_adamw": bool(optimizer.param_groups[0].get("fused"))})
            del model, optimizer, fwd
        except Exception as e:  # e.g. no C++ compiler for torch.compile: keep the other mode
            rows.append({"mode": mode, "error": f"{type(e).__name__}: {str(e).strip()[:300]}"})
        if device.type == "cuda":
            torch.cuda.empty_cache()
    diff = abs(first_loss["compile"] - first_loss["eager"]) if len(first_loss) == 2 else None
    with torch.device("meta"):  # sizes only: no memory, no initialisation
        stats = GPTModel(cfg)
    return {"model": "gpt2-small (124M)" if not quick else "toy GPT (quick)",
            "parameters": stats.num_parameters(), "dtype": str(dtype).replace("torch.", ""),
            "device": device_name(device), "peak_tflops": None if peak is None else peak / 1e12,
            "flops_per_token": stats.flops_per_token(T), "rows": rows, "compile_loss_diff": diff,
            "target": "MFU >= 0.50 against the dense bf16 peak on an H100/H200 (989 TFLOP/s)"}


# ----------------------------------------------------------------------------- 2. KV-cache decoding

def kv_cache_decoding(device: torch.device, quick: bool) -> dict:
    """Greedy decoding with and without the KV cache, batch 1 and 8: identical tokens, speed-up.

    fp32 weights (TF32 off) so both paths take the same arithmetic and the greedy tokens can be
    compared exactly; a random-weight GPT-2 124M (the speed does not depend on the weights).
    """
    from shared.generate import generate
    from shared.model import GPTConfig, GPTModel

    if quick:
        cfg = GPTConfig(vocab_size=512, context_length=128, d_model=64, n_heads=4, n_layers=2)
        new_tokens, prompt_len = 32, 8
    else:
        cfg = GPTConfig.from_preset("gpt2-small")
        new_tokens, prompt_len = 512, 16
    prev_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        torch.manual_seed(0)
        model = GPTModel(cfg).to(device).eval()
        rows = []
        for batch in (1, 8):
            idx = torch.randint(0, cfg.vocab_size, (batch, prompt_len), device=device)
            out = {}
            for use_cache in (True, False):
                _sync(device)
                _reset_peak(device)
                t0 = time.perf_counter()
                with torch.no_grad():
                    out[use_cache] = generate(model, idx, new_tokens, use_cache=use_cache)
                _sync(device)
                out[(use_cache, "s")] = time.perf_counter() - t0
                out[(use_cache, "mem")] = _peak_mib(device)
            same = bool(torch.equal(out[True], out[False]))
            first_diff, gap = None, None
            if not same:  # where do they part, and was it a near-tie that rounding can flip?
                diff = (out[True] != out[False]).any(0).nonzero()
                pos = int(diff[0])
                first_diff = pos - prompt_len
                b = int((out[True][:, pos] != out[False][:, pos]).nonzero()[0])
                with torch.no_grad():
                    top2 = model(out[False][b:b + 1, :pos])[0, -1].float().topk(2).values
                gap = float(top2[0] - top2[1])
            rows.append({"batch_size": batch, "new_tokens": new_tokens,
                         "cached_tokens_per_s": batch * new_tokens / out[(True, "s")],
                         "uncached_tokens_per_s": batch * new_tokens / out[(False, "s")],
                         "speedup": out[(False, "s")] / out[(True, "s")], "identical_tokens": same,
                         "first_differing_new_token": first_diff,
                         # the top-2 logit gap there: ~1e-6 means a tie broken by rounding, not a bug
                         "top2_logit_gap_at_first_difference": gap,
                         "cached_peak_memory_mib": out[(True, "mem")],
                         "uncached_peak_memory_mib": out[(False, "mem")]})
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev_tf32
    return {"model": "gpt2-small (124M), random weights" if not quick else "toy GPT (quick)",
            "dtype": "float32", "rows": rows}


# ----------------------------------------------------------------------------- 3. attention

def _manual_attention(q, k, v):
    """Chapter 3's hand-written causal attention: materialises the [B, H, T, T] scores."""
    T = q.size(-2)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    return torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1) @ v


def attention_sweep(device: torch.device, quick: bool) -> dict:
    """Causal attention forward+backward: SDPA against the hand-written path, ms and peak MiB."""
    from shared.hardware import amp_dtype

    dtype = amp_dtype(device)
    B, H, d = (1, 4, 32) if quick else (4, 12, 64)
    lengths = (128, 256) if quick else (1024, 2048, 4096, 8192)
    rows = []
    for T in lengths:
        row = {"T": T}
        for name in ("sdpa", "manual"):
            torch.manual_seed(0)
            q, k, v = (torch.randn(B, H, T, d, device=device, dtype=dtype, requires_grad=True) for _ in range(3))

            def fwd_bwd():
                if name == "sdpa":
                    o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                else:
                    o = _manual_attention(q, k, v)
                o.sum().backward()

            try:
                _reset_peak(device)
                row[f"{name}_ms"] = 1e3 * _timeit(fwd_bwd, device, 1, 2 if quick else 5)
                row[f"{name}_peak_mib"] = _peak_mib(device)
            except torch.OutOfMemoryError:  # the materialised T x T scores may not fit
                row[f"{name}_ms"], row[f"{name}_peak_mib"] = None, "out of memory"
            del q, k, v
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if row.get("sdpa_ms") and row.get("manual_ms"):
            row["manual_over_sdpa"] = row["manual_ms"] / row["sdpa_ms"]
        rows.append(row)
    return {"shape": {"B": B, "H": H, "head_dim": d}, "dtype": str(dtype).replace("torch.", ""),
            "pass": "forward+backward, causal", "rows": rows}


# ----------------------------------------------------------------------------- 4. course recipe

def course_recipe(device: torch.device, quick: bool) -> dict:
    """Train the course model with the recipe this device gets (``gpu`` on CUDA) and report
    wall time and held-out bits per byte, then the same recipe without the KJV (same tokenizer,
    so only the data mixture differs): the check that mixing in the second corpus helps.
    Nothing is saved (the chapters' checkpoint is untouched)."""
    from shared.pretrained import recipe, recipe_name, train_course_model

    profile = "smoke" if quick else "default"
    name = recipe_name(profile, device)
    overrides = {}
    if quick:  # the smoke recipe, shortened further, with the KJV: this only proves the code path
        overrides = dict(max_steps=10, eval_interval=0, text_chars=100_000, val_chars=20_000, vocab_size=300,
                         kjv_weight=0.3)
    settings = {**recipe(profile, device), **overrides}
    rows, tok, n_params = [], None, None
    for kjv_weight in dict.fromkeys((settings.get("kjv_weight", 0.0), 0.0)):
        t0 = time.perf_counter()
        model, tok, info = train_course_model(profile, device=device, verbose=False, tokenizer=tok,
                                              **{**overrides, "kjv_weight": kjv_weight})
        n_params = n_params or model.num_parameters()
        rows.append({"kjv_weight": kjv_weight, "seconds": time.perf_counter() - t0,
                     "val_loss_nats_per_token": info["val_loss"], "val_bits_per_byte": info["val_bpb"]})
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    first = rows[0]
    return {"recipe": name, "settings": settings, "parameters": n_params,
            "seconds": first["seconds"], "val_bits_per_byte": first["val_bits_per_byte"],
            "val_loss_nats_per_token": first["val_loss_nats_per_token"], "rows": rows,
            "cpu_default_reference_bpb": 2.26}


# ----------------------------------------------------------------------------- 5. notebooks

def narrated_notebooks(root: Path = ROOT) -> list[Path]:
    """The narrated notebooks (``chNN_*/NN*.ipynb``), not exercises or solutions."""
    return sorted(p for p in root.glob("ch*/*.ipynb") if not p.name.startswith("exercise_"))


def notebooks(device: torch.device, budget_s: float, paths: list[Path] | None = None,
              profile: str = "default") -> dict:
    """Execute each narrated notebook headless under ``LLM_PROFILE=profile`` on ``device``,
    within ``budget_s`` seconds in total. Notebooks are read, run in memory and never written."""
    import nbformat
    from nbclient import NotebookClient

    paths = narrated_notebooks() if paths is None else paths
    env = {**os.environ, "LLM_PROFILE": profile, "LLM_DEVICE": device.type, "MPLBACKEND": "Agg"}
    rows, t_start = [], time.perf_counter()
    for path in paths:
        left = budget_s - (time.perf_counter() - t_start)
        rel = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)
        if left < 10:
            rows.append({"notebook": rel, "status": "skipped (time budget spent)", "seconds": None})
            continue
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(nb, timeout=int(left), kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}})
        t0 = time.perf_counter()
        try:
            client.execute(env=env)  # the kernel's environment; ours stays untouched
            status, error = "ok", None
        except Exception as e:  # CellExecutionError, timeout, dead kernel: report and go on
            status, error = "error", f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
            if "Timeout" in type(e).__name__ or "timed out" in str(e).lower():
                status = "timeout (time budget spent)"
        rows.append({"notebook": rel, "status": status, "seconds": time.perf_counter() - t0, "error": error})
    return {"budget_seconds": budget_s, "profile": profile, "rows": rows}


# ----------------------------------------------------------------------------- driver

ITEMS = ("train_throughput", "kv_cache_decoding", "attention", "course_recipe", "notebooks")


def run_checks(device: str | torch.device = "cuda", quick: bool = False, budget_s: float = 480.0,
               items: tuple[str, ...] = ITEMS, compile_: bool | None = None,
               log=lambda s: print(s, flush=True)) -> dict:
    """Run the checks and return the report (a JSON-serialisable dict).

    Args:
        device: ``"cuda"`` (default) or ``"cpu"``.
        quick: toy sizes (for the CPU test; the figures then mean nothing); the notebooks item
            then runs only the first notebook, under ``LLM_PROFILE=smoke``.
        budget_s: total seconds; the notebooks (item 5) get what items 1-4 leave of it.
        items: which of :data:`ITEMS` to run.
        compile_: also time ``torch.compile`` (default: yes; on the CPU it needs a C++ compiler).

    Raises:
        ValueError: for an unknown item, a non-positive budget, or ``cuda`` without a GPU.
    """
    device = torch.device(device)
    unknown = set(items) - set(ITEMS)
    if unknown:
        raise ValueError(f"items: unknown {sorted(unknown)}; choose from {ITEMS}")
    if not budget_s > 0:
        raise ValueError(f"budget_s must be positive, got {budget_s!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but no CUDA GPU is visible; use --device cpu --quick on a CPU")
    if compile_ is None:
        compile_ = True
    from shared.hardware import device_name

    report = {"device": device_name(device), "quick": quick, "torch": torch.__version__,
              "python": platform.python_version(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "cuda": torch.version.cuda, "results": {}, "errors": {}, "seconds": {}}
    t_start = time.perf_counter()
    jobs = {"train_throughput": lambda: train_throughput(device, quick, compile_),
            "kv_cache_decoding": lambda: kv_cache_decoding(device, quick),
            "attention": lambda: attention_sweep(device, quick),
            "course_recipe": lambda: course_recipe(device, quick)}
    for name in ITEMS:
        if name not in items:
            continue
        t0 = time.perf_counter()
        log(f"[gpucheck] {name} ...")
        try:
            if name == "notebooks":
                left = budget_s - (time.perf_counter() - t_start)
                if quick:  # prove the code path on one notebook, fast
                    report["results"][name] = notebooks(device, max(left, 0.0), narrated_notebooks()[:1], "smoke")
                else:
                    report["results"][name] = notebooks(device, max(left, 0.0))
            else:
                report["results"][name] = jobs[name]()
        except Exception as e:  # one item's failure must not hide the others
            report["errors"][name] = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"
        report["seconds"][name] = time.perf_counter() - t0
    report["total_seconds"] = time.perf_counter() - t_start
    return report


def _fmt(x, spec=".1f", none="—"):
    if x is None:
        return none
    if isinstance(x, str):
        return x
    return format(x, spec)


def markdown(report: dict) -> str:
    """A human-readable summary of :func:`run_checks`' report."""
    r, out = report["results"], []
    out.append(f"# GPU check: {report['device']}\n")
    out.append(f"torch {report['torch']}, CUDA {report['cuda']}, Python {report['python']}, "
               f"{report['started']}; total {report['total_seconds']:.0f} s"
               + (" (**--quick: toy sizes, figures mean nothing**)" if report["quick"] else "") + "\n")
    if "train_throughput" in r:
        t = r["train_throughput"]
        out.append(f"## 1. Training throughput: {t['model']}, {t['dtype']}, peak {_fmt(t['peak_tflops'])} TFLOP/s\n")
        out.append("| mode | batch x T | tokens/s | MFU | first step (s) | peak MiB | fused AdamW |\n|---|---|---|---|---|---|---|")
        for row in t["rows"]:
            if "error" in row:
                out.append(f"| {row['mode']} | failed: `{row['error'][:120]}` | | | | | |")
                continue
            m = "—" if row["mfu"] is None else f"{100 * row['mfu']:.1f}%"
            out.append(f"| {row['mode']} | {row['batch_size']} x {row['context_length']} | {row['tokens_per_s']:,.0f} | {m} "
                       f"| {row['first_step_seconds']:.1f} | {_fmt(row['peak_memory_mib'], '.0f')} | {row['fused_adamw']} |")
        if t.get("compile_loss_diff") is not None:
            out.append(f"\nFirst-step loss, compiled minus eager: {t['compile_loss_diff']:.1e} (same weights and batch).")
        out.append(f"\nTarget: {t['target']}.\n")
    if "kv_cache_decoding" in r:
        k = r["kv_cache_decoding"]
        out.append(f"## 2. KV-cache decoding: {k['model']}, {k['dtype']}\n")
        out.append("| batch | new tokens | cached tok/s | uncached tok/s | speed-up | identical tokens |\n|---|---|---|---|---|---|")
        for row in k["rows"]:
            same = "yes" if row["identical_tokens"] else (
                f"no: from new token {row['first_differing_new_token']}, "
                f"top-2 logit gap there {row['top2_logit_gap_at_first_difference']:.1e}")
            out.append(f"| {row['batch_size']} | {row['new_tokens']} | {row['cached_tokens_per_s']:,.0f} | "
                       f"{row['uncached_tokens_per_s']:,.0f} | {row['speedup']:.1f}x | {same} |")
        out.append("")
    if "attention" in r:
        a = r["attention"]
        out.append(f"## 3. Attention ({a['pass']}, {a['dtype']}, {a['shape']})\n")
        out.append("| T | SDPA ms | manual ms | manual / SDPA | SDPA peak MiB | manual peak MiB |\n|---|---|---|---|---|---|")
        for row in a["rows"]:
            out.append(f"| {row['T']} | {_fmt(row.get('sdpa_ms'), '.2f')} | {_fmt(row.get('manual_ms'), '.2f')} | "
                       f"{_fmt(row.get('manual_over_sdpa'), '.1f')} | {_fmt(row.get('sdpa_peak_mib'), '.0f')} | "
                       f"{_fmt(row.get('manual_peak_mib'), '.0f')} |")
        out.append("")
    if "course_recipe" in r:
        c = r["course_recipe"]
        out.append(f"## 4. Course model, `{c['recipe']}` recipe\n")
        out.append(f"{c['parameters'] / 1e6:.1f}M parameters; held-out bits/byte on the validation plays "
                   f"(the CPU default model: {c['cpu_default_reference_bpb']}):\n")
        out.append("| training data | seconds end to end | held-out bits/byte |\n|---|---|---|")
        for row in c["rows"]:
            data = "plays only" if not row["kjv_weight"] else f"plays + KJV ({row['kjv_weight']:.0%} of windows)"
            out.append(f"| {data} | {row['seconds']:.0f} | {row['val_bits_per_byte']:.3f} |")
        out.append("")
    if "notebooks" in r:
        n = r["notebooks"]
        out.append(f"## 5. Narrated notebooks, LLM_PROFILE={n['profile']} (budget {n['budget_seconds']:.0f} s)\n")
        out.append("| notebook | status | seconds |\n|---|---|---|")
        for row in n["rows"]:
            err = f" ({row['error']})" if row.get("error") else ""
            out.append(f"| {row['notebook']} | {row['status']}{err} | {_fmt(row['seconds'], '.0f')} |")
        out.append("")
    if report["errors"]:
        out.append("## Errors\n")
        for name, err in report["errors"].items():
            out.append(f"* **{name}**: `{err.splitlines()[0]}`")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m shared.gpucheck", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON report path; the Markdown summary goes beside it (.md)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--quick", action="store_true", help="toy sizes, for a CPU smoke test of the script")
    ap.add_argument("--budget", type=float, default=None,
                    help="total seconds, the notebooks getting what is left (default 480; 110 with --quick)")
    ap.add_argument("--items", default=",".join(ITEMS), help=f"comma-separated subset of {','.join(ITEMS)}")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing report")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        ap.error(f"--out {out} exists; pass --overwrite to replace it")
    if out.parent.exists() and not out.parent.is_dir():
        ap.error(f"--out: {out.parent} is not a directory")
    items = tuple(s.strip() for s in args.items.split(",") if s.strip())
    try:
        budget = args.budget if args.budget is not None else (110.0 if args.quick else 480.0)
        report = run_checks(args.device, args.quick, budget, items,
                            compile_=False if args.no_compile else None)
    except ValueError as e:
        ap.error(str(e))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, out)  # atomic: a killed run never leaves half a report
    md = out.with_suffix(".md")
    md.write_text(markdown(report), encoding="utf-8")
    print(markdown(report))
    print(f"wrote {out} and {md}")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
