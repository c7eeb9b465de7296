"""Benchmark: fused ``F.scaled_dot_product_attention`` against hand-written attention.

Both paths are the same :class:`shared.attention.MultiHeadAttention` module (one GPT-2 small
attention layer by default: ``d_model=768``, 12 heads) with the same weights, switched with
``use_sdpa``. For each sequence length ``T`` it prints the time per step and the peak memory
that one step allocates, where a step is a forward plus backward (``--mode train``, default)
or a forward under ``torch.no_grad()`` (``--mode infer``).

How it measures:

* **Time**: best of ``--repeats`` steps after one warm-up step, the two paths taking turns
  (``time.perf_counter``; on CUDA the GPU is synchronised before reading the clock). The
  minimum, not the mean, because on a shared machine other processes only ever add time.
* **Peak memory, CUDA**: ``torch.cuda.reset_peak_memory_stats()`` then
  ``torch.cuda.max_memory_allocated()`` minus what was allocated before the step.
* **Peak memory, CPU**: there is no ``max_memory_allocated`` for the CPU, so the step runs once
  under ``torch.profiler.profile(profile_memory=True)``. The profiler records every
  allocation and free of PyTorch's CPU allocator (including buffers allocated *inside* fused
  kernels), each with a running "Total Allocated"; the highest value of that running total,
  minus its value just before the first event, is the step's peak memory above what existed
  before the step. It counts tensor
  memory only (not the Python interpreter or allocator caching), which is what ``T²`` affects.
  The profiled step is not timed.

Both figures include what the two paths share: the projections' activations and, in train
mode, the parameter gradients (about 9 MiB at d_model=768). The difference between the
columns is the attention core. The last column, ``B*H*T²*4 bytes``, is the size of one
float32 attention-weight matrix for all heads, the object the hand-written path materialises
(several times: scores, masked scores, softmax, and their gradients) and SDPA's fused
kernel (FlashAttention-style tiling with an online softmax) never stores.

Usage::

    python ch03_attention/bench_attention.py                    # CPU, T = 128 ... 2048
    python ch03_attention/bench_attention.py --device cuda      # GPU when available
    python ch03_attention/bench_attention.py --mode infer --seq-lens 256 1024
    python ch03_attention/bench_attention.py --cores --mode infer --seq-lens 256 512 1024 2048 4096 8192
    python ch03_attention/bench_attention.py --cores --mode train   # tiled/window/linear fwd+bwd

``--cores`` compares the attention *cores* on ``q, k, v: [B, H, T, d]`` (Chapter 3b): SDPA,
the hand-written materialised version, ``shared.attention.flash_attention`` (tiled, online
softmax; fwd+bwd through its recomputing backward), the same with a sliding window, SDPA with
the window as a boolean mask, and ``linear_attention`` (chunked). Ratios are to SDPA in the
same run. The tiled versions are Python loops over tiles: they show the memory, not speed.

Reference: Dao et al., "FlashAttention" (2022); Rabe & Staats, "Self-attention does not need
O(n²) memory" (2021). Timings depend on the machine and on its load (printed in the header).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time

import torch

import torch.nn.functional as F

from shared.attention import (MultiHeadAttention, flash_attention, linear_attention,
                              sliding_window_mask)

__all__ = ["make_pair", "time_steps", "peak_memory", "peak_memory_fn", "benchmark", "format_table",
           "core_variants", "benchmark_cores", "format_core_table"]


def make_pair(d_model: int = 768, n_heads: int = 12, context_length: int = 2048,
              device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Two attention modules with identical weights: ``(sdpa, hand_written)``."""
    torch.manual_seed(0)
    fast = MultiHeadAttention(d_model, d_model, context_length, n_heads, use_sdpa=True)
    slow = MultiHeadAttention(d_model, d_model, context_length, n_heads, use_sdpa=False)
    slow.load_state_dict(fast.state_dict())
    return fast.to(device=device, dtype=dtype), slow.to(device=device, dtype=dtype)


def _step(module: MultiHeadAttention, x: torch.Tensor, train: bool) -> None:
    if train:
        module.zero_grad(set_to_none=True)
        module(x).sum().backward()
    else:
        with torch.no_grad():
            module(x)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(modules: dict[str, MultiHeadAttention], x: torch.Tensor, train: bool = True,
               repeats: int = 5, budget_s: float = 30.0) -> dict[str, float]:
    """Best-of-``repeats`` milliseconds per step for each module, measured interleaved.

    One warm-up step each, then the modules take turns, so a burst of load from other
    processes hits all of them alike. The minimum is reported (as ``timeit`` advises): on a
    shared machine the noise only ever adds time. Stops early once ``budget_s`` is spent
    (after at least two rounds).
    """
    for module in modules.values():
        _step(module, x, train)
    _sync(x.device)
    times: dict[str, list[float]] = {name: [] for name in modules}
    start = time.perf_counter()
    for r in range(repeats):
        if r >= 2 and time.perf_counter() - start > budget_s:
            break
        for name, module in modules.items():
            t0 = time.perf_counter()
            _step(module, x, train)
            _sync(x.device)
            times[name].append(time.perf_counter() - t0)
    return {name: 1000 * min(ts) for name, ts in times.items()}


@contextlib.contextmanager
def _silence_stderr_fd():
    """Kineto prints status lines on the C-level stderr; hide them while profiling."""
    try:
        fd = os.dup(2)
    except OSError:  # no real stderr (some notebook front-ends): nothing to hide
        yield
        return
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(fd, 2)
            os.close(fd)


def peak_memory_fn(fn, device: torch.device | str = "cpu") -> int:
    """Peak bytes allocated while ``fn()`` runs, above what was allocated before (see module doc)."""
    device = torch.device(device)
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    if device.type != "cpu":
        raise ValueError(f"peak memory is measured on cpu or cuda, not {device.type}")
    from torch.profiler import ProfilerActivity, profile

    with _silence_stderr_fd(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        with _silence_stderr_fd():
            prof.export_chrome_trace(path)
        with open(path, encoding="utf-8") as f:
            events = json.load(f)["traceEvents"]
    mem = [e["args"] for e in events if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0]
    if not mem:
        return 0
    # "Total Allocated" is a process-wide running counter that the profiler keeps only while it
    # is on, so its level at the start is arbitrary: measure from just before the first event.
    start = mem[0]["Total Allocated"] - mem[0]["Bytes"]
    return max(0, max(m["Total Allocated"] for m in mem) - start)


def peak_memory(module: MultiHeadAttention, x: torch.Tensor, train: bool = True) -> int:
    """Peak bytes allocated by one step above what was allocated before it (see module doc)."""
    module.zero_grad(set_to_none=True)
    return peak_memory_fn(lambda: _step(module, x, train), x.device)


def benchmark(seq_lens=(128, 256, 512, 1024, 2048), device: str = "cpu", batch_size: int = 1,
              d_model: int = 768, n_heads: int = 12, train: bool = True, repeats: int = 5,
              dtype: torch.dtype = torch.float32, budget_s: float = 30.0, memory: bool = True) -> list[dict]:
    """Measure both paths at every ``T`` in ``seq_lens``.

    Returns:
        one dict per ``T`` with ``T``, ``hand_ms``, ``sdpa_ms``, ``hand_mib``, ``sdpa_mib``
        (None when ``memory=False``) and ``attn_matrix_mib`` (``B*H*T²`` elements).

    Raises:
        ValueError: for an empty ``seq_lens`` or a non-positive length.
    """
    seq_lens = list(seq_lens)
    if not seq_lens or min(seq_lens) < 1:
        raise ValueError(f"seq_lens must be positive lengths, got {seq_lens}")
    device = torch.device(device)
    fast, slow = make_pair(d_model, n_heads, max(seq_lens), device, dtype)
    rows = []
    for T in seq_lens:
        torch.manual_seed(T)
        x = torch.randn(batch_size, T, d_model, device=device, dtype=dtype)
        row = {"T": T}
        modules = {"hand": slow, "sdpa": fast}
        for name, ms in time_steps(modules, x, train, repeats, budget_s).items():
            row[f"{name}_ms"] = ms
        for name, module in modules.items():
            row[f"{name}_mib"] = peak_memory(module, x, train) / 2**20 if memory else None
        elem = torch.finfo(dtype).bits // 8
        row["attn_matrix_mib"] = batch_size * n_heads * T * T * elem / 2**20
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """A Markdown table of :func:`benchmark` rows (pastes straight into a notebook)."""
    def mib(v):
        return "n/a" if v is None else f"{v:,.1f}"

    lines = ["| T | hand-written ms | SDPA ms | speed-up | hand-written peak MiB | SDPA peak MiB "
             "| memory ratio | one B·H·T² matrix MiB |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = "n/a" if r["hand_mib"] is None or not r["sdpa_mib"] else f"{r['hand_mib'] / r['sdpa_mib']:.1f}x"
        lines.append(f"| {r['T']} | {r['hand_ms']:,.1f} | {r['sdpa_ms']:,.1f} | {r['hand_ms'] / r['sdpa_ms']:.2f}x "
                     f"| {mib(r['hand_mib'])} | {mib(r['sdpa_mib'])} | {ratio} | {r['attn_matrix_mib']:,.1f} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Attention cores on [B, H, T, d] tensors (Chapter 3b): SDPA against the tiled, windowed and
# linear versions from shared.efficient_attention.
# ----------------------------------------------------------------------------------------------


def _hand_written(q, k, v):
    T = q.size(2)
    scores = q @ k.transpose(-2, -1) / q.size(-1) ** 0.5                    # [B, H, T, T]
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def core_variants(window: int = 256, block: int = 128) -> dict:
    """``{name: fn(q, k, v) -> out}``: causal attention cores compared by :func:`benchmark_cores`.

    ``sdpa`` (fused, the baseline), ``hand`` (materialised ``T x T``), ``tiled``
    (:func:`flash_attention`, ``block x block`` tiles), ``window`` (``flash_attention`` with a
    sliding window, ``O(T * window)``), ``sdpa_window`` (SDPA with the ``[T, T]`` boolean window
    mask, ``O(T^2)``) and ``linear`` (:func:`linear_attention`, chunked, ``O(T)``).
    """
    return {
        "sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        "hand": _hand_written,
        "tiled": lambda q, k, v: flash_attention(q, k, v, block_q=block, block_k=block),
        "window": lambda q, k, v: flash_attention(q, k, v, block_q=block, block_k=block, window=window),
        "sdpa_window": lambda q, k, v: F.scaled_dot_product_attention(
            q, k, v, attn_mask=sliding_window_mask(q.size(2), window, q.device)),
        "linear": lambda q, k, v: linear_attention(q, k, v, form="chunked", chunk_size=block),
    }


def benchmark_cores(seq_lens=(256, 512, 1024, 2048, 4096, 8192), device: str = "cpu", batch_size: int = 1,
                    n_heads: int = 12, head_dim: int = 64, train: bool = False, repeats: int = 3,
                    window: int = 256, block: int = 128, max_hand_T: int = 4096, budget_s: float = 60.0,
                    memory: bool = True, names: list[str] | None = None) -> list[dict]:
    """Time (best of ``repeats``, taking turns) and peak memory of each core at every ``T``.

    A step is a forward under ``torch.no_grad()`` (``train=False``) or a forward + backward of
    ``out.sum()`` with respect to ``q, k, v`` (``train=True``). ``hand`` is skipped above
    ``max_hand_T`` (its ``T x T`` float32 matrices: 3 GiB each at T = 8192 with 12 heads).

    Returns:
        one dict per ``T``: ``T``, and ``{name}_ms`` / ``{name}_mib`` (None when skipped or
        ``memory=False``) for every core.

    Raises:
        ValueError: for an empty ``seq_lens``, a non-positive length or an unknown core name.
    """
    seq_lens = list(seq_lens)
    if not seq_lens or min(seq_lens) < 1:
        raise ValueError(f"seq_lens must be positive lengths, got {seq_lens}")
    variants = core_variants(window, block)
    names = list(variants) if names is None else names
    unknown = [n for n in names if n not in variants]
    if unknown:
        raise ValueError(f"unknown core names {unknown}; choose from {list(variants)}")
    device = torch.device(device)
    rows = []
    for T in seq_lens:
        g = torch.Generator(device="cpu").manual_seed(T)
        q, k, v = (torch.randn(batch_size, n_heads, T, head_dim, generator=g).to(device) for _ in range(3))
        if train:
            q, k, v = (t.requires_grad_() for t in (q, k, v))
        active = [n for n in names if not (n == "hand" and T > max_hand_T)]

        def step(fn):
            if train:
                q.grad = k.grad = v.grad = None
                fn(q, k, v).sum().backward()
            else:
                with torch.no_grad():
                    fn(q, k, v)

        row: dict = {"T": T}
        for n in names:
            row[f"{n}_ms"] = row[f"{n}_mib"] = None
        for n in active:  # warm-up
            step(variants[n])
        _sync(device)
        times = {n: [] for n in active}
        start = time.perf_counter()
        for r in range(repeats):
            if r >= 1 and time.perf_counter() - start > budget_s:
                break
            for n in active:
                t0 = time.perf_counter()
                step(variants[n])
                _sync(device)
                times[n].append(time.perf_counter() - t0)
        for n in active:
            row[f"{n}_ms"] = 1000 * min(times[n])
            if memory:
                row[f"{n}_mib"] = peak_memory_fn(lambda: step(variants[n]), device) / 2**20
        rows.append(row)
    return rows


def format_core_table(rows: list[dict], names: list[str] | None = None) -> str:
    """Markdown table of :func:`benchmark_cores` rows: ms and peak MiB, and both as ratios to SDPA."""
    names = names or [k[:-3] for k in rows[0] if k.endswith("_ms")]
    head = "| T | " + " | ".join(f"{n} ms (x SDPA)" for n in names) + " | " + \
        " | ".join(f"{n} MiB (x SDPA)" for n in names) + " |"
    lines = [head, "|---:|" + "---:|" * (2 * len(names))]

    def cell(r, n, unit):
        val, base = r.get(f"{n}_{unit}"), r.get(f"sdpa_{unit}")
        if val is None:
            return "–"
        ratio = f" ({val / base:.2f}x)" if base and n != "sdpa" else ""
        return f"{val:,.1f}{ratio}"

    for r in rows:
        lines.append(f"| {r['T']} | " + " | ".join(cell(r, n, "ms") for n in names) + " | "
                     + " | ".join(cell(r, n, "mib") for n in names) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="SDPA vs hand-written attention: time and peak memory.")
    ap.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda if available, else cpu)")
    ap.add_argument("--seq-lens", type=int, nargs="+", default=[128, 256, 512, 1024, 2048])
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--n-heads", type=int, default=12)
    ap.add_argument("--mode", choices=["train", "infer"], default="train",
                    help="train: forward+backward per step; infer: forward under no_grad")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--cores", action="store_true",
                    help="benchmark attention cores on [B, H, T, d] tensors instead of the module: SDPA, "
                         "hand-written, tiled (flash_attention), sliding window, linear")
    ap.add_argument("--window", type=int, default=256, help="--cores: sliding-window size")
    ap.add_argument("--block", type=int, default=128, help="--cores: tile / chunk size")
    ap.add_argument("--max-hand-T", type=int, default=4096, help="--cores: skip the hand-written core above this T")
    args = ap.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"# device={device} ({name}), torch {torch.__version__}, dtype={args.dtype}, mode={args.mode}, "
          f"B={args.batch_size}, d_model={args.d_model}, n_heads={args.n_heads}")
    if load:
        print(f"# load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1/5/15 min)")
    if args.cores:
        print(f"# cores: q, k, v [B={args.batch_size}, H={args.n_heads}, T, d={args.d_model // args.n_heads}], "
              f"causal, float32, window={args.window}, block={args.block}")
        rows = benchmark_cores(args.seq_lens, device, args.batch_size, args.n_heads, args.d_model // args.n_heads,
                               train=args.mode == "train", repeats=args.repeats, window=args.window,
                               block=args.block, max_hand_T=args.max_hand_T)
        print(format_core_table(rows))
    else:
        rows = benchmark(args.seq_lens, device, args.batch_size, args.d_model, args.n_heads,
                         train=args.mode == "train", repeats=args.repeats, dtype=dtype)
        print(format_table(rows))
    if load:
        after = os.getloadavg()
        print(f"# load average after: {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
