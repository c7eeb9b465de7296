"""CPU data-parallel scaling of ``pretrain.py``: tokens/s with 1 and 2 processes (gloo DDP).

Runs the same small model, global batch and data three ways, one after the other:

* 1 process, 1 thread          (``python pretrain.py``, ``OMP_NUM_THREADS=1``)
* 1 process, N threads         (the same cores used by intra-op threads instead)
* N processes x 1 thread, DDP  (``torchrun --nproc_per_node=N``, gloo all-reduce)

and prints the steady-state tokens/s (median over the steps after the first fifth, from
``summary.json``) side by side, with the speed-up over 1 process and the load average, since
other work on the machine changes the figures. Usage::

    python ch05_pretraining/bench_ddp_cpu.py                  # cpu-small model, 2 processes
    python ch05_pretraining/bench_ddp_cpu.py --nproc 4 --steps 40 --preset cpu-medium

Not a test: it only prints figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "ch05_pretraining" / "pretrain.py"
sys.path.insert(0, str(ROOT))


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--preset", default="cpu-small")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=16, help="global batch in sequences")
    args = p.parse_args()

    from shared.data import load_shakespeare, write_token_file
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # UTF-8 bytes of the training plays: a 256-token vocabulary, no tokenizer to train.
        data = write_token_file(tmp / "bytes.npy",
                                np.frombuffer(load_shakespeare("train")[:2_000_000].encode(), np.uint8), 256)
        common = ["--data", str(data), "--vocab-size", "256", "--preset", args.preset, "--profile", "default",
                  "--device", "cpu", "--max-steps", str(args.steps), "--batch-size", str(args.batch_size),
                  "--grad-accum", "1", "--eval-interval", "0", "--checkpoint-interval", "0",
                  "--log-interval", str(args.steps)]
        runs = [("1 process x 1 thread", 1, "1"),
                (f"1 process x {args.nproc} threads", 1, str(args.nproc)),
                (f"{args.nproc} processes x 1 thread (DDP, gloo)", args.nproc, "1")]
        results = []
        print(f"load average before: {load_average()}", flush=True)
        for i, (label, nproc, threads) in enumerate(runs):
            out = tmp / f"run{i}"
            env = {**os.environ, "OMP_NUM_THREADS": threads, "LLM_DEVICE": "cpu"}
            if nproc == 1:
                cmd = [sys.executable, str(SCRIPT), "--out", str(out), *common]
            else:
                cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                       f"--nproc_per_node={nproc}", str(SCRIPT), "--strategy", "ddp", "--out", str(out), *common]
            subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
            summary = json.loads((out / "summary.json").read_text())
            results.append((label, summary["tokens_per_s"]))
            print(f"  {label:<40} {summary['tokens_per_s']:>10,.0f} tok/s", flush=True)
        base = results[0][1]
        print(f"\n{args.preset}, global batch {args.batch_size} x T={summary['context_length']}, "
              f"{summary['params'] / 1e6:.2f}M params, {args.steps} steps")
        print(f"{'run':<40} {'tokens/s':>10} {'vs 1 process':>13}")
        for label, tps in results:
            print(f"{label:<40} {tps:>10,.0f} {tps / base:>12.2f}x")
        print(f"load average after: {load_average()}  (on {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
