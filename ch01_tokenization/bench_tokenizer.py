"""Benchmark the course tokenizer (prints figures; not part of the tests).

1. Time to train the course BPE on the whole Shakespeare corpus to a vocabulary of 4,096
   (pure Python, one thread). Target: <= 60 s.
2. Encoding throughput (MB of UTF-8 per second) of the course encoder loaded with GPT-2's
   merges against tiktoken's GPT-2 encoding, one thread each, on the same text, with the
   ratio. Target: course >= 1/10 of tiktoken. The ids are checked to be identical.

Both wall-clock and CPU time (``time.process_time``) are reported: on a shared machine the CPU
time is the steadier figure. The load average is printed so figures can be compared.

Usage (from the repository root)::

    python ch01_tokenization/bench_tokenizer.py
    python ch01_tokenization/bench_tokenizer.py --vocab-size 8192 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import platform
import time

from shared.data import load_shakespeare
from shared.tokenizer import BPETokenizer, gpt2_encoding


def timed(fn):
    """Run ``fn()`` once; return (result, wall seconds, CPU seconds of this process)."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab-size", type=int, default=4096, help="training target (default 4096)")
    ap.add_argument("--repeats", type=int, default=3, help="encoding runs; the best is reported")
    ap.add_argument("--skip-train", action="store_true", help="only benchmark encoding")
    args = ap.parse_args(argv)

    os.environ.setdefault("RAYON_NUM_THREADS", "1")  # tiktoken's batch API; encode() is single-threaded anyway
    text = load_shakespeare("all")
    n_bytes = len(text.encode("utf-8"))
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs; "
          f"load average at start: {os.getloadavg()[0]:.2f}")
    print(f"corpus: load_shakespeare('all'), {len(text):,} characters, {n_bytes / 1e6:.2f} MB UTF-8\n")

    if not args.skip_train:
        tok, wall, cpu = timed(lambda: BPETokenizer.train(text, args.vocab_size))
        print(f"[1] train BPE to vocab_size={tok.vocab_size:,} ({len(tok.merges):,} merges), one thread: "
              f"{wall:.1f} s wall, {cpu:.1f} s CPU   (target <= 60 s)")
        print(f"    compression on the corpus: {n_bytes / len(tok.encode(text)):.2f} bytes/token\n")

    enc = gpt2_encoding()
    ref, _, _ = timed(lambda: enc.encode_ordinary(text))
    course, t_load, _ = timed(BPETokenizer.from_gpt2)
    print(f"[2] encoding {n_bytes / 1e6:.2f} MB with GPT-2's merges (from_gpt2() built in {t_load:.1f} s)")
    ids, cold_wall, cold_cpu = timed(lambda: course.encode_ordinary(text))  # empty chunk cache
    assert ids == ref, "course encoder disagrees with tiktoken"
    tik_wall, tik_cpu, warm_wall, warm_cpu = [], [], [], []
    for _ in range(args.repeats):  # interleaved, so both see the same machine load
        _, w, c = timed(lambda: enc.encode_ordinary(text))
        tik_wall.append(w)
        tik_cpu.append(c)
        _, w, c = timed(lambda: course.encode_ordinary(text))
        warm_wall.append(w)
        warm_cpu.append(c)
    mbs = lambda s: n_bytes / s / 1e6
    rows = [("tiktoken gpt2 (Rust, 1 thread)", min(tik_wall), min(tik_cpu)),
            ("course BPETokenizer, cold cache", cold_wall, cold_cpu),
            ("course BPETokenizer, warm cache", min(warm_wall), min(warm_cpu))]
    print(f"    {'encoder':34s} {'MB/s wall':>10s} {'MB/s CPU':>10s} {'ratio (CPU)':>12s}")
    for name, w, c in rows:
        print(f"    {name:34s} {mbs(w):10.2f} {mbs(c):10.2f} {min(tik_cpu) / c:12.2f}")
    print(f"    ids identical to tiktoken: yes ({len(ref):,} tokens, {n_bytes / len(ref):.2f} bytes/token)")
    print("    target: course >= 0.10 x tiktoken")
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
