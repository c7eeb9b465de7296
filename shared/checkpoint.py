"""Checkpoints (Chapter 5): save and resume a training run safely.

A checkpoint is one ``torch.save`` file holding a plain dict::

    {"format": "llm-course-checkpoint", "version": 2,
     "model": state_dict, "optimizer": state_dict | None, "step": int,
     "config": GPTConfig.to_dict() | None,
     "rng": {"python": ..., "numpy": ..., "torch": ByteTensor, "cuda": [ByteTensor, ...]},
     "extra": {...plain Python types: scheduler settings, data position, history...},
     "checksum": "sha256:<hex>"}

The **checksum** is a SHA-256 over every key, tensor (dtype, shape and bytes) and value of
the rest of the dict (:func:`payload_checksum`). ``torch.load`` notices a damaged zip, but
not damaged tensor bytes inside an intact one: such a file would resume silently with
garbage weights. :func:`load_checkpoint` recomputes the checksum and refuses a mismatch.
Version-1 files (no checksum) still load.

Everything in it is a tensor or a plain Python type, so it loads with
``torch.load(weights_only=True)``, which refuses to run code hidden in a pickle.

Writes are **atomic**: the file is written to a temporary file in the same directory, flushed
to disk, then renamed over the old one with ``os.replace`` (atomic on POSIX and Windows). A
crash mid-write leaves the previous checkpoint intact, never a half-written file.
"""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["save_checkpoint", "load_checkpoint", "load_model", "rng_state", "set_rng_state", "payload_checksum"]

FORMAT = "llm-course-checkpoint"


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside ``torch.compile`` (``_orig_mod``) or DDP (``module``) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def payload_checksum(state: dict) -> str:
    """``"sha256:<hex>"`` over ``state`` without its ``"checksum"`` key: every key, every
    tensor's dtype, shape and bytes, every other value's ``repr``, in key order. Loading
    gives back equal tensors, so the checksum of a loaded checkpoint equals the saved one.

    Raises:
        TypeError: if ``state`` is not a dict.
    """
    if not isinstance(state, dict):
        raise TypeError(f"state must be a checkpoint dict, got {type(state).__name__}")
    h = hashlib.sha256()

    def feed(value) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            h.update(b"{")
            for k in sorted(value, key=repr):
                h.update(repr(k).encode())
                feed(value[k])
            h.update(b"}")
        elif isinstance(value, (list, tuple)):
            h.update(b"[")
            for v in value:
                feed(v)
            h.update(b"]")
        else:
            h.update(repr(value).encode())

    feed({k: v for k, v in state.items() if k != "checksum"})
    return "sha256:" + h.hexdigest()


def rng_state() -> dict:
    """The Python, NumPy, torch CPU and CUDA random states, as tensors and plain types."""
    py = random.getstate()  # (version, tuple of 625 ints, gauss_next)
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": [py[0], list(py[1]), py[2]],
             "numpy": [str(name), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos),
                       int(has_gauss), float(gauss)],
             "torch": torch.get_rng_state(),
             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    return state


def set_rng_state(state: dict) -> None:
    """Restore states captured by :func:`rng_state` (CUDA only if present on both sides).

    Raises:
        ValueError: if ``state`` is not a dict as :func:`rng_state` returns.
    """
    if not isinstance(state, dict) or not all(k in state for k in ("python", "numpy", "torch")):
        raise ValueError("state must be the dict rng_state() returns (keys python, numpy, torch, cuda)")
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def save_checkpoint(path: str | os.PathLike, *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    step: int = 0, config: dict | None = None, extra: dict | None = None) -> Path:
    """Save a training state atomically and return its path.

    Args:
        path: destination file (parent folders are created).
        model: its ``state_dict()`` is saved (``torch.compile`` and DDP wrappers are removed).
        optimizer: its ``state_dict()`` (AdamW moments and step counts), if given.
        step: the number of optimizer steps done (resume starts here).
        config: the model config; by default ``model.cfg.to_dict()`` when the model has one.
        extra: anything else needed to resume, in plain Python types (scheduler settings, data
            position, loss history, tokenizer file name...).

    Raises:
        ValueError: if ``step`` is negative.
        TypeError: if ``model`` (or ``optimizer``) has no ``state_dict()``.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    for name, obj in (("model", model), ("optimizer", optimizer)):
        if obj is not None and not callable(getattr(obj, "state_dict", None)):
            raise TypeError(f"{name} must have a state_dict() (an nn.Module / optimizer), got {type(obj).__name__}")
    model = _unwrap(model)
    if config is None and hasattr(model, "cfg") and hasattr(model.cfg, "to_dict"):
        config = model.cfg.to_dict()
    state = {"format": FORMAT, "version": 2,
             "model": model.state_dict(),
             "optimizer": optimizer.state_dict() if optimizer is not None else None,
             "step": int(step), "config": config, "rng": rng_state(), "extra": extra or {}}
    state["checksum"] = payload_checksum(state)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; let other users of a shared run folder read it
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the rename makes them visible
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _describe_mismatch(model: nn.Module, state: dict) -> str:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and hasattr(state[k], "shape") and state[k].shape != own[k].shape]
    parts = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", shapes)):
        if keys:
            more = f" (+{len(keys) - 8} more)" if len(keys) > 8 else ""
            parts.append(f"{label}: {', '.join(keys[:8])}{more}")
    return "; ".join(parts)


def _load_weights(model: nn.Module, ckpt: dict, path: Path) -> None:
    target = _unwrap(model)
    problem = _describe_mismatch(target, ckpt["model"])
    if problem:
        raise ValueError(f"checkpoint {path} does not match the model: {problem}. "
                         "Build the model with the checkpoint's config (ckpt['config']).")
    target.load_state_dict(ckpt["model"])


def load_checkpoint(path: str | os.PathLike, *, model: nn.Module | None = None,
                    optimizer: torch.optim.Optimizer | None = None, map_location: str | torch.device = "cpu",
                    restore_rng: bool = False) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` (``torch.load(weights_only=True)``).

    Args:
        model: if given, its weights are replaced (strictly: every key, every shape).
        optimizer: if given, its state is replaced (build it for the same model first).
        restore_rng: also restore the Python/NumPy/torch/CUDA random states, so a resumed run
            draws the same batches and dropout masks as an uninterrupted one.

    Returns:
        The whole checkpoint dict (``step``, ``config``, ``extra``, ``model``, ...).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: ``"... is not a valid checkpoint ..."`` for a corrupt, truncated or foreign
            file, or one whose tensors no longer match the stored checksum (damaged bytes);
            a model mismatch names the missing, unexpected and mis-shaped keys; an optimizer
            requested from a checkpoint saved without one.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # zip errors, EOF, unpickling errors: all mean "not a checkpoint"
        raise ValueError(f"{path} is not a valid checkpoint (corrupt or truncated file?): "
                         f"{type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "model" not in ckpt:
        raise ValueError(f"{path} is not a valid checkpoint: expected a dict with format={FORMAT!r} "
                         "written by shared.checkpoint.save_checkpoint")
    if "checksum" in ckpt and payload_checksum(ckpt) != ckpt["checksum"]:
        raise ValueError(f"{path} is not a valid checkpoint: its contents do not match the checksum "
                         "stored when it was saved (the file was damaged on disk or in transfer). "
                         "Use an earlier checkpoint or start again.")
    if model is not None:
        _load_weights(model, ckpt, path)
    if optimizer is not None:
        if ckpt.get("optimizer") is None:
            raise ValueError(f"checkpoint {path} holds no optimizer state (saved with optimizer=None)")
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as e:
            raise ValueError(f"checkpoint {path}: the optimizer state does not fit this optimizer: {e}") from e
    if restore_rng and ckpt.get("rng"):
        set_rng_state(ckpt["rng"])
    return ckpt


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Build ``GPTModel(GPTConfig(**ckpt["config"]))`` and load the checkpoint's weights.

    Returns the model in eval mode on ``map_location``.

    Raises:
        ValueError: as :func:`load_checkpoint`, or if the checkpoint has no model config.
    """
    from shared.model import GPTConfig, GPTModel

    ckpt = load_checkpoint(path, map_location=map_location)
    if not ckpt.get("config"):
        raise ValueError(f"checkpoint {path} has no model config: save it with config=GPTConfig.to_dict()")
    model = GPTModel(GPTConfig(**ckpt["config"]))
    _load_weights(model, ckpt, Path(path))  # strict key and shape checks
    return model.to(map_location).eval()
