"""Benchmark: tokens/s of greedy generation with and without the KV cache (Chapter 6).

Generates ``--n-new`` tokens (default 512) from a short prompt with a randomly initialised
model of the GPT-2 124M shape (``--preset gpt2-small``; random weights are as slow as real
ones). It prints tokens/s with and without :class:`shared.attention.KVCache`, the speedup,
the running tokens/s at several generated lengths, and, where ``transformers`` is
installed, Hugging Face ``generate`` on the same weights (converted with
``shared.weights.save_hf``), whose greedy tokens must equal ours.

On a GPU the cache is pre-allocated, so each decode step is one fixed-size write plus one
small attention; ``--compile`` additionally wraps the model's forward in ``torch.compile``
(``dynamic=True``, one graph for every cache length), and ``--dtype bfloat16`` halves the
bytes read per token.

Usage::

    python ch06_generation/bench_generate.py                     # 512 tokens, CPU or GPU
    python ch06_generation/bench_generate.py --n-new 128 --no-hf # quicker on a slow CPU
    python ch06_generation/bench_generate.py --device cuda --dtype bfloat16 --compile
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from shared.generate import generate, generate_tokens
from shared.hardware import device_name
from shared.model import GPTConfig, GPTModel


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_run(model, idx, n_new: int, use_cache: bool, device: torch.device) -> tuple[torch.Tensor, list[float]]:
    """Greedy-generate ``n_new`` tokens; returns the ids and the elapsed seconds after each token."""
    sync(device)
    t0 = time.perf_counter()
    times, new = [], []
    for nxt, _ in generate_tokens(model, idx, n_new, use_cache=use_cache):
        new.append(nxt)
        sync(device)
        times.append(time.perf_counter() - t0)
    return torch.cat([idx, torch.stack(new, 1)], 1), times


def hf_tokens_per_s(model: GPTModel, idx: torch.Tensor, n_new: int, device: torch.device,
                    dtype: torch.dtype) -> tuple[float, torch.Tensor] | None:
    """HF ``generate`` (greedy, its own KV cache) on the same weights, or None without transformers."""
    try:
        import transformers
    except ImportError:
        return None
    from shared.weights import save_hf

    with tempfile.TemporaryDirectory() as d:
        save_hf(model.float().cpu(), d)
        hf = transformers.GPT2LMHeadModel.from_pretrained(d, torch_dtype=dtype).to(device).eval()
    model.to(device=device, dtype=dtype)
    kw = dict(max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, pad_token_id=0,
              attention_mask=torch.ones_like(idx))
    with torch.no_grad():
        hf.generate(idx, **(kw | dict(max_new_tokens=4, min_new_tokens=4)))  # warm-up
        sync(device)
        t0 = time.perf_counter()
        out = hf.generate(idx, **kw)
        sync(device)
    return n_new / (time.perf_counter() - t0), out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-new", type=int, default=512, help="tokens to generate (default 512)")
    ap.add_argument("--prompt-len", type=int, default=8)
    ap.add_argument("--preset", default="gpt2-small")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--compile", action="store_true", help="torch.compile the forward (dynamic shapes)")
    ap.add_argument("--no-uncached", action="store_true", help="skip the slow run without the cache")
    ap.add_argument("--no-hf", action="store_true", help="skip the Hugging Face comparison")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    cfg = GPTConfig.from_preset(args.preset)
    if args.prompt_len + args.n_new > cfg.context_length:
        print(f"note: {args.prompt_len} + {args.n_new} tokens exceed the context ({cfg.context_length}); "
              "past it every step re-prefills the window")
    model = GPTModel(cfg).to(device=device, dtype=dtype).eval()
    if args.compile:
        model.hidden_states = torch.compile(model.hidden_states, dynamic=True)
    idx = torch.randint(0, cfg.vocab_size, (1, args.prompt_len), device=device)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"{args.preset} ({model.num_parameters() / 1e6:.0f}M params, random weights) on "
          f"{device_name(device)}, {args.dtype}, torch {torch.__version__}, threads={torch.get_num_threads()}")
    print(f"prompt {args.prompt_len} tokens, {args.n_new} new tokens, greedy; load average at start: {load}")

    generate(model, idx, 4)  # warm-up (and compilation)
    runs = {}
    for use_cache in ([True] if args.no_uncached else [True, False]):
        out, times = timed_run(model, idx, args.n_new, use_cache, device)
        runs[use_cache] = (out, times)
        name = "with KV cache   " if use_cache else "without KV cache"
        print(f"{name}: {args.n_new / times[-1]:8.2f} tokens/s  ({times[-1]:.1f} s)")
    if False in runs:
        same = torch.equal(runs[True][0], runs[False][0])
        print(f"speedup: {runs[False][1][-1] / runs[True][1][-1]:.1f}x   identical tokens: {same}")
    print("running tokens/s at generated length n:")
    marks = sorted({m for m in (16, 32, 64, 128, 256, 512, 1024, args.n_new) if m <= args.n_new})
    for m in marks:
        row = "  ".join(f"{'cache' if uc else 'no cache'} {m / t[m - 1]:8.2f}" for uc, (_, t) in runs.items())
        print(f"  n={m:5d}: {row} tokens/s")

    if not args.no_hf:
        res = hf_tokens_per_s(model, idx, args.n_new, device, dtype)
        if res is None:
            print("transformers not installed: skipping the Hugging Face comparison")
        else:
            tps, hf_out = res
            same = torch.equal(hf_out.cpu(), runs[True][0].cpu())
            print(f"HF generate (its KV cache): {tps:8.2f} tokens/s   identical greedy tokens: {same}")
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"load average at end: {load}")


if __name__ == "__main__":
    main()
