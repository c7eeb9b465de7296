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

from shared.attention import MultiHeadAttention

__all__ = ["make_pair", "time_steps", "peak_memory", "benchmark", "format_table"]


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


def peak_memory(module: MultiHeadAttention, x: torch.Tensor, train: bool = True) -> int:
    """Peak bytes allocated by one step above what was allocated before it (see module doc)."""
    if x.device.type == "cuda":
        module.zero_grad(set_to_none=True)
        _sync(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        before = torch.cuda.memory_allocated(x.device)
        _step(module, x, train)
        _sync(x.device)
        return torch.cuda.max_memory_allocated(x.device) - before
    if x.device.type != "cpu":
        raise ValueError(f"peak memory is measured on cpu or cuda, not {x.device.type}")
    from torch.profiler import ProfilerActivity, profile

    module.zero_grad(set_to_none=True)
    with _silence_stderr_fd(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _step(module, x, train)
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
    rows = benchmark(args.seq_lens, device, args.batch_size, args.d_model, args.n_heads,
                     train=args.mode == "train", repeats=args.repeats, dtype=dtype)
    print(format_table(rows))
    if load:
        after = os.getloadavg()
        print(f"# load average after: {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
