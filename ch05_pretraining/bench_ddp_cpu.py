"""CPU data-parallel scaling of ``pretrain.py``: tokens/s with 1 and 2 processes (gloo DDP).

Runs the same small model, global batch and data three ways, one after the other:

* 1 process, 1 thread          (``python pretrain.py``, ``OMP_NUM_THREADS=1``)
* 1 process, N threads         (the same cores used by intra-op threads instead)
* N processes x 1 thread, DDP  (``torchrun --nproc_per_node=N``, gloo all-reduce)

and prints the steady-state tokens/s (median over the steps after the first fifth, from
``summary.json``) side by side, with the speed-up over 1 process and the load average.

On a machine shared with other work, wall-clock tokens/s mostly measure how much CPU each
run was given (more processes get a larger share of a busy machine). So the script also
prints **tokens per CPU-second** (each rank's CPU time per step, from ``time.process_time``),
which the load changes much less, and the tokens/s it implies on idle cores
(``tokens per CPU-second x processes x threads``). Their ratio between DDP and 1 process is
the parallel efficiency: what the gloo all-reduce and the duplicated work cost. Usage::

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
            tps, share = summary["tokens_per_s"], summary["rank0_cpu_per_wall_s"]
            per_cpu_s = tps / (nproc * share)  # tokens per CPU-second (all threads of all ranks)
            cores = nproc * int(threads)
            results.append((label, tps, share, per_cpu_s, per_cpu_s * cores))
            print(f"  {label:<40} {tps:>10,.0f} tok/s  (rank 0 used {share:.2f} CPU-s per s)", flush=True)
        base, base_est = results[0][1], results[0][4]
        print(f"\n{args.preset}, global batch {args.batch_size} x T={summary['context_length']}, "
              f"{summary['params'] / 1e6:.2f}M params, {args.steps} steps")
        print(f"{'run':<40} {'tokens/s':>9} {'ratio':>6} {'CPU-s/s':>8} {'tok/CPU-s':>10} {'idle est.':>10} {'ratio':>6}")
        for label, tps, share, per_cpu_s, est in results:
            print(f"{label:<40} {tps:>9,.0f} {tps / base:>5.2f}x {share:>8.2f} {per_cpu_s:>10,.0f} "
                  f"{est:>10,.0f} {est / base_est:>5.2f}x")
        print("ratio: against 1 process x 1 thread. CPU-s/s: CPU seconds rank 0 got per second.\n"
              "idle est. = tok/CPU-s x processes x threads: the rate if every core were free to the run\n"
              "(an upper bound for threads, whose CPU time includes spinning while they wait).")
        print(f"load average after: {load_average()}  (on {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
