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

It then prints, from the same run, the **quantized** rows (``shared.quantize``: bf16, int8
dequantized on the fly, int8 W8A8 with ``torch._int_mm``, int4 groups of 128 and 32; model bytes,
tokens/s and the ratio to the fp32 cached baseline) and the **speculative** rows
(``shared.speculative``, greedy, so the tokens must equal the baseline's), with a layer-skip
draft: the target's own first ``--draft-layers`` blocks, embeddings and final norm. With random
weights the acceptance rate says nothing about a trained model; the timings do.

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


def quantized_rows(model: GPTModel, idx: torch.Tensor, n: int, device: torch.device) -> None:
    """fp32 cached baseline and its quantized variants, side by side (``n`` greedy tokens each)."""
    import copy

    from shared.quantize import int_mm_available, model_bytes, quantize_model

    fp32 = copy.deepcopy(model).float()
    variants = {"fp32 (baseline)": fp32, "bf16": copy.deepcopy(fp32).to(torch.bfloat16),
                "int8 per channel, dequant": quantize_model(fp32, 8),
                "int4 g128, dequant": quantize_model(fp32, 4, 128), "int4 g32, dequant": quantize_model(fp32, 4, 32)}
    if device.type == "cpu" and int_mm_available():
        variants["int8 W8A8, torch._int_mm"] = quantize_model(fp32, 8, path="int_mm")
    print(f"quantized weights (shared.quantize; the tied embedding stays float32), {n} greedy tokens each:")
    print(f"  {'variant':28s} {'MB':>8s} {'x fp32':>7s} {'tokens/s':>9s} {'x fp32':>7s} {'same tokens':>11s}")
    base_out = base_tps = base_bytes = None
    for name, m in variants.items():
        generate(m, idx, 2)  # warm-up
        out, times = timed_run(m, idx, n, True, device)
        tps, nbytes = n / times[-1], model_bytes(m)
        if base_out is None:
            base_out, base_tps, base_bytes = out, tps, nbytes
        same = float((out[0, idx.size(1):] == base_out[0, idx.size(1):]).float().mean())
        print(f"  {name:28s} {nbytes / 1e6:8.1f} {nbytes / base_bytes:7.2f} {tps:9.2f} {tps / base_tps:7.2f} {same:10.0%}")
    model.float()


def speculative_rows(model: GPTModel, idx: torch.Tensor, n: int, ks: list[int], draft_layers: int | None,
                     t_base: float, base_out: torch.Tensor, device: torch.device) -> None:
    """Greedy speculative decoding with a layer-skip draft, against the cached baseline run."""
    from dataclasses import replace

    from shared.speculative import speculative_generate

    cfg = model.cfg
    if idx.size(1) + n > cfg.context_length:
        print("speculative rows skipped: prompt + n_new exceed the context (speculative decoding does not slide)")
        return
    L = draft_layers or max(1, cfg.n_layers // 4)
    draft = GPTModel(replace(cfg, n_layers=L)).to(device=device, dtype=next(model.parameters()).dtype).eval()
    draft.load_state_dict({k: v for k, v in model.state_dict().items()
                           if not k.startswith("blocks.") or int(k.split(".")[1]) < L}, strict=True)
    generate(draft, idx, 2)
    _, t_draft = timed_run(draft, idx, n, True, device)
    print(f"speculative decoding (greedy; draft = first {L} of {cfg.n_layers} layers, "
          f"{n / t_draft[-1]:.2f} tokens/s alone), {n} tokens:")
    print(f"  {'k':>3s} {'tokens/s':>9s} {'x cached':>9s} {'acceptance':>10s} {'tokens/round':>12s} {'identical':>9s}")
    for k in ks:
        sync(device)
        t0 = time.perf_counter()
        out, st = speculative_generate(model, draft, idx, n, k=k, return_stats=True)
        sync(device)
        dt = time.perf_counter() - t0
        print(f"  {k:3d} {n / dt:9.2f} {t_base / dt:9.2f} {st['acceptance_rate']:10.2f} {st['tokens_per_round']:12.2f} "
              f"{str(torch.equal(out, base_out)):>9s}")


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
    ap.add_argument("--n-quant", type=int, default=64, help="tokens per quantized row (default 64)")
    ap.add_argument("--no-quant", action="store_true", help="skip the quantized rows")
    ap.add_argument("--spec-k", type=int, nargs="*", default=[2, 4], help="draft lengths k (default 2 4)")
    ap.add_argument("--draft-layers", type=int, default=None, help="layers of the draft (default n_layers // 4)")
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
    if not args.no_quant:
        quantized_rows(model, idx, args.n_quant, device)
    if args.spec_k:
        speculative_rows(model, idx, args.n_new, args.spec_k, args.draft_layers, runs[True][1][-1], runs[True][0], device)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"load average at end: {load}")


if __name__ == "__main__":
    main()
