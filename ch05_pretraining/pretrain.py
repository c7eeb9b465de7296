"""Pretrain the course GPT on one process, or on many GPUs and machines with ``torchrun``.

One process (CPU, one GPU, or a Mac)::

    python ch05_pretraining/pretrain.py --out runs/one --profile smoke

Many processes on one machine (DDP or FSDP2; gloo on the CPU, NCCL on GPUs)::

    torchrun --standalone --nproc_per_node=2 ch05_pretraining/pretrain.py \\
        --strategy ddp --out runs/ddp --max-steps 200 --batch-size 32 --grad-accum 2

Tensor parallelism (Megatron-LM, ``shared.parallel``; every block split over the processes,
which all read the same batch; Chapter 5b)::

    torchrun --standalone --nproc_per_node=2 ch05_pretraining/pretrain.py \
        --strategy tp --out runs/tp --max-steps 200 --batch-size 32

Many machines: see ``ch05_pretraining/MULTINODE.md`` (torchrun rendezvous).

What it does, step by step (Chapter 5 explains each piece):

* **Data.** Without ``--data`` it trains a course BPE tokenizer on the Shakespeare training
  plays, tokenises train and validation plays once and caches them as memory-mapped token
  files in ``OUT/data/`` (``shared.data.write_token_file``). With ``--data FILE.npy`` it uses
  your token file (the last 10% is held out for validation unless ``--val-data`` is given).
* **Sharding.** ``--batch-size`` is the *global* batch in sequences. Every optimizer step
  draws its ``batch_size`` window offsets from one generator seeded with ``(seed, step)``;
  rank ``r`` of ``W`` reads only its contiguous slice of them (``B / W`` windows), cut into
  ``--grad-accum`` micro-batches (``shared.distributed.rank_offsets``). So every rank reads
  its own part of the file, the union over ranks is the same global batch whatever ``W`` is
  (1 process and 8 GPUs train on the same data), and the data position is just the step.
* **Step.** ``shared.train.train_step``, the very function of the notebook: learning-rate
  schedule (warmup + cosine), gradient accumulation (the loss divided by the number of
  micro-steps; DDP all-reduces only on the last one, ``no_sync`` before), clipping, AdamW
  with decay on matrices only, mixed precision (bf16 autocast on CUDA), NaN/inf stop.
* **Output.** Only rank 0 prints and writes: ``OUT/metrics.jsonl`` (one JSON object per logged
  step: ``step``, ``loss``, ``lr``, ``grad_norm``, ``tokens_per_s``, ``mfu`` where the GPU's peak
  is known, and ``val_loss`` / ``val_bpb`` when evaluated) and ``OUT/ckpt.pt`` (atomic, with
  full unsharded weights and optimizer state, so it resumes under any strategy).
* **Memory and spikes.** ``--activation-checkpointing`` recomputes each block in backward
  (less activation memory for about one more forward; Chapter 5b measures it).
  ``--spike-factor F`` watches for a loss above ``F`` x the mean of the last
  ``--spike-warmup`` losses: the run then rewinds to ``OUT/ckpt.pt`` and skips the batches it
  had read since (the PaLM recipe, Chowdhery et al. 2022, section 5.1), with a log line and a
  ``"rewind_to"`` record in ``metrics.jsonl``.
* **Documents.** The Shakespeare token files hold one play per document, each followed by
  ``<|endoftext|>`` (its id is ``eot_id`` in ``OUT/data/*.json``).
* **Resume.** ``--resume`` restores weights, optimizer, step, every rank's RNG state and the
  data position from ``OUT/ckpt.pt``; the following losses equal an uninterrupted run's.
  Finished work is never replaced unasked: an ``OUT`` that already holds a run needs
  ``--resume`` (continue it) or ``--overwrite`` (start again). A checkpoint whose bytes were
  damaged fails its checksum (``shared.checkpoint``) instead of resuming with garbage.

Exit status: 0 on success; 1 with a one-line ``pretrain.py: error: ...`` on bad arguments, an
``OUT`` that holds a run already, a corrupt or mismatched checkpoint, a NaN/inf loss, or a
lost worker (the message says to restart with ``--resume``); 130 when interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

# Runnable as a script from anywhere in the repository (torchrun runs files, not modules).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from shared.distributed import (  # noqa: E402
    DistInfo,
    all_reduce_mean,
    full_state_dicts,
    gather_rng_states,
    global_batch_offsets,
    init_distributed,
    launched_by_torchrun,
    load_optimizer_state,
    micro_batch_size,
    rank_offsets,
    read_windows,
    same_on_all_ranks,
    set_rng_states,
    teardown,
    unwrap,
    wrap_model,
)
from shared.model import PRESETS as GPT2_PRESETS  # noqa: E402
from shared.hardware import amp_dtype as autocast_dtype  # noqa: E402
from shared.model import GPTConfig, GPTModel  # noqa: E402

#: Model sizes. The GPT-2 sizes use GPT-2's context (1024); the course sizes are for CPUs.
PRESETS: dict[str, dict] = {
    "tiny": dict(d_model=32, n_heads=2, n_layers=2, context_length=32),          # tests, smoke
    "cpu-small": dict(d_model=128, n_heads=4, n_layers=4, context_length=128),   # a laptop
    "cpu-medium": dict(d_model=256, n_heads=8, n_layers=6, context_length=256),  # a patient laptop
    **{name: dict(**sizes, context_length=1024) for name, sizes in GPT2_PRESETS.items()},
}

#: Defaults per ``--profile`` (and device) for every flag left unset on the command line.
PROFILE_DEFAULTS = {
    "smoke": dict(preset="tiny", max_steps=20, batch_size=8, grad_accum=1, eval_interval=10,
                  eval_iters=2, checkpoint_interval=10, vocab_size=512, lr=3e-3),
    "default-cpu": dict(preset="cpu-small", max_steps=600, batch_size=32, grad_accum=1,
                        eval_interval=100, eval_iters=10, checkpoint_interval=100, vocab_size=1024, lr=2e-3),
    "default-cuda": dict(preset="gpt2-small", max_steps=2000, batch_size=64, grad_accum=1,
                         eval_interval=200, eval_iters=20, checkpoint_interval=500, vocab_size=4096, lr=6e-4),
}

CKPT_NAME, METRICS_NAME = "ckpt.pt", "metrics.jsonl"


class CLIError(ValueError):
    """A problem with the command line or the run directory, reported as one line."""


class _Parser(argparse.ArgumentParser):
    """Under ``torchrun`` every rank parses the command line: only rank 0 prints help, usage
    and argument errors (the others exit just the same, silently)."""

    def _print_message(self, message, file=None):
        if os.environ.get("RANK", "0") == "0":
            super()._print_message(message, file)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="pretrain.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Flags left unset take their value from --profile (see PROFILE_DEFAULTS in the source).")
    run = p.add_argument_group("run")
    run.add_argument("--out", required=True, type=Path, help="run directory (metrics.jsonl, ckpt.pt, data/)")
    run.add_argument("--strategy", choices=("ddp", "fsdp", "tp"), default="ddp",
                     help="under torchrun: data parallelism (ddp, fsdp) or Megatron tensor parallelism "
                          "(tp: every block split over all processes, which all read the same batch); "
                          "ignored for a single process")
    run.add_argument("--resume", action="store_true",
                     help="continue from OUT/ckpt.pt if it exists (else start at step 0)")
    run.add_argument("--overwrite", action="store_true",
                     help="start again in an OUT that already holds a run, replacing its metrics and checkpoint")
    run.add_argument("--profile", choices=("smoke", "default"), default=None,
                     help="size defaults; default: LLM_PROFILE / shared.runtime.PROFILE")
    run.add_argument("--device", choices=("cpu", "cuda"), default=None,
                     help="default: cuda if available (cpu under the smoke profile)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--max-steps", type=int, default=None, help="optimizer steps")
    run.add_argument("--batch-size", type=int, default=None,
                     help="GLOBAL batch in sequences, split over processes x --grad-accum micro-steps")
    run.add_argument("--grad-accum", type=int, default=None, help="micro-steps per optimizer step")
    run.add_argument("--eval-interval", type=int, default=None, help="evaluate every N steps (0: never)")
    run.add_argument("--eval-iters", type=int, default=None, help="validation batches per evaluation")
    run.add_argument("--checkpoint-interval", type=int, default=None,
                     help="checkpoint every N steps and at the end (0: only at the end)")
    run.add_argument("--log-interval", type=int, default=1, help="log every N steps (and the last)")
    run.add_argument("--compile", action="store_true", help="torch.compile the model (GPUs; slow start)")
    run.add_argument("--activation-checkpointing", action="store_true",
                     help="recompute each block's activations in backward (torch.utils.checkpoint): "
                          "less memory, about one more forward of compute")
    run.add_argument("--spike-factor", type=float, default=0.0,
                     help="loss-spike guard: when a step's loss exceeds this many times the running "
                          "mean of recent losses, rewind to OUT/ckpt.pt and skip the batches since (0: off)")
    run.add_argument("--spike-warmup", type=int, default=20,
                     help="steps before the loss-spike guard starts watching")
    opt = p.add_argument_group("optimizer")
    opt.add_argument("--lr", type=float, default=None, help="peak learning rate")
    opt.add_argument("--min-lr", type=float, default=None, help="final learning rate (default lr/10)")
    opt.add_argument("--warmup-steps", type=int, default=None, help="default: max_steps/10, at most 200")
    opt.add_argument("--weight-decay", type=float, default=0.1)
    opt.add_argument("--grad-clip", type=float, default=1.0, help="clip the global gradient norm (0: off)")
    model = p.add_argument_group("model (a preset, then any size flag overrides it)")
    model.add_argument("--preset", choices=sorted(PRESETS), default=None)
    model.add_argument("--d-model", type=int, default=None)
    model.add_argument("--n-layers", type=int, default=None)
    model.add_argument("--n-heads", type=int, default=None)
    model.add_argument("--context-length", type=int, default=None)
    model.add_argument("--dropout", type=float, default=0.0)
    data = p.add_argument_group("data")
    data.add_argument("--data", type=Path, default=None,
                      help="training token file (.npy from shared.data.write_token_file); "
                           "default: tokenise the Shakespeare plays into OUT/data/")
    data.add_argument("--val-data", type=Path, default=None,
                      help="validation token file (default: the last 10%% of --data)")
    data.add_argument("--tokenizer", choices=("course", "gpt2"), default="course",
                      help="without --data: a course BPE trained here, or GPT-2's 50257-token BPE")
    data.add_argument("--vocab-size", type=int, default=None,
                      help="model vocabulary (course BPE: also its size); >= the largest id + 1")
    # Hidden switches for the tests (tests/test_pretrain.py).
    p.add_argument("--debug-inject-nan-at", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--debug-inject-spike-at", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--debug-hang-after", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--debug-exit-after", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--debug-kill-after", type=int, default=None, help=argparse.SUPPRESS)  # last rank SIGKILLs itself
    return p


def check_out_dir(args: argparse.Namespace) -> None:
    """Refuse an ``--out`` that cannot be a directory, or one holding a run that neither
    ``--resume`` nor ``--overwrite`` was given for (raises :class:`CLIError`)."""
    out = args.out
    for parent in (out, *out.parents):
        if parent.exists():
            if not parent.is_dir():
                raise CLIError(f"--out {out}: {parent} is a file, not a directory; choose another --out")
            break
    if args.resume and args.overwrite:
        raise CLIError("--resume continues the run in --out and --overwrite replaces it: give one of them")
    ckpt, metrics = out / CKPT_NAME, out / METRICS_NAME
    if args.resume or args.overwrite or not (ckpt.exists() or metrics.exists()):
        return
    what = []
    if metrics.exists():
        steps = [json.loads(line).get("step", -1) for line in metrics.read_text().splitlines() if line.strip()]
        if steps:
            what.append(f"metrics up to step {max(steps)}")
    if ckpt.exists():
        what.append(f"a checkpoint {ckpt.name}")
    raise CLIError(f"--out {out} already holds a run ({' and '.join(what) or 'an empty metrics file'}). "
                   "Add --resume to continue it (raise --max-steps to train further), --overwrite to "
                   "start again and replace it, or choose another --out.")


def resolve_args(args: argparse.Namespace, device: torch.device) -> argparse.Namespace:
    """Fill unset flags from the profile and check the values (raises :class:`CLIError`)."""
    key = "smoke" if args.profile == "smoke" else f"default-{'cuda' if device.type == 'cuda' else 'cpu'}"
    for name, value in PROFILE_DEFAULTS[key].items():
        if name == "vocab_size" and args.data is not None:
            continue  # inferred from the token file
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    for name in ("max_steps", "batch_size", "grad_accum", "eval_iters", "log_interval"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("eval_interval", "checkpoint_interval"):
        if getattr(args, name) < 0:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.lr <= 0:
        raise CLIError(f"--lr must be positive, got {args.lr}")
    if args.spike_factor != 0 and not args.spike_factor > 1:
        raise CLIError(f"--spike-factor must be 0 (off) or > 1, got {args.spike_factor}")
    if args.spike_warmup < 1:
        raise CLIError(f"--spike-warmup must be >= 1, got {args.spike_warmup}")
    if args.min_lr is None:
        args.min_lr = args.lr / 10
    if args.warmup_steps is None:
        args.warmup_steps = min(200, max(1, args.max_steps // 10))
    if not 0 <= args.warmup_steps <= args.max_steps:
        raise CLIError(f"--warmup-steps {args.warmup_steps} must be in [0, --max-steps {args.max_steps}]")
    return args


def model_config(args: argparse.Namespace, vocab_size: int) -> GPTConfig:
    sizes = dict(PRESETS[args.preset])
    for name in ("d_model", "n_layers", "n_heads", "context_length"):
        if getattr(args, name) is not None:
            sizes[name] = getattr(args, name)
    try:
        return GPTConfig(vocab_size=vocab_size, dropout=args.dropout,
                         qkv_bias=args.preset.startswith("gpt2"), **sizes)
    except ValueError as e:
        raise CLIError(f"bad model size: {e}") from None


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------

def prepare_shakespeare(out: Path, tokenizer: str, vocab_size: int, smoke: bool) -> tuple[Path, Path, dict]:
    """Tokenise the Shakespeare plays once into ``out/data`` (cached; atomic writes).

    Every play is one document, and the token files hold the plays separated by the
    ``<|endoftext|>`` id (``meta["eot_id"]``), so a model learns where a play ends and
    ``shared.generate`` can stop there; a training window may still cross a boundary.

    Returns ``(train_file, val_file, meta)``; ``meta["val_bytes_per_token"]`` converts a loss
    in nats/token into bits per byte.
    """
    from shared.data import VAL_PLAYS, load_shakespeare, shakespeare_plays, write_token_file
    name = ("gpt2" if tokenizer == "gpt2" else f"bpe{vocab_size}") + ("-smoke" if smoke else "") + "-docs"
    folder = out / "data"
    train_f, val_f, meta_f = folder / f"train_{name}.npy", folder / f"val_{name}.npy", folder / f"{name}.json"
    if train_f.exists() and val_f.exists() and meta_f.exists():
        return train_f, val_f, json.loads(meta_f.read_text())
    plays = shakespeare_plays()
    train_docs = [p.text for p in plays if p.slug not in VAL_PLAYS]
    val_docs = [p.text for p in plays if p.slug in VAL_PLAYS]
    if smoke:  # a slice of the plays keeps the smoke run to seconds
        train_docs = _first_chars(train_docs, 600_000)
    train_text = load_shakespeare("train")
    if tokenizer == "gpt2":
        from shared.tokenizer import gpt2_encoding
        enc = gpt2_encoding()
        encode, n_vocab, tok_file, eot = enc.encode_ordinary, enc.n_vocab, None, enc.eot_token
    else:
        from shared.tokenizer import ENDOFTEXT, BPETokenizer
        tok = BPETokenizer.train(train_text[:1_000_000] if not smoke else train_text[:200_000], vocab_size)
        tok_file = folder / f"{name}_tokenizer.json"
        folder.mkdir(parents=True, exist_ok=True)
        tok.save(tok_file)
        encode, n_vocab, eot = tok.encode, tok.vocab_size, tok.special_tokens[ENDOFTEXT]
    train_ids, val_ids = encode_documents(train_docs, encode, eot), encode_documents(val_docs, encode, eot)
    write_token_file(train_f, train_ids, n_vocab)
    write_token_file(val_f, val_ids, n_vocab)
    # Bytes of the validation text, one separator byte per boundary (as "\n".join would have).
    val_bytes = sum(len(d.encode("utf-8")) for d in val_docs) + len(val_docs) - 1
    meta = {"tokenizer": tokenizer, "vocab_size": int(n_vocab), "tokenizer_file": tok_file.name if tok_file else None,
            "train_tokens": len(train_ids), "val_tokens": len(val_ids), "eot_id": int(eot),
            "train_documents": len(train_docs), "val_documents": len(val_docs),
            "val_bytes_per_token": val_bytes / len(val_ids)}
    _atomic_write_text(meta_f, json.dumps(meta, indent=1))
    return train_f, val_f, meta


def _first_chars(docs: list[str], n_chars: int) -> list[str]:
    """The leading documents holding ``n_chars`` characters in all (the last one cut)."""
    out, left = [], n_chars
    for d in docs:
        if left <= 0:
            break
        out.append(d[:left])
        left -= len(d)
    return out


def encode_documents(docs: list[str], encode, eot_id: int) -> np.ndarray:
    """Token ids of ``docs``, each followed by ``eot_id`` (``<|endoftext|>``): ``d0 EOT d1 EOT ...``.

    Each document is encoded on its own, so no BPE merge crosses a boundary, and the separator
    is a token the text cannot produce (GPT-2's data format). The joining is
    ``shared.packing.join_documents`` (Chapter 2b).

    Example::

        >>> encode_documents(["ab", "c"], lambda s: [ord(ch) for ch in s], 0).tolist()
        [97, 98, 0, 99, 0]

    Raises:
        ValueError: if ``docs`` is empty; ValueError/TypeError from ``join_documents`` for a bad ``eot_id``.
    """
    from shared.packing import join_documents
    if not docs:
        raise ValueError("docs must hold at least one document")
    return join_documents([encode(d) for d in docs], eot_id)


def load_data(args: argparse.Namespace, info: DistInfo) -> tuple[np.ndarray, np.ndarray, int, dict]:
    """Memory-map the train and validation token files. Returns ``(train, val, vocab_size, meta)``."""
    from shared.data import open_token_file
    meta: dict = {}
    if args.data is None:
        # One process per machine (LOCAL_RANK 0) tokenises; the files are deterministic and
        # written atomically, so this is also safe when OUT is on a filesystem shared by nodes.
        if info.local_rank == 0:
            prepare_shakespeare(args.out, args.tokenizer, args.vocab_size, args.profile == "smoke")
        if info.distributed:
            torch.distributed.barrier()
        train_f, val_f, meta = prepare_shakespeare(args.out, args.tokenizer, args.vocab_size,
                                                   args.profile == "smoke")
        train, val = open_token_file(train_f), open_token_file(val_f)
        vocab_size = max(args.vocab_size, meta["vocab_size"]) if args.tokenizer == "gpt2" else meta["vocab_size"]
    else:
        if not args.data.exists():
            raise CLIError(f"--data {args.data} does not exist")
        train = open_token_file(args.data)
        if args.val_data is not None:
            val = open_token_file(args.val_data)
        else:
            n_val = max(len(train) // 10, 1)
            train, val = train[:-n_val], train[-n_val:]
        vocab_size = args.vocab_size
        if vocab_size is None or len(train) + len(val) <= 200_000_000:  # a full scan takes seconds
            largest = int(max(train.max(), val.max()))
            vocab_size = largest + 1 if vocab_size is None else vocab_size
            if vocab_size <= largest:
                raise CLIError(f"--vocab-size {vocab_size} is too small: the data holds token id {largest}")
    return train, val, vocab_size, meta


# --------------------------------------------------------------------------------------
# Files written by rank 0
# --------------------------------------------------------------------------------------

def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def truncate_metrics(path: Path, start_step: int, keep_rewinds: bool = False) -> None:
    """Keep only the records of steps before ``start_step`` (a resumed run rewrites the rest);
    ``keep_rewinds``: keep the loss-spike records (``"rewind_to"``) too."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines()
            if line.strip() and (json.loads(line).get("step", -1) < start_step
                                 or (keep_rewinds and "rewind_to" in json.loads(line)))]
    _atomic_write_text(path, "".join(line + "\n" for line in keep))


class _StateDict:
    """Hands an already-gathered full state dict to ``shared.checkpoint.save_checkpoint``."""

    def __init__(self, state: dict):
        self._state = state

    def state_dict(self) -> dict:
        return self._state


def save_run_checkpoint(path: Path, model, optimizer, step_done: int, cfg: GPTConfig,
                        args: argparse.Namespace, info: DistInfo, data_shift: int = 0, scaler=None) -> None:
    """Gather full state on rank 0 and write ``path`` atomically. Collective: all ranks call it.

    ``scaler``: the run's GradScaler; its state (the fp16 loss scale) is saved so that a resumed
    fp16 run continues with the same scale. Every rank's scaler is the same (the gradients it
    checks for inf/NaN are all-reduced)."""
    from shared.checkpoint import save_checkpoint
    if getattr(args, "strategy", None) == "tp" and info.distributed:
        from shared.parallel import tp_full_state_dicts
        model_sd, optim_sd = tp_full_state_dicts(model, optimizer)
    else:
        model_sd, optim_sd = full_state_dicts(model, optimizer, info)
    rngs = gather_rng_states(info)
    if info.is_main:
        extra = {"data": {"scheme": "global_batch_offsets", "seed": args.seed, "next_step": step_done,
                          "shift": data_shift},
                 "run": {"strategy": args.strategy if info.distributed else "single",
                         "world_size": info.world_size, "batch_size": args.batch_size,
                         "grad_accum": args.grad_accum, "max_steps": args.max_steps, "lr": args.lr,
                         "min_lr": args.min_lr, "warmup_steps": args.warmup_steps},
                 "rng_per_rank": rngs, "optimizer_format": "full_fqn",
                 "grad_scaler": scaler.state_dict() if scaler is not None else {}}
        save_checkpoint(path, model=_StateDict(model_sd), optimizer=_StateDict(optim_sd),
                        step=step_done, config=cfg.to_dict(), extra=extra)


def load_run_checkpoint(path: Path, model: GPTModel, cfg: GPTConfig) -> dict:
    """Read ``path`` (every rank), check it fits ``cfg`` and load the weights into ``model``.

    Raises:
        ValueError: for a corrupt or truncated file, or a checkpoint of another model.
    """
    from shared.checkpoint import load_checkpoint
    ckpt = load_checkpoint(path)  # validates the file; raises ValueError when corrupt
    saved = ckpt.get("config") or {}
    diffs = [f"{k}={saved.get(k)!r} (this run: {v!r})" for k, v in cfg.to_dict().items()
             if k != "dropout" and saved.get(k) != v]
    if diffs:
        raise ValueError(f"checkpoint {path} was written for another model: {', '.join(diffs)}. "
                         "Use the same model flags, or another --out.")
    if ckpt.get("extra", {}).get("optimizer_format") != "full_fqn":
        raise ValueError(f"checkpoint {path} was not written by pretrain.py (no full optimizer state)")
    try:
        model.load_state_dict(ckpt["model"])  # strict: every key, every shape
    except RuntimeError as e:
        raise ValueError(f"checkpoint {path} does not match the model: {e}") from None
    return ckpt


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------

def _fresh_model(cfg: GPTConfig) -> GPTModel:
    """A plain model to read a checkpoint into (FSDP's sharded model loads from its state dict)."""
    return GPTModel(cfg)


def run(args: argparse.Namespace, info: DistInfo) -> int:
    from shared.checkpoint import set_rng_state
    from shared.hardware import device_name, mfu, peak_flops
    from shared.train import TrainConfig, configure_optimizer, estimate_loss, make_grad_scaler, train_step

    check_out_dir(args)
    args = resolve_args(args, info.device)
    strategy = args.strategy if info.distributed else "single"
    # Tensor parallelism splits the model, not the batch: every rank reads the whole batch.
    data_info = DistInfo(device=info.device) if strategy == "tp" else info
    micro = micro_batch_size(args.batch_size, data_info.world_size, args.grad_accum)
    device = info.device
    # The dtype train_step's autocast computes in: bf16 with bf16 tensor cores, fp16 on older
    # GPUs such as a T4 (shared.hardware.has_native_bf16), fp32 off CUDA.
    amp_dtype = autocast_dtype(device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        if amp_dtype == torch.float16 and strategy == "fsdp":
            raise CLIError("--strategy fsdp here needs bf16 (an Ampere or newer GPU); use ddp on this GPU")
    log = print if info.is_main else (lambda *a, **k: None)

    train_tokens, val_tokens, vocab_size, meta = load_data(args, info)
    cfg = model_config(args, vocab_size)
    T = cfg.context_length
    for name, arr in (("training", train_tokens), ("validation", val_tokens)):
        if len(arr) < T + 1:
            raise CLIError(f"the {name} tokens ({len(arr)}) are fewer than context_length + 1 = {T + 1}")

    # Same seed on every rank: identical initial weights (FSDP shards what each rank built).
    torch.manual_seed(args.seed)
    model = GPTModel(cfg)
    ckpt_path, metrics_path = args.out / CKPT_NAME, args.out / METRICS_NAME
    ckpt = None
    if args.resume and ckpt_path.exists():
        ckpt = load_run_checkpoint(ckpt_path, model, cfg)
    elif args.resume:
        log(f"--resume: no checkpoint at {ckpt_path}, starting at step 0")
    if not same_on_all_ranks(int(ckpt["step"]) if ckpt is not None else -1, info):
        raise ValueError(f"the ranks disagree about {ckpt_path} (some see another checkpoint or none): "
                         "--out must be on a filesystem that every node shares")
    model.to(device)
    model.activation_checkpointing = args.activation_checkpointing  # survives DDP/FSDP wrapping
    if args.compile:
        for block in model.blocks if strategy == "fsdp" else [model]:
            block.compile()  # in place: state-dict names are unchanged
    if strategy == "tp":
        from shared.parallel import tensor_parallel_model
        try:
            model = tensor_parallel_model(model)  # in place: this rank keeps its shards
        except ValueError as e:
            raise CLIError(f"--strategy tp: {e}") from None
    else:
        model = wrap_model(model, strategy, info,
                           bf16_params=(strategy == "fsdp" and amp_dtype == torch.bfloat16))
    # DDP: the optimizer and checkpoints see the plain module (same tensors, no "module." prefix).
    # FSDP: the sharded module itself (its parameters are DTensors).
    core = unwrap(model)
    optimizer = configure_optimizer(core, lr=args.lr, weight_decay=args.weight_decay)
    tcfg = TrainConfig(max_steps=args.max_steps, max_lr=args.lr, min_lr=args.min_lr,
                       warmup_steps=args.warmup_steps, grad_accum_steps=args.grad_accum,
                       # TP clips the global norm in an optimizer pre-hook (below), not per rank
                       grad_clip=None if strategy == "tp" else (args.grad_clip or None),
                       eval_interval=args.eval_interval,
                       eval_iters=args.eval_iters, amp=True)

    start, resumed_shift = 0, 0
    # One loss scaler for the whole run (enabled only under fp16, e.g. a T4): its scale adapts
    # over steps, so a fresh one per step would restart at 2**16 every time. Checkpoints keep it.
    scaler = make_grad_scaler(device)
    if ckpt is not None:
        if ckpt["extra"].get("grad_scaler") and scaler.is_enabled():
            scaler.load_state_dict(ckpt["extra"]["grad_scaler"])
        resumed_shift = int(ckpt["extra"].get("data", {}).get("shift", 0))
        if strategy == "tp":
            from shared.parallel import tp_load_full_state
            tp_load_full_state(core, optimizer, None, ckpt["optimizer"])  # weights were loaded before sharding
        else:
            load_optimizer_state(core, optimizer, ckpt["optimizer"])
        start = int(ckpt["step"])
        saved_run = ckpt["extra"].get("run", {})
        for k in ("batch_size", "grad_accum", "max_steps", "lr"):
            if k in saved_run and saved_run[k] != getattr(args, k):
                log(f"note: resuming with --{k.replace('_', '-')} {getattr(args, k)} "
                    f"(the checkpoint used {saved_run[k]})")
        if ckpt["extra"].get("data", {}).get("seed") != args.seed:
            log(f"note: resuming with --seed {args.seed}: the data order differs from the original run")
        set_rng_state(ckpt["rng"])  # Python / NumPy / torch of rank 0 ...
        if not set_rng_states(ckpt["extra"].get("rng_per_rank"), info):  # ... then each rank's own
            torch.manual_seed(args.seed + 1000 * info.rank + start)
            log("note: the checkpoint was written with another world size: RNG streams re-seeded")
        log(f"resumed from {ckpt_path} at step {start}")
        if start >= args.max_steps:
            log(f"note: the run is already finished (step {start} >= --max-steps {args.max_steps}); "
                "raise --max-steps to train further")
        del ckpt
    if info.is_main:
        args.out.mkdir(parents=True, exist_ok=True)
        if start == 0:
            metrics_path.unlink(missing_ok=True)
        else:
            truncate_metrics(metrics_path, start)

    tp_norm = {}
    if strategy == "tp":
        from shared.parallel import tp_clip_grad_norm_

        def clip_global(_opt, _args, _kwargs):  # before every AdamW update: the norm over all shards
            tp_norm["value"] = tp_clip_grad_norm_(core, args.grad_clip or None)
        optimizer.register_step_pre_hook(clip_global)
    if strategy == "tp":  # the sharded model counts only this rank's shards: count the full model
        from shared.parallel import gpt_num_parameters
        n_params = gpt_num_parameters(cfg)
        # = GPTModel.flops_per_token: 6 x (non-embedding + LM head) + 12 L T d
        flops_per_token = 6.0 * (n_params - cfg.context_length * cfg.d_model) + 12.0 * cfg.n_layers * T * cfg.d_model
    else:
        n_params = core.num_parameters()  # a GPTModel (FSDP2 keeps its methods; DTensor numel is global)
        flops_per_token = core.flops_per_token(T)
    peak = peak_flops(device, amp_dtype) if device.type == "cuda" else None
    log(f"pretrain.py: {strategy} x {info.world_size} ({info.backend or 'no process group'}) on "
        f"{device_name(device)} | {n_params / 1e6:.2f}M params, d_model={cfg.d_model} n_layers={cfg.n_layers} "
        f"T={T} vocab={cfg.vocab_size} | global batch {args.batch_size} seqs = {info.world_size} ranks x "
        f"{args.grad_accum} micro-steps x {micro} | {len(train_tokens):,} train tokens | "
        f"amp={str(amp_dtype).removeprefix('torch.')}"
        + (" | activation checkpointing" if args.activation_checkpointing else ""))

    if args.debug_inject_nan_at is not None and info.is_main:
        def nan_hook(_module, _inputs, output):  # poison rank 0's logits at one step
            return output * float("nan") if current_step == args.debug_inject_nan_at and core.training else output
        unwrap(model).final_norm.register_forward_hook(nan_hook)
    if args.debug_inject_spike_at is not None:
        def spike_hook(_module, _inputs, output):  # sharp logits at one step: a loss spike on every rank
            if current_step == args.debug_inject_spike_at and core.training and not spiked_once:
                return output * 50.0
            return output
        unwrap(model).final_norm.register_forward_hook(spike_hook)
    spiked_once = False

    def eval_batches(i: int):
        """Validation batch ``i``: ``micro`` windows per rank, the same at every evaluation (stream 1)."""
        offs = global_batch_offsets(len(val_tokens), T, micro * data_info.world_size, args.seed, i, stream=1)
        return read_windows(val_tokens, np.array_split(offs, data_info.world_size)[data_info.rank], T, device)

    def evaluate() -> float:
        it = iter(range(args.eval_iters))
        local = estimate_loss(model if strategy == "fsdp" else core,
                              lambda: eval_batches(next(it)), args.eval_iters)
        return float(all_reduce_mean(torch.tensor(local, device=device), info))

    no_sync = model.no_sync if strategy == "ddp" else None
    model.train()
    recent: list[tuple[float, float]] = []  # (tokens/s, rank-0 CPU seconds per wall second)
    t_last, cpu_last = time.perf_counter(), time.process_time()
    current_step = start
    data_shift = int(resumed_shift)  # batches skipped after loss spikes: step s reads batch s + shift
    loss_history: list[float] = []
    step = start - 1
    while step + 1 < args.max_steps:
        step += 1
        current_step = step
        offsets = global_batch_offsets(len(train_tokens), T, args.batch_size, args.seed, step + data_shift)
        micro_batches = iter(rank_offsets(offsets, data_info, args.grad_accum))
        out = train_step(model, optimizer, lambda mb=micro_batches: read_windows(train_tokens, next(mb), T, device),
                         step, tcfg, scaler=scaler, no_sync=no_sync)
        loss = float(all_reduce_mean(torch.tensor(out["loss"], device=device), info))
        # Loss-spike guard: every rank sees the same all-reduced loss, so all rewind together.
        if args.spike_factor and len(loss_history) >= args.spike_warmup:
            recent_mean = float(np.mean(loss_history[-args.spike_warmup:]))
            if loss > args.spike_factor * recent_mean:
                spiked_once = True
                if not ckpt_path.exists():
                    log(f"loss spike at step {step}: loss {loss:.4f} > {args.spike_factor:g} x recent mean "
                        f"{recent_mean:.4f}; no checkpoint to rewind to yet, continuing")
                else:
                    back = load_run_checkpoint(ckpt_path, core if strategy not in ("fsdp", "tp")
                                               else _fresh_model(cfg), cfg)
                    if strategy == "fsdp":
                        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
                        set_model_state_dict(model, back["model"], options=StateDictOptions(full_state_dict=True))
                    if strategy == "tp":
                        from shared.parallel import tp_load_full_state
                        tp_load_full_state(core, optimizer, back["model"], back["optimizer"])
                    else:
                        load_optimizer_state(core, optimizer, back["optimizer"])
                    if back["extra"].get("grad_scaler") and scaler.is_enabled():
                        scaler.load_state_dict(back["extra"]["grad_scaler"])
                    ckpt_step = int(back["step"])
                    data_shift += step + 1 - ckpt_step  # never replay the batches that led to the spike
                    log(f"loss spike at step {step}: loss {loss:.4f} > {args.spike_factor:g} x recent mean "
                        f"{recent_mean:.4f}; rewound to the checkpoint of step {ckpt_step}, skipping "
                        f"{step + 1 - ckpt_step} batch(es) (data shift now {data_shift})")
                    if info.is_main:
                        with open(metrics_path, "a") as f:
                            f.write(json.dumps({"step": step, "loss": loss, "rewind_to": ckpt_step,
                                                "data_shift": data_shift}) + "\n")
                        truncate_metrics(metrics_path, ckpt_step, keep_rewinds=True)
                    loss_history = loss_history[:max(0, len(loss_history) - (step - ckpt_step))]
                    del back
                    step = ckpt_step - 1
                    t_last, cpu_last = time.perf_counter(), time.process_time()
                    continue
        loss_history.append(loss)
        if device.type == "cuda":
            torch.cuda.synchronize()
        last = step == args.max_steps - 1
        now = time.perf_counter()
        dt, t_last = now - t_last, now
        cpu_now = time.process_time()
        cpu_dt, cpu_last = cpu_now - cpu_last, cpu_now
        tokens_per_s = args.batch_size * T / dt
        recent.append((tokens_per_s, cpu_dt / dt))
        if "value" in tp_norm:
            out["grad_norm"] = tp_norm["value"]
        record = {"step": step, "loss": loss, "lr": out["lr"], "grad_norm": out["grad_norm"],
                  "tokens_per_s": tokens_per_s}
        m = mfu(tokens_per_s / info.world_size, flops_per_token, peak)
        if m is not None:
            record["mfu"] = m
        if args.eval_interval and (step % args.eval_interval == 0 or last):
            record["val_loss"] = evaluate()
            if meta.get("val_bytes_per_token"):
                record["val_bpb"] = record["val_loss"] / (meta["val_bytes_per_token"] * math.log(2))
            t_last, cpu_last = time.perf_counter(), time.process_time()  # evaluation is not training
        if info.is_main and (step % args.log_interval == 0 or last or "val_loss" in record):
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            line = (f"step {step:5d}/{args.max_steps} | loss {loss:.4f} | lr {out['lr']:.2e} | "
                    f"norm {out['grad_norm']:.2f} | {tokens_per_s:,.0f} tok/s")
            if "mfu" in record:
                line += f" | MFU {100 * record['mfu']:.1f}%"
            if "val_loss" in record:
                line += f" | val {record['val_loss']:.4f}"
            print(line, flush=True)
        stop_early = args.debug_exit_after is not None and step + 1 >= args.debug_exit_after
        if last or stop_early or (args.checkpoint_interval and (step + 1) % args.checkpoint_interval == 0):
            save_run_checkpoint(ckpt_path, model if strategy == "fsdp" else core, optimizer, step + 1, cfg, args,
                                info, data_shift=data_shift, scaler=scaler)
            t_last, cpu_last = time.perf_counter(), time.process_time()
        if stop_early:
            break
        if args.debug_kill_after is not None and step + 1 >= args.debug_kill_after \
                and info.rank == info.world_size - 1 and info.distributed:
            os.kill(os.getpid(), signal.SIGKILL)  # a worker lost mid-run, for the tests
        if args.debug_hang_after is not None and step + 1 >= args.debug_hang_after:
            while True:  # a hung job, for the tests to SIGKILL mid-run
                time.sleep(1)

    if recent and info.is_main:
        steady = recent[min(len(recent) - 1, max(1, len(recent) // 5)):]  # skip warm-up / compile steps
        tps = float(np.median([r[0] for r in steady]))
        cpu_share = float(np.median([r[1] for r in steady]))
        summary = {"strategy": strategy, "world_size": info.world_size, "device": device_name(device),
                   "params": n_params, "context_length": T, "global_batch": args.batch_size,
                   "tokens_per_s": tps, "tokens_per_s_per_process": tps / info.world_size,
                   "mfu": mfu(tps / info.world_size, flops_per_token, peak), "compile": args.compile,
                   "amp": str(amp_dtype).removeprefix("torch."),
                   # CPU seconds rank 0 used per wall second (1.0 = one busy core; less when
                   # waiting for communication, data or other programs on a loaded machine)
                   "rank0_cpu_per_wall_s": cpu_share}
        _atomic_write_text(args.out / "summary.json", json.dumps(summary, indent=1))
        line = f"throughput (median of the last {len(steady)} steps): {tps:,.0f} tok/s"
        if summary["mfu"] is not None:
            line += f", MFU {100 * summary['mfu']:.1f}% of {device_name(device)} {amp_dtype} peak"
        print(line, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.profile is None:
        from shared.runtime import PROFILE
        args.profile = PROFILE
    try:
        info = init_distributed(args.device or ("cpu" if args.profile == "smoke" else None))
    except ValueError as e:
        print(f"pretrain.py: error: {e}", file=sys.stderr)
        return 1
    if not launched_by_torchrun():
        print("pretrain.py: not launched by torchrun: a single process (--strategy is ignored)", flush=True)
    elif threading_main():
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        code = run(args, info)
    except (ValueError, FloatingPointError, FileNotFoundError) as e:
        # Every rank meets these errors together (same arguments, same checkpoint file, a
        # loss all-reduced...), except a NaN caught on one rank before the all-reduce: so
        # leave without the barrier, which could wait for a rank that is gone.
        if info.is_main or isinstance(e, FloatingPointError):  # a NaN may show on one rank only
            where = f" (rank {info.rank})" if info.distributed else ""
            print(f"pretrain.py: error{where}: {e}", file=sys.stderr, flush=True)
        teardown(info, barrier=False)
        return 1
    except KeyboardInterrupt:
        print(f"pretrain.py: interrupted. {_resume_hint(args)}", file=sys.stderr, flush=True)
        teardown(info, barrier=False)
        return 130
    except (RuntimeError, _Terminated) as e:
        if info.distributed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # torchrun's SIGTERM may follow: just exit
        if not info.distributed or isinstance(e, torch.OutOfMemoryError):
            teardown(info, barrier=False)
            raise
        # A collective failed or torchrun stopped us: almost always another worker died (killed,
        # out of memory, a lost node). Say so in one line, not gloo's/NCCL's traceback.
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        print(f"pretrain.py: error (rank {info.rank}): lost contact with the other processes ({first}). "
              f"A worker probably died or was killed. {_resume_hint(args)}", file=sys.stderr, flush=True)
        teardown(info, barrier=False)
        return 1
    except BaseException:
        teardown(info, barrier=False)
        raise
    teardown(info)  # barrier, then destroy the process group
    if info.distributed:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return code


class _Terminated(Exception):
    """SIGTERM: torchrun stops the surviving workers when one of them fails."""


def _on_sigterm(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # once: a second SIGTERM just ends the process
    raise _Terminated("stopped by SIGTERM from the launcher")


def _resume_hint(args: argparse.Namespace) -> str:
    ckpt = args.out / CKPT_NAME
    if ckpt.exists():
        return (f"The last checkpoint is {ckpt}: run the same command again with --resume to continue "
                "from it.")
    return "No checkpoint was written yet: run the same command again to start over."


def threading_main() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
