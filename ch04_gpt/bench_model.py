"""Forward + backward throughput of the GPT-2 124M model (Chapter 4), with MFU.

Usage::

    python ch04_gpt/bench_model.py                 # CPU part (and the GPU part if CUDA is present)
    python ch04_gpt/bench_model.py --skip-gpu      # CPU only
    python ch04_gpt/bench_model.py --skip-cpu --gpu-batch 16

What is timed: one training step without the optimizer, i.e. ``logits = model(x)``,
cross-entropy against random targets, ``loss.backward()``. Tokens/s = B * T / seconds per step
(median over the timed steps, after warm-up steps that are not counted).

* CPU: float32, a small batch and a short context (default B=1, T=64) so that it finishes in
  well under a minute on a laptop. MFU is not printed: ``shared.hardware`` has no CPU peaks.
* GPU: bf16 autocast at context 1024, eager and then ``torch.compile``. MFU = tokens/s x
  ``model.flops_per_token(T)`` / the dense bf16 peak of the device from
  ``shared.hardware.peak_flops`` (H100 SXM: 989 TFLOP/s).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from shared.hardware import device_name, mfu, peak_flops
from shared.model import GPTConfig, GPTModel


def time_steps(model: GPTModel, batch: int, context: int, device: torch.device, warmup: int, steps: int,
               autocast_dtype: torch.dtype | None = None) -> float:
    """Median seconds of one forward+backward step on random token ids ``[batch, context]``."""
    g = torch.Generator(device="cpu").manual_seed(0)
    V = model.cfg.vocab_size
    x = torch.randint(0, V, (batch, context), generator=g).to(device)
    y = torch.randint(0, V, (batch, context), generator=g).to(device)

    def step() -> None:
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(x)  # [B, T, V]
            loss = F.cross_entropy(logits.float().view(-1, V), y.view(-1))
        loss.backward()
        model.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def report(label: str, model: GPTModel, batch: int, context: int, seconds: float, peak: float | None) -> None:
    tok_s = batch * context / seconds
    fpt = model.flops_per_token(context)
    achieved = tok_s * fpt
    u = mfu(tok_s, fpt, peak)
    mfu_txt = f"MFU {100 * u:5.1f}% of {peak / 1e12:.0f} TFLOP/s" if u is not None else "MFU n/a (no peak known)"
    print(f"{label:<34} B={batch:<3} T={context:<5} {seconds * 1e3:9.1f} ms/step  "
          f"{tok_s:10,.0f} tokens/s  {achieved / 1e12:7.3f} TFLOP/s  {mfu_txt}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="gpt2-small", help="model size (default: gpt2-small, 124M)")
    ap.add_argument("--cpu-batch", type=int, default=1)
    ap.add_argument("--cpu-context", type=int, default=64)
    ap.add_argument("--cpu-steps", type=int, default=3)
    ap.add_argument("--gpu-batch", type=int, default=16)
    ap.add_argument("--gpu-context", type=int, default=1024)
    ap.add_argument("--gpu-steps", type=int, default=20)
    ap.add_argument("--skip-cpu", action="store_true")
    ap.add_argument("--skip-gpu", action="store_true")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile run")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    cfg = GPTConfig.from_preset(args.preset)
    print(f"{args.preset}: {GPTModel.__name__} with {cfg.n_layers} layers, d_model={cfg.d_model}; "
          f"torch {torch.__version__}")
    if hasattr(os, "getloadavg"):
        print("load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))

    if not args.skip_cpu:
        cpu = torch.device("cpu")
        model = GPTModel(cfg).to(cpu).train()
        print(f"\nCPU ({torch.get_num_threads()} threads), float32; N = {model.num_parameters():,} parameters, "
              f"{model.flops_per_token(args.cpu_context) / 1e9:.2f} GFLOP/token at T={args.cpu_context}")
        s = time_steps(model, args.cpu_batch, args.cpu_context, cpu, warmup=1, steps=args.cpu_steps)
        report("cpu fp32 eager", model, args.cpu_batch, args.cpu_context, s, None)
        del model

    if args.skip_gpu:
        return
    if not torch.cuda.is_available():
        print("\nGPU: not measured (no CUDA device here).")
        return
    dev = torch.device("cuda")
    torch.set_float32_matmul_precision("high")  # TF32 for anything left in fp32
    peak = peak_flops(dev, torch.bfloat16)
    print(f"\nGPU: {device_name(dev)}; dense bf16 peak "
          f"{'unknown' if peak is None else f'{peak / 1e12:.0f} TFLOP/s'} (shared.hardware)")
    model = GPTModel(cfg).to(dev).train()
    s = time_steps(model, args.gpu_batch, args.gpu_context, dev, warmup=3, steps=args.gpu_steps,
                   autocast_dtype=torch.bfloat16)
    report("cuda bf16 autocast, eager", model, args.gpu_batch, args.gpu_context, s, peak)
    if not args.no_compile:
        compiled = torch.compile(model)
        s = time_steps(compiled, args.gpu_batch, args.gpu_context, dev, warmup=3, steps=args.gpu_steps,
                       autocast_dtype=torch.bfloat16)
        report("cuda bf16 autocast, torch.compile", model, args.gpu_batch, args.gpu_context, s, peak)
    print(f"peak memory allocated: {torch.cuda.max_memory_allocated(dev) / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
