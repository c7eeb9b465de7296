"""Data-parallel training pieces for ``ch05_pretraining/pretrain.py`` (Chapter 5).

The same training step runs on one process, under DistributedDataParallel (DDP) or under
fully sharded data parallelism (FSDP2, ``torch.distributed.fsdp.fully_shard``). This module
holds the parts that differ between those cases, so that ``pretrain.py`` reads like the
single-process loop of ``shared.train``:

* :func:`init_distributed` / :func:`teardown`: join or leave the process group that
  ``torchrun`` describes through environment variables (``RANK``, ``WORLD_SIZE``, ...).
  The backend is ``nccl`` on CUDA and ``gloo`` on the CPU.
* :func:`wrap_model`: DDP, or ``fully_shard`` per transformer block and then on the root.
* :func:`micro_batch_size`, :func:`global_batch_offsets`, :func:`rank_offsets`,
  :func:`read_windows`: how each rank reads its own share of every global batch from one
  memory-mapped token file (``shared.data.open_token_file``).
* :func:`full_state_dicts` / :func:`load_optimizer_state`: full (unsharded) model and
  optimizer state for a rank-0 checkpoint, with ``torch.distributed.checkpoint.state_dict``,
  so that a checkpoint written under one strategy resumes under any other.
* :func:`gather_rng_states` / :func:`set_rng_states`: every rank's RNG, for exact resume.
* :func:`training_memory_bytes`: the DDP-against-FSDP memory arithmetic per GPU.

Sources: PyTorch docs for ``DistributedDataParallel``, ``torch.distributed.fsdp.fully_shard``
(FSDP2) and ``torch.distributed.checkpoint.state_dict``; the ZeRO paper (Rajbhandari et al.,
2020) for the memory arithmetic; nanoGPT's ``train.py`` for the DDP loop.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistInfo", "STRATEGIES", "init_distributed", "teardown", "wrap_model", "unwrap",
           "all_reduce_mean", "same_on_all_ranks", "micro_batch_size", "global_batch_offsets",
           "rank_offsets", "read_windows", "full_state_dicts", "load_optimizer_state",
           "gather_rng_states", "set_rng_states", "training_memory_bytes"]

#: Strategies understood by :func:`wrap_model`. ``"single"`` is a plain module (one process).
STRATEGIES = ("single", "ddp", "fsdp")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    Attributes:
        rank: global rank, ``0 .. world_size - 1`` (0 when not distributed).
        local_rank: rank on this machine; picks the GPU (``cuda:local_rank``).
        world_size: number of processes in the job (1 when not distributed).
        device: the device this process computes on.
        backend: ``"nccl"``, ``"gloo"`` or ``None`` (single process, no process group).
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        """True when a process group is initialised (launched by ``torchrun``)."""
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        """True on global rank 0: the only rank that logs and writes checkpoints."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when ``torchrun`` (``python -m torch.distributed.run``) started this process."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"))


def init_distributed(device: str | torch.device | None = None,
                     timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group when launched by ``torchrun``; otherwise return a one-process info.

    ``torchrun`` sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
    ``MASTER_PORT``; ``init_process_group`` reads them (the ``env://`` method). On CUDA each
    process takes GPU ``LOCAL_RANK`` and talks over NCCL; on the CPU it uses gloo.

    Args:
        device: ``"cuda"``, ``"cpu"`` or ``None`` for automatic (CUDA if available; the
            ``LLM_DEVICE`` variable of ``shared.runtime`` is honoured).
        timeout_s: how long a collective may wait before failing.

    Raises:
        ValueError: if CUDA is requested but this machine has fewer GPUs than ``LOCAL_RANK + 1``.
    """
    if device is None:
        forced = os.environ.get("LLM_DEVICE", "").strip().lower()
        device = forced or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if not launched_by_torchrun():
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", 0)
        return DistInfo(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} "
                             "GPU(s): use --nproc_per_node <= the number of GPUs")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=device,
                    backend=backend)


def teardown(info: DistInfo, barrier: bool = True) -> None:
    """Leave the process group: ``dist.barrier()`` then ``dist.destroy_process_group()``.

    The barrier matters: without it a fast rank can destroy its gloo context while a slow
    rank is still in the last collective, and the process aborts at exit ("terminate
    called without an active exception"; seen in 2 of 40 CPU runs, 0 of 30 with it).
    Pass ``barrier=False`` only when other ranks may be gone (an error on one rank), where a
    barrier would wait for them until the timeout.
    """
    if not info.distributed or not dist.is_initialized():
        return
    if barrier:
        dist.barrier()
    dist.destroy_process_group()


def wrap_model(model: nn.Module, strategy: str, info: DistInfo,
               bf16_params: bool = False) -> nn.Module:
    """Wrap ``model`` (already on ``info.device``) for the data-parallel ``strategy``.

    * ``"single"``: returned unchanged (one process).
    * ``"ddp"``: :class:`torch.nn.parallel.DistributedDataParallel`. Every rank keeps a full
      copy of the weights, gradients and optimizer state; the gradients are all-reduced
      (averaged) during ``backward``, bucket by bucket, overlapping with the computation.
      DDP broadcasts rank 0's weights at construction, so all replicas start equal.
    * ``"fsdp"``: FSDP2. ``fully_shard`` is applied to each ``model.blocks[i]`` and then to the
      root (which then holds the embeddings, final norm and tied LM head). Each parameter
      becomes a ``DTensor`` split along dim 0 across the ranks; a block's full weights are
      all-gathered just before its forward (and again before its backward) and freed after,
      and its gradients are reduce-scattered (averaged), so each rank keeps only 1/world_size
      of the weights, gradients and optimizer state. ``fully_shard`` shards the weights the
      module already has, so every rank must build it with the same seed (or load the same
      checkpoint) before calling this. The model is modified in place.

    Gradient accumulation: DDP skips its all-reduce on every micro-step but the last
    (``model.no_sync()``, passed to ``shared.train.train_step``), so gradients are summed
    locally and reduced once per step. FSDP reduce-scatters on every micro-step instead:
    skipping it (``set_requires_gradient_sync(False)``) would keep *unsharded* gradients
    between micro-steps, giving back the memory FSDP is used to save. The result is the
    same, since the reduction is linear.

    Args:
        bf16_params: FSDP only: all-gather and compute with bf16 weights while gradients are
            reduced in fp32 (``MixedPrecisionPolicy``). Halves the all-gather traffic; the
            sharded fp32 master weights are what the optimizer updates.

    Raises:
        ValueError: for an unknown strategy, or ``"ddp"``/``"fsdp"`` without a process group.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy == "single":
        return model
    if not info.distributed:
        raise ValueError(f"strategy {strategy!r} needs a process group: launch with torchrun")
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP
        ids = [info.device.index] if info.device.type == "cuda" else None
        return DDP(model, device_ids=ids)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mesh = init_device_mesh(info.device.type, (info.world_size,))
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
          if bf16_params else MixedPrecisionPolicy())
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError("fsdp expects a model with a .blocks ModuleList (shared.model.GPTModel)")
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DDP wrapper (FSDP2 and single-process models are returned as is)."""
    return model.module if hasattr(model, "no_sync") and hasattr(model, "module") else model


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean of ``value`` over all ranks (a copy; ``value`` itself is left unchanged).

    Every rank gets the same result, so a decision taken on it (e.g. stopping on a NaN
    loss) is taken by all ranks together, and none is left waiting in a collective.
    """
    out = value.detach().clone().float()
    if info.distributed:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= info.world_size
    return out


def same_on_all_ranks(value: int, info: DistInfo) -> bool:
    """True when every rank passes the same integer (e.g. the step it would resume from).

    A cheap guard before the first real collective: if ranks disagree (say, only rank 0 can
    see the checkpoint because ``--out`` is not on a shared filesystem), they would call
    different collectives and hang instead of failing.
    """
    if not info.distributed:
        return True
    device = info.device if info.backend == "nccl" else torch.device("cpu")
    t = torch.tensor([value, -value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t[0]) == value == -int(t[1])


# --------------------------------------------------------------------------------------
# Data: every rank reads its own share of each global batch from one token file
# --------------------------------------------------------------------------------------

def micro_batch_size(batch_size: int, world_size: int, grad_accum: int) -> int:
    """Sequences per rank per micro-step: ``batch_size / (world_size * grad_accum)``.

    ``batch_size`` is the *global* batch in sequences: the number of windows whose mean loss
    one optimizer step follows, whatever the number of processes.

    Raises:
        ValueError: if a value is below 1 or ``batch_size`` is not a multiple of
            ``world_size * grad_accum``.
    """
    for name, v in (("batch_size", batch_size), ("world_size", world_size), ("grad_accum", grad_accum)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    per = world_size * grad_accum
    if batch_size % per:
        lo = max(per, batch_size - batch_size % per)
        raise ValueError(f"--batch-size {batch_size} (global, in sequences) must be a multiple of "
                         f"world_size x --grad-accum = {world_size} x {grad_accum} = {per}; "
                         f"try --batch-size {lo} or {lo + per if lo <= batch_size else per * 2}")
    return batch_size // per


def global_batch_offsets(n_tokens: int, context_length: int, batch_size: int, seed: int,
                         step: int, stream: int = 0) -> np.ndarray:
    """Start offsets of the ``batch_size`` windows of global batch ``step``: int64 ``[batch_size]``.

    The offsets are drawn uniformly from ``[0, n_tokens - context_length - 1]`` by a NumPy
    generator seeded with ``(seed, stream, step)``. So they depend only on the step, not on the
    rank, the world size or what ran before: resuming at step ``s`` needs no saved sampler
    state (the data position *is* the step), and a run on 1 process and a run on 8 see the
    same global batches. ``stream`` separates independent streams (0: train, 1: validation).

    Raises:
        ValueError: if the file holds fewer than ``context_length + 1`` tokens.
    """
    if n_tokens < context_length + 1:
        raise ValueError(f"the token file holds {n_tokens} tokens, fewer than context_length + 1 = "
                         f"{context_length + 1}")
    rng = np.random.default_rng([int(seed), int(stream), int(step)])
    return rng.integers(0, n_tokens - context_length, size=batch_size, dtype=np.int64)


def rank_offsets(offsets: np.ndarray, info: DistInfo, grad_accum: int) -> list[np.ndarray]:
    """This rank's micro-batches of one global batch: ``grad_accum`` arrays of offsets.

    Rank ``r`` takes the contiguous slice ``offsets[r * B/W : (r + 1) * B/W]`` and cuts it into
    ``grad_accum`` equal micro-batches, in order. So the union over ranks and micro-steps is
    exactly the global batch, and one process (``W = 1``) reads the same windows: the mean
    loss, hence the gradient, is the same whatever ``W`` and ``grad_accum`` are (up to
    floating-point summation order).
    """
    mine = np.array_split(offsets, info.world_size)[info.rank]
    micro = micro_batch_size(len(offsets), info.world_size, grad_accum)
    return [mine[k * micro:(k + 1) * micro] for k in range(grad_accum)]


def read_windows(tokens: np.ndarray, offsets: np.ndarray, context_length: int,
                 device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Read the windows starting at ``offsets`` from a (memory-mapped) token array.

    Returns:
        ``(x, y)``, both ``LongTensor[len(offsets), context_length]``; ``y`` is ``x`` shifted
        left by one token. Only these ``len(offsets) * (context_length + 1)`` tokens are read
        from disk, so each rank touches only its own windows of the file.

    Raises:
        ValueError: if an offset leaves no room for ``context_length + 1`` tokens.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets.size and (offsets.min() < 0 or offsets.max() + context_length + 1 > len(tokens)):
        raise ValueError(f"window offsets must lie in [0, {len(tokens) - context_length - 1}]")
    batch = np.stack([np.asarray(tokens[o:o + context_length + 1], dtype=np.int64) for o in offsets.tolist()])
    xy = torch.from_numpy(batch)
    if device is not None and torch.device(device).type == "cuda":
        xy = xy.pin_memory().to(device, non_blocking=True)
    elif device is not None:
        xy = xy.to(device)
    return xy[:, :-1], xy[:, 1:]


# --------------------------------------------------------------------------------------
# Checkpoint state: full state dicts on rank 0, whatever the strategy
# --------------------------------------------------------------------------------------

def full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer,
                     info: DistInfo) -> tuple[dict, dict]:
    """Full (unsharded, CPU) model and optimizer state dicts, for a rank-0 checkpoint.

    Uses ``torch.distributed.checkpoint.state_dict.get_model_state_dict`` and
    ``get_optimizer_state_dict`` with ``full_state_dict=True, cpu_offload=True``: under FSDP
    the shards are all-gathered, one tensor at a time, to rank 0's CPU memory, and the other
    ranks get empty dicts. It is a collective: **every rank must call it**. Model keys are
    the plain ``GPTModel`` names (no ``module.`` prefix from DDP), and the optimizer state is
    keyed by parameter name rather than by position, so a checkpoint written with one
    strategy loads with any other.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )
    if not info.distributed:
        opts = StateDictOptions(full_state_dict=True)
    else:
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_sd = get_model_state_dict(model, options=opts)
    optim_sd = get_optimizer_state_dict(model, optimizer, options=opts)
    if not info.distributed:  # cpu_offload without a process group is not needed: copy to CPU here
        model_sd = {k: v.detach().cpu() for k, v in model_sd.items()}
        optim_sd = _to_cpu(optim_sd)
    return model_sd, optim_sd


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a full, name-keyed optimizer state (from :func:`full_state_dicts`) into ``optimizer``.

    ``set_optimizer_state_dict(..., full_state_dict=True)`` re-shards it for FSDP. Every rank
    passes the full dict (each read the checkpoint). Collective under FSDP.

    Raises:
        ValueError: if the state does not fit the optimizer (e.g. another model).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    try:
        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
    except (KeyError, RuntimeError) as e:
        raise ValueError(f"the checkpoint's optimizer state does not fit this model/optimizer: {e}") from e


def gather_rng_states(info: DistInfo) -> list[dict] | None:
    """Every rank's torch RNG states (CPU, and CUDA where used), gathered on rank 0.

    Returns a list indexed by rank of ``{"cpu": list[int], "cuda": list[int] | None}``
    (plain Python ints, so ``torch.load(weights_only=True)`` reads them) on rank 0, and
    ``None`` elsewhere. Collective: every rank must call it. Ranks draw different dropout
    masks, so each one's state must be saved for an exact resume.
    """
    mine = {"cpu": torch.get_rng_state().tolist(),
            "cuda": (torch.cuda.get_rng_state(info.device).tolist()
                     if info.device.type == "cuda" else None)}
    if not info.distributed:
        return [mine]
    out = [None] * info.world_size if info.is_main else None
    dist.gather_object(mine, out, dst=0)
    return out


def set_rng_states(states: list[dict] | None, info: DistInfo) -> bool:
    """Restore this rank's RNG from :func:`gather_rng_states`' list. Returns ``False`` (and
    changes nothing) when the list was saved with another world size."""
    if not states or len(states) != info.world_size:
        return False
    mine = states[info.rank]
    torch.set_rng_state(torch.tensor(mine["cpu"], dtype=torch.uint8))
    if info.device.type == "cuda" and mine.get("cuda") is not None:
        torch.cuda.set_rng_state(torch.tensor(mine["cuda"], dtype=torch.uint8), info.device)
    return True


def training_memory_bytes(n_params: int, strategy: str, world_size: int = 1,
                          param_bytes: int = 4, grad_bytes: int = 4,
                          optimizer_bytes: int = 8) -> dict[str, float]:
    """Bytes per GPU for weights, gradients and AdamW state (activations not included).

    Mixed-precision training with fp32 master weights keeps, per parameter: 4 bytes of
    weights, 4 of gradients and 8 of AdamW moments (``exp_avg`` and ``exp_avg_sq``), 16 in
    all. DDP keeps all of it on every GPU; FSDP (ZeRO stage 3) divides all three by
    ``world_size``, and needs the unsharded weights of one block at a time on top (ignored here).

    Returns:
        ``{"params": .., "grads": .., "optimizer": .., "total": ..}`` in bytes.

    Example::

        >>> round(training_memory_bytes(124_000_000, "ddp")["total"] / 2**30, 2)   # GPT-2 small
        1.85
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    shard = world_size if strategy == "fsdp" else 1
    out = {"params": n_params * param_bytes / shard, "grads": n_params * grad_bytes / shard,
           "optimizer": n_params * optimizer_bytes / shard}
    out["total"] = sum(out.values())
    return out
