"""Pretraining a GPT on one device (Chapter 5): loss, learning-rate schedule, optimizer, loop.

The pieces, in the order the notebook builds them::

    loss = cross_entropy_loss(logits, targets)          # nats per token
    lr = lr_at(step, max_lr=..., warmup_steps=..., max_steps=...)
    optimizer = configure_optimizer(model, lr=max_lr)  # AdamW, decay on matrices only
    history = train(model, optimizer, get_batch, TrainConfig(...), eval_batch=...)

``get_batch`` is any function of no arguments that returns ``(x, y)``, two
``LongTensor[B, T]`` (e.g. ``lambda: sample_windows(tokens, B, T)`` from :mod:`shared.data`).

References: Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (AdamW, 2019) and
"SGDR" (cosine schedule, 2017); Goyal et al., "Accurate, Large Minibatch SGD" (warmup, 2017);
Pascanu et al., "On the difficulty of training RNNs" (gradient clipping, 2013); Micikevicius
et al., "Mixed Precision Training" (loss scaling, 2018); Karpathy's nanoGPT ``train.py``.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from shared.hardware import amp_dtype

__all__ = ["cross_entropy_loss", "perplexity", "bits_per_byte", "lr_at", "configure_optimizer",
           "check_finite", "estimate_loss", "autocast_context", "make_grad_scaler",
           "shuffled_batches", "optimizer_step", "TrainConfig", "train_step", "train"]

Batch = tuple[torch.Tensor, torch.Tensor]


def cross_entropy_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean next-token cross-entropy, in nats per token.

    ``loss = -mean_{b,t} log softmax(logits[b, t])[targets[b, t]]`` over the positions whose
    target is not ``ignore_index`` (e.g. padding or prompt tokens in Chapter 7).

    Args:
        logits: ``[B, T, V]`` unnormalised scores (``V = vocab_size``).
        targets: ``[B, T]`` token ids in ``[0, V)`` or ``ignore_index``.

    Returns:
        A scalar tensor (float32 even when ``logits`` are bf16/fp16, for a stable mean).

    Raises:
        ValueError: if the shapes do not match ``[B, T, V]`` and ``[B, T]``, or (checked on
            the CPU; an asynchronous assert on CUDA) a target is outside ``[0, V)`` and is not
            ``ignore_index``.
        TypeError: if ``targets`` are not integer ids.
    """
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(f"expected logits [B, T, V] and targets [B, T], got {tuple(logits.shape)} "
                         f"and {tuple(targets.shape)}")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"targets must be integer token ids (torch.long), got {targets.dtype}")
    _check_targets(targets, logits.size(-1), ignore_index)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=ignore_index)


def _check_targets(targets: torch.Tensor, V: int, ignore_index: int) -> None:
    """Targets must be ids in ``[0, V)`` or ``ignore_index`` (exact on the CPU; no host sync on CUDA)."""
    if targets.numel() == 0 or targets.is_meta or torch.compiler.is_compiling():
        return
    ok = ((targets >= 0) & (targets < V)) | (targets == ignore_index)
    if targets.device.type == "cuda":
        torch._assert_async(ok.all(), f"targets hold ids outside [0, V={V}) that are not ignore_index")
    elif not bool(ok.all()):
        bad = int(targets[~ok][0])
        raise ValueError(f"targets hold id {bad}, outside [0, V={V}) and not ignore_index={ignore_index}")


def perplexity(loss: float) -> float:
    """``exp(loss)``: the effective number of equally likely next tokens (loss in nats/token).

    Raises:
        TypeError: if ``loss`` is not a number. ValueError: if it is negative or NaN.
    """
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        loss = float(loss)
    if isinstance(loss, bool) or not isinstance(loss, (int, float)):
        raise TypeError(f"loss must be a number (nats per token), got {type(loss).__name__}")
    if not loss >= 0:
        raise ValueError(f"loss must be >= 0 nats per token, got {loss}")
    return math.exp(loss)


def bits_per_byte(loss: float, n_tokens: int, n_bytes: int) -> float:
    """Convert a loss in nats/token into bits per UTF-8 byte of text.

    ``bpb = loss * n_tokens / (n_bytes * ln 2)``. Unlike the per-token loss it does not depend
    on the tokenizer, so runs with different vocabularies can be compared.

    Raises:
        ValueError: if ``n_tokens`` or ``n_bytes`` is not positive.
    """
    if n_tokens <= 0 or n_bytes <= 0:
        raise ValueError(f"n_tokens and n_bytes must be positive, got {n_tokens} and {n_bytes}")
    return loss * n_tokens / (n_bytes * math.log(2))


def lr_at(step: int, *, max_lr: float, warmup_steps: int, max_steps: int, min_lr: float = 0.0) -> float:
    """Learning rate at optimizer step ``step`` (0-based): linear warmup, then cosine decay.

    * ``step < warmup_steps``: ``max_lr * (step + 1) / warmup_steps`` (step 0 is not zero,
      so the first update already moves the weights; ``warmup_steps - 1`` gives ``max_lr``);
    * ``warmup_steps <= step <= max_steps``: ``min_lr + (max_lr - min_lr) * 0.5 * (1 + cos(pi * r))``
      with ``r = (step - warmup_steps) / (max_steps - warmup_steps)``, so ``max_lr`` at the
      end of warmup and ``min_lr`` at ``max_steps``;
    * ``step > max_steps``: ``min_lr``.

    Raises:
        ValueError: for a negative step, ``max_lr <= 0``, ``min_lr < 0``, ``warmup_steps < 0``,
            ``max_steps < warmup_steps`` or ``max_steps < 1``.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if not max_lr > 0 or not min_lr >= 0:
        raise ValueError(f"need max_lr > 0 and min_lr >= 0, got max_lr={max_lr}, min_lr={min_lr}")
    if warmup_steps < 0 or max_steps < 1 or max_steps < warmup_steps:
        raise ValueError(f"need 0 <= warmup_steps <= max_steps and max_steps >= 1, "
                         f"got warmup_steps={warmup_steps}, max_steps={max_steps}")
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    ratio = (step - warmup_steps) / (max_steps - warmup_steps)
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * ratio))


def configure_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.1,
                        betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
                        fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW with weight decay on the weight matrices only.

    Two parameter groups: ``params[0]`` (decayed) holds every trainable parameter with
    ``dim >= 2`` that is not an ``nn.Embedding`` weight (attention and MLP matrices);
    ``params[1]`` (``weight_decay=0``) holds biases, LayerNorm scales/shifts and embeddings.
    Decay pulls weights towards 0; for a LayerNorm scale (meant to sit near 1), a bias or an
    embedding row that is rarely seen, that pull is a bias, not a regulariser. A tied
    weight (``lm_head.weight is tok_emb.weight``) is one tensor and appears once, as an
    embedding. Frozen parameters (``requires_grad=False``, Chapter 7) are left out.

    Args:
        fused: use the fused AdamW kernel; ``None`` means "yes when every parameter is on CUDA".

    Raises:
        ValueError: if the model has no trainable parameters, ``lr <= 0`` or ``weight_decay < 0``.
    """
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"lr must be a number > 0, got {lr!r}")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or not weight_decay >= 0:
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay, seen = [], [], set()
    for _, p in model.named_parameters():  # named_parameters() yields a tied tensor once
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 and id(p) not in embedding_ids else no_decay).append(p)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters")
    if fused is None:
        fused = all(p.is_cuda for p in decay + no_decay)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None)


def check_finite(loss: torch.Tensor, step: int) -> None:
    """Stop a run whose loss is NaN or infinite, with a message that says what to try.

    Raises:
        FloatingPointError: ``"loss is nan (not finite) at step 12: ..."``.
        TypeError: if ``loss`` is not a tensor.
    """
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"loss must be a tensor, got {type(loss).__name__}")
    value = float(loss.detach().float().item())
    if not math.isfinite(value):
        raise FloatingPointError(
            f"loss is {value} (not finite) at step {step}: training diverged. Try a lower learning "
            "rate or a longer warmup, gradient clipping (grad_clip=1.0), bf16 instead of fp16 (or a "
            "GradScaler), check the batch for bad token ids, then resume from the last checkpoint.")


def autocast_context(device: torch.device | str) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass on ``device``.

    * CUDA with bf16 support (Ampere or newer): ``torch.autocast("cuda", torch.bfloat16)``:
      bf16 has fp32's exponent range, so no loss scaling is needed.
    * Other CUDA GPUs (e.g. Colab's T4): ``torch.autocast("cuda", torch.float16)``; fp16's
      small range underflows small gradients, so pair it with :func:`make_grad_scaler`.
    * CPU and MPS: ``contextlib.nullcontext()``: plain fp32 (CPU bf16 matmuls are not faster
      on most laptops, and fp32 keeps results exactly reproducible).

    Raises:
        ValueError / TypeError: if ``device`` is not a device (see :func:`_as_device`).
    """
    device = _as_device(device)
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=amp_dtype(device))  # bf16, or fp16 without bf16 support


def make_grad_scaler(device: torch.device | str) -> torch.amp.GradScaler:
    """A ``GradScaler`` that is enabled only where :func:`autocast_context` uses fp16.

    It multiplies the loss by a large factor before ``backward`` so fp16 gradients do not
    underflow, unscales them before clipping, and skips a step whose gradients overflowed.
    Disabled, it is a no-op (``scale(loss) is loss``).

    Raises:
        ValueError / TypeError: if ``device`` is not a device.
    """
    device = _as_device(device)
    enabled = amp_dtype(device) == torch.float16
    return torch.amp.GradScaler("cuda" if device.type == "cuda" else "cpu", enabled=enabled)


def shuffled_batches(n: int, batch_size: int, rng: random.Random) -> Iterator[list[int]]:
    """Indices ``0..n-1`` in batches of ``batch_size``, epoch after shuffled epoch, forever.

    A batch that would run past the end of an epoch is completed from the next, freshly
    shuffled one, so every batch is full and every example is seen once per epoch.

    >>> b = shuffled_batches(3, 2, random.Random(0)); [next(b) for _ in range(3)]
    [[0, 2], [1, 2], [1, 0]]

    Raises:
        ValueError: if ``n`` or ``batch_size`` is below 1.
    """
    if n < 1 or batch_size < 1:  # checked now, not at the first next()
        raise ValueError(f"need n >= 1 and batch_size >= 1, got n={n}, batch_size={batch_size}")

    def batches() -> Iterator[list[int]]:
        order: list[int] = []
        while True:
            if len(order) < batch_size:
                fresh = list(range(n))
                rng.shuffle(fresh)
                order += fresh
            chunk, order = order[:batch_size], order[batch_size:]
            yield chunk
    return batches()


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, params,
                   scaler: torch.amp.GradScaler | None = None,
                   max_norm: float | None = 1.0) -> torch.Tensor | None:
    """The update half of a training step, for loops that run under :func:`autocast_context`:
    zero the gradients, backward the (scaled) ``loss``, unscale, clip, step, update the scale.

    Without a scaler, or with a disabled one (bf16, fp32, the CPU), this is exactly
    ``zero_grad(); loss.backward(); clip_grad_norm_(params, max_norm); optimizer.step()``.
    Under fp16 the scaler skips a step whose gradients overflowed; keep one scaler for the run.

    Args:
        loss: scalar tensor. params: the parameters to clip (the trainable ones).
        max_norm: clip the global gradient norm to this; ``None``: no clipping.

    Returns:
        The gradient norm before clipping (a 0-d tensor on the gradients' device, so the step
        does not wait for the GPU), or ``None`` when ``max_norm`` is ``None``.

    Raises:
        ValueError: if ``loss`` is not a scalar tensor or ``max_norm`` is not positive.
    """
    if not (isinstance(loss, torch.Tensor) and loss.dim() == 0):
        raise ValueError(f"loss must be a scalar tensor (average the batch first), got "
                         f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__}")
    if max_norm is not None and not max_norm > 0:
        raise ValueError(f"max_norm must be positive or None, got {max_norm}")
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # true gradients before clipping (no-op when disabled)
    norm = None if max_norm is None else torch.nn.utils.clip_grad_norm_(params, max_norm)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
    return norm


def _as_device(device) -> torch.device:
    """``torch.device(device)``, with an error that names the argument."""
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a torch.device or a string like 'cuda', got {device!r}")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ValueError(f"device {device!r} is not a device (try 'cpu', 'cuda', 'cuda:0' or 'mps')") from None


def _device_of(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@torch.no_grad()
def estimate_loss(model: nn.Module, get_batch: Callable[[], Batch], eval_iters: int) -> float:
    """Mean loss (nats/token) over ``eval_iters`` batches from ``get_batch``.

    Runs in eval mode (no dropout) without gradients, then puts the model back in the mode it
    was in.

    Raises:
        ValueError: if ``eval_iters < 1``.
    """
    if eval_iters < 1:
        raise ValueError(f"eval_iters must be >= 1, got {eval_iters}")
    was_training = model.training
    model.eval()
    device = _device_of(model)
    total = 0.0
    try:
        for _ in range(eval_iters):
            x, y = get_batch()
            with autocast_context(device):
                total += cross_entropy_loss(model(x.to(device)), y.to(device)).item()
    finally:
        model.train(was_training)
    return total / eval_iters


@dataclass
class TrainConfig:
    """Settings of :func:`train`. Every step is one optimizer update.

    Attributes:
        max_steps: optimizer steps to run (the schedule reaches ``min_lr`` here).
        max_lr, min_lr, warmup_steps: the :func:`lr_at` schedule (``min_lr=None``: ``max_lr / 10``).
        grad_accum_steps: micro-batches per step; each loss is divided by this so that the
            summed gradient is the gradient of the mean loss over the large batch.
        grad_clip: clip the global gradient norm to this (``None``: no clipping).
        eval_interval: evaluate every this many steps (and at the last step); 0 = never.
        eval_iters: batches per evaluation.
        log_interval: print a line every this many steps; 0 = silent.
        checkpoint_path: where to save (atomically); ``None`` = no checkpoints.
        checkpoint_interval: save every this many steps (and at the end); 0 = only at the end.
        resume: continue from ``checkpoint_path`` if it exists (model, optimizer, step, RNG).
        amp: use :func:`autocast_context` (mixed precision on CUDA; no effect on CPU).
    """

    max_steps: int = 1000
    max_lr: float = 1e-3
    min_lr: float | None = None
    warmup_steps: int = 100
    grad_accum_steps: int = 1
    grad_clip: float | None = 1.0
    eval_interval: int = 100
    eval_iters: int = 20
    log_interval: int = 0
    checkpoint_path: str | None = None
    checkpoint_interval: int = 0
    resume: bool = False
    amp: bool = True

    def __post_init__(self) -> None:
        if not self.max_lr > 0 or (self.min_lr is not None and not self.min_lr >= 0):
            raise ValueError(f"need max_lr > 0 and min_lr >= 0 (or None), got max_lr={self.max_lr}, "
                             f"min_lr={self.min_lr}")
        for name in ("eval_interval", "log_interval", "checkpoint_interval"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.eval_iters < 1:
            raise ValueError(f"eval_iters must be >= 1, got {self.eval_iters}")
        if self.max_steps < 1 or self.grad_accum_steps < 1:
            raise ValueError(f"max_steps and grad_accum_steps must be >= 1, got {self.max_steps} "
                             f"and {self.grad_accum_steps}")
        if not 0 <= self.warmup_steps <= self.max_steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} must be in [0, max_steps={self.max_steps}]")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be positive or None, got {self.grad_clip}")

    def lr(self, step: int) -> float:
        """The learning rate at ``step`` under this config's schedule."""
        min_lr = self.max_lr / 10 if self.min_lr is None else self.min_lr
        return lr_at(step, max_lr=self.max_lr, warmup_steps=self.warmup_steps,
                     max_steps=self.max_steps, min_lr=min_lr)


def _check_loop_args(model, optimizer, cfg) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer (e.g. configure_optimizer(model, lr)), "
                        f"got {type(optimizer).__name__}")
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, get_batch: Callable[[], Batch],
               step: int, cfg: TrainConfig, scaler: torch.amp.GradScaler | None = None,
               no_sync: Callable[[], contextlib.AbstractContextManager] | None = None) -> dict:
    """One optimizer step: set the LR, accumulate ``cfg.grad_accum_steps`` micro-batches, clip, update.

    Args:
        scaler: one :func:`make_grad_scaler` kept for the whole run. ``None`` makes a fresh one,
            which is fine where it is disabled (bf16, fp32) but under fp16 (a T4) would forget
            its calibrated loss scale every step, so a training loop must pass its own.
        no_sync: optional context factory used for every micro-batch but the last
            (``DistributedDataParallel.no_sync``), so gradients are all-reduced once per step.

    Returns:
        ``{"loss": mean micro-batch loss, "lr", "grad_norm" (before clipping), "tokens", "seq_len"}``.

    Raises:
        FloatingPointError: from :func:`check_finite` when the step's loss is NaN or inf
            (before the optimizer update, so the weights stay finite).
    """
    _check_loop_args(model, optimizer, cfg)
    device = _device_of(model)
    lr = cfg.lr(step)
    for group in optimizer.param_groups:
        group["lr"] = lr
    scaler = scaler if scaler is not None else make_grad_scaler(device)
    mean_loss, tokens = torch.zeros((), device=device), 0  # on the device: no sync per micro-batch
    for micro in range(cfg.grad_accum_steps):
        x, y = get_batch()
        x, y = x.to(device), y.to(device)
        last = micro == cfg.grad_accum_steps - 1
        sync = contextlib.nullcontext() if (no_sync is None or last) else no_sync()
        with sync:
            with autocast_context(device) if cfg.amp else contextlib.nullcontext():
                loss = cross_entropy_loss(model(x), y) / cfg.grad_accum_steps  # mean over the large batch
            scaler.scale(loss).backward()
        mean_loss += loss.detach()
        tokens += y.numel()
    check_finite(mean_loss, step)  # one host sync per step; a NaN/inf micro-batch makes the sum NaN/inf
    seq_len = y.shape[1]
    scaler.unscale_(optimizer)  # true gradients before measuring/clipping (no-op if disabled)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    max_norm = cfg.grad_clip if cfg.grad_clip is not None else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return {"loss": mean_loss.item(), "lr": lr, "grad_norm": float(grad_norm),
            "tokens": tokens, "seq_len": seq_len}


def train(model: nn.Module, optimizer: torch.optim.Optimizer, get_batch: Callable[[], Batch],
          cfg: TrainConfig, *, eval_batch: Callable[[], Batch] | None = None,
          callback: Callable[[int, dict], None] | None = None) -> dict[str, list]:
    """The single-process training loop used by the Chapter 5 notebook.

    Per step: :func:`train_step` (schedule, accumulation, NaN stop, clipping, AdamW), then
    every ``cfg.eval_interval`` steps (and at the last) the validation loss on
    ``eval_batch`` batches and the training loss on ``get_batch`` batches with
    :func:`estimate_loss`, then a checkpoint every ``cfg.checkpoint_interval`` steps (and at
    the end) if ``cfg.checkpoint_path`` is set. ``callback(step, record)`` is called after
    every step (e.g. to print samples when ``"val_loss" in record``).

    Resume (``cfg.resume``): loads model, optimizer, step, the GradScaler's loss scale (fp16)
    and the Python/NumPy/torch RNG states from ``cfg.checkpoint_path``. A ``get_batch`` that draws from torch's global RNG
    (``sample_windows(..., generator=None)``) then continues with the very batches an
    uninterrupted run would have seen.

    Returns:
        ``history``: ``{"step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu"}`` (one entry
        per step; ``mfu`` is ``None`` where the device's peak is unknown) and ``{"eval_step",
        "train_loss", "val_loss"}`` (one per evaluation; ``val_loss`` is ``None`` without
        ``eval_batch``).

    Raises:
        FloatingPointError: when the loss becomes NaN or inf (see :func:`check_finite`).
    """
    from shared.checkpoint import load_checkpoint, save_checkpoint
    from shared.hardware import mfu, peak_flops

    _check_loop_args(model, optimizer, cfg)

    device = _device_of(model)
    scaler = make_grad_scaler(device)
    history: dict[str, list] = {k: [] for k in ("step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu",
                                                 "eval_step", "train_loss", "val_loss")}
    start = 0
    ckpt_path = Path(cfg.checkpoint_path) if cfg.checkpoint_path else None
    if cfg.resume and ckpt_path is not None and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, model=model, optimizer=optimizer, map_location=device, restore_rng=True)
        start = int(ckpt["step"])
        history.update({k: v for k, v in ckpt.get("extra", {}).get("history", {}).items() if k in history})
        if ckpt.get("extra", {}).get("grad_scaler") and scaler.is_enabled():
            scaler.load_state_dict(ckpt["extra"]["grad_scaler"])  # the fp16 loss scale carries on
    # The dtype autocast_context computes in (bf16 with native support, else fp16), for MFU.
    compute_dtype = amp_dtype(device) if cfg.amp else torch.float32
    peak = peak_flops(device, compute_dtype)
    model.train()

    def save(step_done: int) -> None:
        config = model.cfg.to_dict() if hasattr(model, "cfg") and hasattr(model.cfg, "to_dict") else None
        save_checkpoint(ckpt_path, model=model, optimizer=optimizer, step=step_done, config=config,
                        extra={"train_config": asdict(cfg), "history": history,
                               "grad_scaler": scaler.state_dict()})

    for step in range(start, cfg.max_steps):
        t0 = time.perf_counter()
        out = train_step(model, optimizer, get_batch, step, cfg, scaler=scaler)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        tokens_per_s = out["tokens"] / dt
        record = {"step": step, "loss": out["loss"], "lr": out["lr"], "grad_norm": out["grad_norm"],
                  "tokens_per_s": tokens_per_s, "mfu": None}
        if peak is not None and hasattr(model, "flops_per_token"):
            record["mfu"] = mfu(tokens_per_s, model.flops_per_token(out["seq_len"]), peak)
        for k in ("step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu"):
            history[k].append(record[k])
        last = step == cfg.max_steps - 1
        if cfg.eval_interval and (step % cfg.eval_interval == 0 or last):
            record["train_loss"] = estimate_loss(model, get_batch, cfg.eval_iters)
            record["val_loss"] = estimate_loss(model, eval_batch, cfg.eval_iters) if eval_batch else None
            history["eval_step"].append(step)
            history["train_loss"].append(record["train_loss"])
            history["val_loss"].append(record["val_loss"])
        if cfg.log_interval and (step % cfg.log_interval == 0 or last or "train_loss" in record):
            line = f"step {step:5d} | loss {out['loss']:.3f} | lr {out['lr']:.2e} | norm {out['grad_norm']:.2f}"
            line += f" | {tokens_per_s:,.0f} tok/s"
            if "train_loss" in record:
                line += f" | eval train {record['train_loss']:.3f}"
                if record["val_loss"] is not None:
                    line += f" val {record['val_loss']:.3f}"
            print(line, flush=True)
        if callback is not None:
            callback(step, record)
        if ckpt_path is not None and (last or (cfg.checkpoint_interval and (step + 1) % cfg.checkpoint_interval == 0)):
            save(step + 1)
    return history
