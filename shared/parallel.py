"""Model parallelism (Chapter 5b): tensor parallelism, pipeline parallelism and a planner.

Data parallelism (``shared.distributed``: DDP, FSDP2) copies the model and splits the batch.
Model parallelism splits the model itself:

* **Tensor parallelism** (Megatron-LM; Shoeybi et al., 2019, section 3 and figure 3). A
  linear layer ``Y = X W^T`` is split over ``W`` processes either by output features
  (:class:`ColumnParallelLinear`: each rank computes a slice of ``Y``) or by input features
  (:class:`RowParallelLinear`: each rank computes a partial sum of ``Y``, all-reduced). An
  MLP is column-then-row, so the ``[B, T, 4C]`` hidden never leaves its rank and one
  all-reduce per MLP suffices; attention splits by heads the same way. Two conjugate
  autograd ops carry the communication: ``f`` (identity forward, all-reduce backward) in
  front of a column-parallel layer and ``g`` (all-reduce forward, identity backward) after a
  row-parallel one. :func:`tensor_parallel_block` applies this to a course GPT block.
* **Pipeline parallelism** (GPipe; Huang et al., 2019). :func:`pipeline_stages` cuts a
  ``GPTModel`` into consecutive stages; :func:`gpipe_step` runs one stage per process with
  the batch cut into ``m`` micro-batches: all forwards, then all backwards. A stage idles
  while the pipeline fills and drains: the *bubble*, a fraction ``(p - 1) / (m + p - 1)`` of
  the step for ``p`` stages (:func:`bubble_fraction`).
* **A planner** (:func:`plan`): memory per GPU and an estimated step time for DDP, ZeRO
  stages 1-3 (Rajbhandari et al., 2020), TP, PP and TP x DP.

Every collective here takes a ``group`` (``None``: the default group of every process).
The reference implementation read for the layer and op structure is Megatron-LM's
``megatron/core/tensor_parallel/{layers,mappings}.py``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["ColumnParallelLinear", "RowParallelLinear", "tensor_parallel_block", "tensor_parallel_model",
           "tp_comm_bytes_per_layer", "COMM_STATS", "tp_shard_specs", "tp_full_state_dicts",
           "tp_load_full_state", "tp_clip_grad_norm_", "PipelineStage", "pipeline_stages", "gpipe_step",
           "bubble_fraction", "gpipe_schedule", "zero_bytes_per_param", "activation_bytes_per_layer",
           "plan", "PlanRow", "gpt_num_parameters"]

#: Elements moved by the tensor-parallel ops in this process (for tests and the notebook):
#: ``{"all_reduce_calls": int, "all_reduce_elements": int}``. Reset with ``COMM_STATS.update(...)``.
COMM_STATS = {"all_reduce_calls": 0, "all_reduce_elements": 0}


def _world(group) -> tuple[int, int]:
    """``(rank, world_size)`` in ``group``; ``(0, 1)`` without a process group."""
    if not dist.is_available() or not dist.is_initialized():
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def _all_reduce(x: torch.Tensor, group) -> torch.Tensor:
    _, world = _world(group)
    if world == 1:
        return x
    x = x.contiguous()
    dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
    COMM_STATS["all_reduce_calls"] += 1
    COMM_STATS["all_reduce_elements"] += x.numel()
    return x


# --------------------------------------------------------------------------------------
# The conjugate communication ops f and g (Megatron-LM, figure 3)
# --------------------------------------------------------------------------------------

class _CopyToParallel(torch.autograd.Function):
    """``f``: identity forward; all-reduce of the gradient backward.

    Every rank feeds the same ``X`` to its slice of a column-parallel layer, so ``dL/dX`` is
    the sum of every rank's contribution: summed in backward."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return _all_reduce(grad.clone(), ctx.group), None


class _ReduceFromParallel(torch.autograd.Function):
    """``g``: all-reduce forward (sum the partial products); identity backward.

    ``Y = sum_r X_r W_r^T``; ``dL/dY`` is the same on every rank, so each passes it on as is."""

    @staticmethod
    def forward(ctx, x, group):
        return _all_reduce(x.clone(), group)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _GatherFromParallel(torch.autograd.Function):
    """All-gather along the last dim forward; keep this rank's slice of the gradient backward."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        rank, world = _world(group)
        if world == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=-1)

    @staticmethod
    def backward(ctx, grad):
        rank, world = _world(ctx.group)
        return grad.chunk(world, dim=-1)[rank].contiguous(), None


class _ScatterToParallel(torch.autograd.Function):
    """Keep this rank's slice of the last dim forward; all-gather the gradient backward."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        rank, world = _world(group)
        return x.chunk(world, dim=-1)[rank].contiguous()

    @staticmethod
    def backward(ctx, grad):
        return _GatherFromParallel.forward(ctx, grad, ctx.group), None


def _check_split(name: str, size: int, world: int, parts: int = 1) -> None:
    if size % (world * parts):
        raise ValueError(f"{name}={size} must be divisible by the tensor-parallel size {world}"
                         + (f" x {parts} fused parts" if parts > 1 else ""))


def _shard_dim0(t: torch.Tensor, rank: int, world: int, parts: int = 1) -> torch.Tensor:
    """Rows of ``t`` for ``rank``: each of the ``parts`` fused blocks (e.g. W_q, W_k, W_v) is
    split in ``world`` and this rank keeps slice ``rank`` of every block."""
    return torch.cat([p.chunk(world, dim=0)[rank] for p in t.chunk(parts, dim=0)], dim=0).clone()


class ColumnParallelLinear(nn.Module):
    """``Y = X W^T + b`` with ``W`` split by rows (output features) across the group.

    Rank ``r`` holds ``W_r: [out_features / W, in_features]`` and computes
    ``Y_r = f(X) W_r^T + b_r: [..., out_features / W]``: its slice of the output, with no
    communication forward. ``parts > 1`` describes a fused weight (the course attention's
    ``qkv`` is ``[W_q; W_k; W_v]``): every part is split, so rank ``r`` gets the same heads of
    Q, K and V. Shoeybi et al. (2019), section 3, eq. 3.

    Args:
        in_features, out_features: the full (unsplit) sizes.
        group: the tensor-parallel process group (``None``: all processes).
        bias: add a (split) bias.
        gather_output: all-gather the slices so every rank gets the full ``[..., out_features]``.
        parts: number of fused blocks along the output dim.

    Raises:
        ValueError: if ``out_features`` is not divisible by ``world_size * parts``.
    """

    def __init__(self, in_features: int, out_features: int, group=None, bias: bool = True,
                 gather_output: bool = False, parts: int = 1):
        super().__init__()
        rank, world = _world(group)
        for name, v in (("in_features", in_features), ("out_features", out_features), ("parts", parts)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        _check_split("out_features", out_features, world, parts)
        self.in_features, self.out_features, self.parts = in_features, out_features, parts
        self.group, self.rank, self.world_size, self.gather_output = group, rank, world, gather_output
        self.weight = nn.Parameter(torch.empty(out_features // world, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features // world)) if bias else None
        nn.init.normal_(self.weight, std=0.02)

    @classmethod
    def from_linear(cls, linear: nn.Linear, group=None, parts: int = 1,
                    gather_output: bool = False) -> ColumnParallelLinear:
        """This rank's shard of an existing ``nn.Linear`` (every rank passes the same layer)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        layer = cls(linear.in_features, linear.out_features, group, linear.bias is not None,
                    gather_output, parts)
        with torch.no_grad():
            layer.weight.copy_(_shard_dim0(linear.weight, layer.rank, layer.world_size, parts))
            if linear.bias is not None:
                layer.bias.copy_(_shard_dim0(linear.bias, layer.rank, layer.world_size, parts))
        return layer.to(linear.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x must end in in_features={self.in_features}, got shape {tuple(x.shape)}")
        y = F.linear(_CopyToParallel.apply(x, self.group), self.weight, self.bias)  # [..., out / W]
        return _GatherFromParallel.apply(y, self.group) if self.gather_output else y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features} "
                f"(this rank: {self.weight.shape[0]}), world_size={self.world_size}")


class RowParallelLinear(nn.Module):
    """``Y = X W^T + b`` with ``W`` split by columns (input features) across the group.

    Rank ``r`` holds ``W_r: [out_features, in_features / W]`` and reads its slice
    ``X_r: [..., in_features / W]`` (the output of a :class:`ColumnParallelLinear`, so it is
    already split), computes the partial product ``X_r W_r^T`` and ``g`` sums the partials
    over the group; the (unsplit) bias is added once after the sum. Shoeybi et al. (2019),
    section 3, eq. 3 and figure 3a.

    Args:
        input_is_parallel: ``False`` when ``x`` is the full ``[..., in_features]``: each rank
            then takes its own slice first.

    Raises:
        ValueError: if ``in_features`` is not divisible by the group size.
    """

    def __init__(self, in_features: int, out_features: int, group=None, bias: bool = True,
                 input_is_parallel: bool = True):
        super().__init__()
        rank, world = _world(group)
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        _check_split("in_features", in_features, world)
        self.in_features, self.out_features = in_features, out_features
        self.group, self.rank, self.world_size, self.input_is_parallel = group, rank, world, input_is_parallel
        self.weight = nn.Parameter(torch.empty(out_features, in_features // world))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        nn.init.normal_(self.weight, std=0.02)

    @classmethod
    def from_linear(cls, linear: nn.Linear, group=None, input_is_parallel: bool = True) -> RowParallelLinear:
        """This rank's shard of an existing ``nn.Linear`` (every rank passes the same layer)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        layer = cls(linear.in_features, linear.out_features, group, linear.bias is not None, input_is_parallel)
        with torch.no_grad():
            layer.weight.copy_(linear.weight.chunk(layer.world_size, dim=1)[layer.rank])
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer.to(linear.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.input_is_parallel:
            if x.shape[-1] != self.in_features:
                raise ValueError(f"x must end in in_features={self.in_features}, got shape {tuple(x.shape)}")
            x = _ScatterToParallel.apply(x, self.group)
        elif x.shape[-1] != self.in_features // self.world_size:
            raise ValueError(f"x must end in in_features / world_size = {self.in_features // self.world_size} "
                             f"(this rank's slice), got shape {tuple(x.shape)}")
        y = _ReduceFromParallel.apply(F.linear(x, self.weight), self.group)  # [..., out], summed
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features} (this rank: {self.weight.shape[1]}), "
                f"out_features={self.out_features}, world_size={self.world_size}")


def tensor_parallel_block(block: nn.Module, group=None) -> nn.Module:
    """Shard a course ``TransformerBlock`` (``shared.model``) Megatron-style, in place.

    * attention: ``qkv`` becomes column-parallel by heads (each rank keeps ``n_heads / W``
      heads of Q, K and V), ``out_proj`` row-parallel; the block's attention then runs on its
      local heads only (``n_heads`` and ``d_out`` become the local values).
    * MLP: ``fc`` column-parallel (``[B, T, 4C / W]`` per rank), ``proj`` row-parallel.
    * LayerNorms stay replicated: their inputs and (after ``f``'s all-reduce) their
      gradients are the same on every rank.

    Every rank must pass an identical block (same seed or same checkpoint). Per forward: two
    all-reduces of ``[B, T, C]`` (one per sub-layer); per backward two more.
    Dropout on attention weights draws different masks than one process would (each rank
    draws for its own heads): parity with the unsplit block holds at ``dropout=0``.

    Returns:
        ``block`` itself, modified.

    Raises:
        TypeError: if ``block`` has no ``attn.qkv`` / ``mlp.fc`` structure.
        ValueError: if ``n_heads`` (or ``4 * d_model``) is not divisible by the group size.
    """
    attn, mlp = getattr(block, "attn", None), getattr(block, "mlp", None)
    if attn is None or mlp is None or not hasattr(attn, "qkv") or not hasattr(mlp, "fc"):
        raise TypeError(f"block must be a shared.model.TransformerBlock, got {type(block).__name__}")
    if isinstance(attn.qkv, ColumnParallelLinear):
        raise ValueError("this block is already tensor-parallel")
    _, world = _world(group)
    if attn.n_heads % world:
        raise ValueError(f"n_heads={attn.n_heads} must be divisible by the tensor-parallel size {world}")
    attn.qkv = ColumnParallelLinear.from_linear(attn.qkv, group, parts=3)
    attn.out_proj = RowParallelLinear.from_linear(attn.out_proj, group)
    attn.n_heads //= world  # the attention code now reshapes into the local heads only
    attn.d_out //= world
    mlp.fc = ColumnParallelLinear.from_linear(mlp.fc, group)
    mlp.proj = RowParallelLinear.from_linear(mlp.proj, group)
    return block


def tensor_parallel_model(model: nn.Module, group=None) -> nn.Module:
    """:func:`tensor_parallel_block` on every ``model.blocks[i]`` (embeddings, final norm and
    LM head stay replicated). In place; returns ``model``."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise TypeError(f"model must have a .blocks ModuleList (shared.model.GPTModel), got {type(model).__name__}")
    for block in blocks:
        tensor_parallel_block(block, group)
    return model


def tp_shard_specs(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``{name: (dim, parts)}`` for every tensor-parallel parameter of ``model``: ``(0, parts)``
    for a :class:`ColumnParallelLinear`'s weight and bias, ``(1, 1)`` for a
    :class:`RowParallelLinear`'s weight. Parameters not listed are replicated."""
    specs = {}
    for name, mod in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(mod, ColumnParallelLinear):
            specs[prefix + "weight"] = (0, mod.parts)
            if mod.bias is not None:
                specs[prefix + "bias"] = (0, mod.parts)
        elif isinstance(mod, RowParallelLinear):
            specs[prefix + "weight"] = (1, 1)
    return specs


def _gather_shards(t: torch.Tensor, dim: int, parts: int, group) -> torch.Tensor:
    """The full tensor from every rank's shard (inverse of :func:`_shard`)."""
    _, world = _world(group)
    if world == 1:
        return t.detach().clone()
    shards = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(shards, t.detach().contiguous(), group=group)
    if dim == 1:
        return torch.cat(shards, dim=1)
    # each shard is [part_0 slice; part_1 slice; ...]: put every part back together first
    per_part = [s.chunk(parts, dim=0) for s in shards]
    return torch.cat([torch.cat([per_part[r][p] for r in range(world)], dim=0) for p in range(parts)], dim=0)


def _shard(full: torch.Tensor, dim: int, parts: int, rank: int, world: int) -> torch.Tensor:
    return _shard_dim0(full, rank, world, parts) if dim == 0 else full.chunk(world, dim=1)[rank].clone()


def tp_full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer, group=None) -> tuple[dict, dict]:
    """Full (unsharded, CPU) model and optimizer state of a tensor-parallel model.

    The format is that of ``shared.distributed.full_state_dicts`` (plain ``GPTModel`` keys;
    the optimizer state keyed by parameter name), so a checkpoint written under tensor
    parallelism loads in one process, under DDP or FSDP, and back under TP
    (:func:`tp_load_full_state`). Collective: every rank of ``group`` must call it.
    """
    specs = tp_shard_specs(model)
    model_sd = {}
    for k, v in model.state_dict().items():
        model_sd[k] = (_gather_shards(v, *specs[k], group) if k in specs else v.detach().clone()).cpu()
    names = {id(p): n for n, p in model.named_parameters()}
    state = {}
    for p, st in optimizer.state.items():
        n = names[id(p)]
        state[n] = {k: ((_gather_shards(v, *specs[n], group) if n in specs and v.dim() > 0 else v.detach().clone()).cpu()
                        if torch.is_tensor(v) else v) for k, v in st.items()}
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [names[id(p)] for p in g["params"]]}
              for g in optimizer.param_groups]
    return model_sd, {"state": state, "param_groups": groups}


def tp_load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None, model_sd: dict | None,
                       optim_sd: dict | None, group=None) -> None:
    """Load full state (from :func:`tp_full_state_dicts` or ``shared.distributed.full_state_dicts``)
    into a tensor-parallel model and its optimizer: every rank keeps its own shards.

    Raises:
        ValueError: if a key or shape does not fit the model.
    """
    rank, world = _world(group)
    specs = tp_shard_specs(model)
    if model_sd is not None:
        local = {k: (_shard(v, *specs[k], rank, world) if k in specs else v) for k, v in model_sd.items()}
        try:
            model.load_state_dict(local)
        except RuntimeError as e:
            raise ValueError(f"the state does not fit this tensor-parallel model: {e}") from None
    if optimizer is not None and optim_sd is not None:
        names = {id(p): n for n, p in model.named_parameters()}
        order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
        index = {n: i for i, n in enumerate(order)}
        try:
            state = {index[n]: {k: (_shard(v, *specs[n], rank, world) if n in specs and torch.is_tensor(v)
                                    and v.dim() > 0 else v) for k, v in st.items()}
                     for n, st in optim_sd["state"].items()}
            groups = [{**g, "params": [index[n] for n in g["params"]]} for g in optim_sd["param_groups"]]
            optimizer.load_state_dict({"state": state, "param_groups": groups})
        except (KeyError, ValueError, RuntimeError) as e:
            raise ValueError(f"the optimizer state does not fit this tensor-parallel model: {e}") from None


def tp_clip_grad_norm_(model: nn.Module, max_norm: float | None, group=None) -> float:
    """Clip the *global* gradient norm of a tensor-parallel model; returns the norm before clipping.

    Sharded gradients contribute their squared norms summed over the ranks (an all-reduce);
    replicated ones (identical on every rank) are counted once. Clipping with each rank's local
    norm instead would scale the replicas differently and let them drift apart.
    """
    if max_norm is not None and (isinstance(max_norm, bool) or not isinstance(max_norm, (int, float))
                                 or not max_norm > 0):
        raise ValueError(f"max_norm must be a positive number or None, got {max_norm!r}")
    specs = tp_shard_specs(model)
    device = next(model.parameters()).device
    sharded = torch.zeros((), device=device, dtype=torch.float32)
    replicated = torch.zeros((), device=device, dtype=torch.float32)
    for n, p in model.named_parameters():
        if p.grad is None:
            continue
        sq = p.grad.detach().float().pow(2).sum()
        if n in specs:
            sharded += sq
        else:
            replicated += sq
    _, world = _world(group)
    if world > 1:
        dist.all_reduce(sharded, group=group)
    norm = float((sharded + replicated).sqrt())
    if max_norm is not None and math.isfinite(norm) and norm > max_norm:
        coef = max_norm / (norm + 1e-6)
        for p in model.parameters():
            if p.grad is not None:
                p.grad.mul_(coef)
    return norm


def tp_comm_bytes_per_layer(batch_size: int, seq_len: int, d_model: int, world_size: int,
                            bytes_per_element: int = 2, recompute: bool = False) -> dict[str, float]:
    """Tensor-parallel traffic of one transformer layer for one training step.

    Forward: 2 all-reduces (after attention and after the MLP) of ``[B, T, C]``; backward: 2
    more (the ``f`` ops); activation recomputation repeats the forward's 2. A ring all-reduce
    of ``n`` bytes sends ``2 (W - 1) / W * n`` bytes from each rank (Patarasuk & Yuan, 2009).

    Returns:
        ``{"all_reduces": int, "elements_per_all_reduce": int, "bytes_sent_per_rank": float}``.
    """
    for name, v in (("batch_size", batch_size), ("seq_len", seq_len), ("d_model", d_model),
                    ("world_size", world_size), ("bytes_per_element", bytes_per_element)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    n_ar = 4 + (2 if recompute else 0)
    elems = batch_size * seq_len * d_model
    sent = n_ar * 2 * (world_size - 1) / world_size * elems * bytes_per_element
    return {"all_reduces": n_ar, "elements_per_all_reduce": elems, "bytes_sent_per_rank": sent}


# --------------------------------------------------------------------------------------
# Pipeline parallelism (GPipe)
# --------------------------------------------------------------------------------------

class PipelineStage(nn.Module):
    """Consecutive blocks of a ``GPTModel``; the first stage also embeds, the last also
    normalises and projects to logits.

    ``forward``: first stage ``idx: LongTensor[B, T] -> [B, T, C]``; middle stages
    ``[B, T, C] -> [B, T, C]``; last stage ``[B, T, C] -> logits [B, T, vocab_size]`` (a
    one-stage pipeline maps ``idx`` to logits). The modules are the model's own (shared, not
    copied), so a tied ``lm_head.weight`` is the same tensor as ``tok_emb.weight``.
    """

    def __init__(self, model: nn.Module, first: int, last: int, is_first: bool, is_last: bool):
        super().__init__()
        self.is_first, self.is_last, self.layer_range = is_first, is_last, (first, last)
        if is_first:
            self.tok_emb, self.pos_emb, self.drop = model.tok_emb, model.pos_emb, model.drop
        self.blocks = nn.ModuleList(model.blocks[first:last])
        if is_last:
            self.final_norm, self.lm_head = model.final_norm, model.lm_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_first:
            if x.dim() != 2 or x.is_floating_point():
                raise ValueError(f"the first stage takes token ids [B, T], got {tuple(x.shape)} {x.dtype}")
            T = x.shape[1]
            x = self.drop(self.tok_emb(x) + self.pos_emb(torch.arange(T, device=x.device)))
        for block in self.blocks:
            x = block(x)  # causal attention by default
        if self.is_last:
            x = self.lm_head(self.final_norm(x))
        return x


def pipeline_stages(model: nn.Module, n_stages: int, boundaries: list[int] | None = None) -> nn.ModuleList:
    """Cut a ``GPTModel`` into ``n_stages`` consecutive :class:`PipelineStage` s.

    Blocks are split as evenly as possible (earlier stages get the extra block; the first
    and last stages also hold the embeddings and the LM head), or at ``boundaries``: the
    indices of the first block of stages ``1 .. n_stages - 1``. Running the stages in order
    equals ``model(idx)`` (a check in ``tests/test_parallel.py``).

    Raises:
        ValueError: if ``n_stages`` is not in ``1 .. n_layers`` or the boundaries are not
            strictly increasing inside ``1 .. n_layers - 1``.
        TypeError: if ``model`` is not GPT-shaped (``tok_emb``, ``blocks``, ``lm_head``).
    """
    for attr in ("tok_emb", "pos_emb", "blocks", "final_norm", "lm_head"):
        if not hasattr(model, attr):
            raise TypeError(f"model must be a shared.model.GPTModel (missing .{attr}), got {type(model).__name__}")
    L = len(model.blocks)
    if isinstance(n_stages, bool) or not isinstance(n_stages, int) or not 1 <= n_stages <= L:
        raise ValueError(f"n_stages must be an int in 1..n_layers={L}, got {n_stages!r}")
    if boundaries is None:
        sizes = [L // n_stages + (1 if i < L % n_stages else 0) for i in range(n_stages)]
        boundaries = [sum(sizes[:i]) for i in range(1, n_stages)]
    boundaries = list(boundaries)
    if len(boundaries) != n_stages - 1 or any(not 0 < b < L for b in boundaries) \
            or any(a >= b for a, b in zip(boundaries, boundaries[1:])):
        raise ValueError(f"boundaries must be {n_stages - 1} increasing block indices in 1..{L - 1}, got {boundaries}")
    edges = [0, *boundaries, L]
    return nn.ModuleList(PipelineStage(model, edges[i], edges[i + 1], i == 0, i == n_stages - 1)
                         for i in range(n_stages))


@dataclass
class _Event:
    kind: str  # "F" or "B"
    micro: int
    start: float
    end: float


def gpipe_step(stage: PipelineStage, idx: torch.Tensor, targets: torch.Tensor, n_micro: int,
               group=None, tied_weight: torch.Tensor | None = None) -> dict:
    """One GPipe training step of this process's ``stage`` (forward and backward; no optimizer).

    The process of rank ``s`` in ``group`` runs stage ``s``. The batch ``idx, targets: [B, T]``
    (every rank passes it; only the first stage reads ``idx`` and the last ``targets``) is cut
    into ``n_micro`` micro-batches of ``B / n_micro``. Schedule (Huang et al., 2019, figure 2c):
    all ``m`` forwards, each micro-batch's activation ``[B/m, T, C]`` sent to the next stage
    (``dist.send``), then all ``m`` backwards in reverse order, the gradient with respect to the
    activation sent back. The loss is the mean over all ``B x T`` tokens (each micro-batch's
    mean divided by ``m``), so the gradients equal one unsplit step's. With weight tying
    (``tied_weight``: the token embedding, present on the first and last stage) the two
    stages add up their gradients for it, as Megatron-LM does.

    Returns:
        ``{"loss": float (last stage; nan elsewhere), "events": [_Event], "wall": seconds,
        "busy": seconds spent computing}`` for this rank.

    Raises:
        ValueError: if ``B`` is not divisible by ``n_micro`` or the shapes differ.
    """
    rank, world = _world(group)
    if idx.shape != targets.shape or idx.dim() != 2:
        raise ValueError(f"idx and targets must both be [B, T], got {tuple(idx.shape)} and {tuple(targets.shape)}")
    if isinstance(n_micro, bool) or not isinstance(n_micro, int) or n_micro < 1 or idx.shape[0] % n_micro:
        raise ValueError(f"n_micro must be a positive int dividing the batch size {idx.shape[0]}, got {n_micro!r}")
    ranks = dist.get_process_group_ranks(group) if world > 1 and group is not None else list(range(world))
    prev_rank = ranks[rank - 1] if rank > 0 else None
    next_rank = ranks[rank + 1] if rank < world - 1 else None
    xs, ys = idx.chunk(n_micro), targets.chunk(n_micro)
    mb, T = xs[0].shape
    d_model = stage.blocks[0].ln1.weight.shape[0]
    dtype = stage.blocks[0].ln1.weight.dtype
    inputs, outputs, events, loss_total = [], [], [], 0.0
    t0 = time.perf_counter()
    for m in range(n_micro):  # forward of every micro-batch
        if stage.is_first:
            x = xs[m]
        else:
            x = torch.empty(mb, T, d_model, dtype=dtype)
            dist.recv(x, src=prev_rank, group=None)
            x.requires_grad_(True)
        s = time.perf_counter()
        out = stage(x)
        if stage.is_last:
            out = F.cross_entropy(out.flatten(0, 1), ys[m].flatten()) / n_micro
            loss_total += float(out.detach())
        events.append(_Event("F", m, s - t0, time.perf_counter() - t0))
        if not stage.is_last:
            dist.send(out.detach().contiguous(), dst=next_rank)
        inputs.append(x)
        outputs.append(out)
    for m in reversed(range(n_micro)):  # backward, last micro-batch first
        if stage.is_last:
            grad = None
        else:
            grad = torch.empty(mb, T, d_model, dtype=dtype)
            dist.recv(grad, src=next_rank)
        s = time.perf_counter()
        outputs[m].backward(grad)
        events.append(_Event("B", m, s - t0, time.perf_counter() - t0))
        if not stage.is_first:
            dist.send(inputs[m].grad.contiguous(), dst=prev_rank)
        inputs[m] = outputs[m] = None  # free the stored activations
    if tied_weight is not None and world > 1 and (stage.is_first or stage.is_last) and tied_weight.grad is not None:
        other = ranks[-1] if stage.is_first else ranks[0]
        buf = torch.empty_like(tied_weight.grad)
        reqs = [dist.isend(tied_weight.grad.contiguous(), dst=other), dist.irecv(buf, src=other)]
        for r in reqs:
            r.wait()
        tied_weight.grad += buf
    wall = time.perf_counter() - t0
    return {"loss": loss_total if stage.is_last else float("nan"), "events": events, "wall": wall,
            "busy": sum(e.end - e.start for e in events)}


def bubble_fraction(n_stages: int, n_micro: int) -> float:
    """GPipe's idle fraction ``(p - 1) / (m + p - 1)`` (Huang et al., 2019, section 2.2),
    for equal stages and no communication cost."""
    for name, v in (("n_stages", n_stages), ("n_micro", n_micro)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    return (n_stages - 1) / (n_micro + n_stages - 1)


def gpipe_schedule(n_stages: int, n_micro: int, backward_cost: int = 2) -> list[list[str]]:
    """The GPipe timetable: ``table[stage][tick]`` is ``"F3"``, ``"B3"`` or ``""`` (idle).

    A forward takes 1 tick and a backward ``backward_cost`` ticks (about 2 x the forward).
    Idle cells over all cells equals :func:`bubble_fraction`.
    """
    bubble_fraction(n_stages, n_micro)  # validates
    if isinstance(backward_cost, bool) or not isinstance(backward_cost, int) or backward_cost < 1:
        raise ValueError(f"backward_cost must be a positive int (ticks), got {backward_cost!r}")
    table: list[list[str]] = [[] for _ in range(n_stages)]
    for s in range(n_stages):
        table[s] += [""] * s + [f"F{m}" for m in range(n_micro)] + [""] * (n_stages - 1 - s)
    for s in range(n_stages):  # backward runs from the last stage back to the first
        wait = n_stages - 1 - s
        table[s] += [""] * (wait * backward_cost)
        for m in reversed(range(n_micro)):
            table[s] += [f"B{m}"] * backward_cost
        table[s] += [""] * (s * backward_cost)
    return table


# --------------------------------------------------------------------------------------
# Memory and time planner
# --------------------------------------------------------------------------------------

def zero_bytes_per_param(stage: int, dp: int, precision: str = "mixed") -> dict[str, float]:
    """Bytes per parameter on one GPU for weights, gradients and Adam state under ZeRO.

    Mixed-precision Adam (Rajbhandari et al., 2020, section 3.1): 2 bytes of fp16/bf16
    weights, 2 of gradients and ``K = 12`` of optimizer state (fp32 master weights, momentum
    and variance): 16 in all. ZeRO stage 1 shards the optimizer state over the ``dp``
    data-parallel ranks, stage 2 also the gradients, stage 3 also the weights (= FSDP).
    Stage 0 is plain DDP. ``precision="fp32"``: 4 + 4 + 8 (what a CPU run keeps).

    Example (the paper's figure 1: 7.5B parameters, 64 GPUs)::

        >>> round(7.5e9 * sum(zero_bytes_per_param(1, 64).values()) / 1e9, 1)
        31.4
    """
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"stage must be 0, 1, 2 or 3, got {stage!r}")
    if isinstance(dp, bool) or not isinstance(dp, int) or dp < 1:
        raise ValueError(f"dp must be a positive int, got {dp!r}")
    if precision not in ("mixed", "fp32"):
        raise ValueError(f"precision must be 'mixed' or 'fp32', got {precision!r}")
    w, g, o = (2.0, 2.0, 12.0) if precision == "mixed" else (4.0, 4.0, 8.0)
    return {"params": w / dp if stage >= 3 else w, "grads": g / dp if stage >= 2 else g,
            "optimizer": o / dp if stage >= 1 else o}


def activation_bytes_per_layer(seq_len: int, micro_batch: int, d_model: int, n_heads: int, tp: int = 1,
                               flash: bool = True, recompute: bool = False) -> float:
    """Activation bytes one transformer layer keeps for backward (16-bit activations).

    Korthikanti et al. (2022), "Reducing Activation Recomputation in Large Transformer
    Models", eq. 2: ``s b h (10 + 24 / t + 5 a s / (h t))`` with tensor parallelism ``t``
    (``s`` = seq_len, ``b`` = micro_batch, ``h`` = d_model, ``a`` = n_heads); ``t = 1`` gives
    eq. 1, ``34 s b h + 5 a s^2 b``. A fused (flash) attention keeps no ``[a, s, s]`` scores, so
    ``flash=True`` drops the ``5 a s / h`` term. ``recompute=True`` (full activation
    checkpointing, section 4) keeps only the layer input, ``2 s b h``.
    """
    for name, v in (("seq_len", seq_len), ("micro_batch", micro_batch), ("d_model", d_model),
                    ("n_heads", n_heads), ("tp", tp)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if recompute:
        return 2.0 * seq_len * micro_batch * d_model
    per = 10 + 24 / tp + (0 if flash else 5 * n_heads * seq_len / (d_model * tp))
    return seq_len * micro_batch * d_model * per


@dataclass
class PlanRow:
    """One strategy of :func:`plan`. Memory in GB (1e9 bytes) per GPU, times in seconds."""
    strategy: str
    dp: int
    tp: int
    pp: int
    params_gb: float
    grads_gb: float
    optimizer_gb: float
    activations_gb: float
    total_gb: float
    fits: bool
    compute_s: float
    comm_s: float
    step_s: float


def gpt_num_parameters(cfg) -> int:
    """``shared.model.GPTModel(cfg).num_parameters()`` without building it (tied LM head).

    Per block: ``qkv`` ``3 d^2`` (+ ``3 d`` bias when ``qkv_bias``), ``out_proj`` ``d^2 + d``,
    MLP ``8 d^2 + 5 d``, two LayerNorms ``4 d``; plus the embeddings ``(V + T_max) d`` and the
    final LayerNorm ``2 d``."""
    d = cfg.d_model
    per_layer = 12 * d * d + 10 * d + (3 * d if cfg.qkv_bias else 0)
    return cfg.n_layers * per_layer + (cfg.vocab_size + cfg.context_length) * d + 2 * d


def plan(model, n_gpus: int, gpu_memory_gb: float, bandwidth_gb_s: float, *, global_batch: int = 512,
         micro_batch: int = 4, seq_len: int | None = None, peak_tflops: float = 989.0, mfu: float = 0.4,
         tp: int = 2, precision: str = "mixed", recompute: bool = False,
         flash: bool = True) -> list[PlanRow]:
    """Memory per GPU and estimated step time for DDP, ZeRO-1/2/3, TP, PP and TP x DP.

    Args:
        model: a ``GPTConfig``, a ``GPTModel`` or a preset name (``shared.model.PRESETS``).
        n_gpus: GPUs in the job. ``gpu_memory_gb``: memory of one GPU (GB = 1e9 bytes).
        bandwidth_gb_s: collective bandwidth per GPU in GB/s (e.g. NVLink 4: ~450, 400 Gb/s
            InfiniBand: ~50). One number for all links: a real plan keeps TP inside a node.
        global_batch: sequences per optimizer step; ``micro_batch``: sequences per GPU per
            forward (also GPipe's micro-batch), ``seq_len``: default the model's context.
        peak_tflops, mfu: each GPU's peak (H100 bf16 dense: 989) and the fraction achieved.
        tp: the tensor-parallel degree of the ``TP x DP`` row (``tp`` x ``n_gpus / tp``); the
            ``TP`` row puts all GPUs in one tensor-parallel group, the ``PP`` row makes each
            GPU a pipeline stage (GPipe with ``global_batch / micro_batch`` micro-batches).
        precision: ``"mixed"`` (2 + 2 + 12 bytes per parameter) or ``"fp32"`` (4 + 4 + 8).
        recompute: full activation checkpointing (one more forward: 8 N instead of 6 N FLOPs).

    Model of time (an estimate, not a measurement): compute = FLOPs per GPU / (peak x mfu),
    with ``shared.model.GPTModel.flops_per_token``; communication = bytes each GPU sends /
    bandwidth, ring collectives: DDP and ZeRO-1/2 all-reduce 2-byte gradients
    (``2 (d-1)/d x 2 N``), ZeRO-3 moves 1.5 x that (all-gather weights for forward and
    backward, reduce-scatter gradients; Rajbhandari et al., section 7). Data-parallel traffic
    overlaps the backward (step = max(compute, comm)); TP's all-reduces sit on the critical
    path (step = compute + comm); PP adds the bubble (compute x (m + p - 1) / m) and
    point-to-point activations.

    Raises:
        ValueError: for non-positive sizes, a degree that does not divide ``n_gpus``, or a
            batch that does not split into ``micro_batch`` x data-parallel ranks.
    """
    from shared.model import PRESETS, GPTConfig, GPTModel
    if isinstance(model, str):
        if model not in PRESETS:
            raise ValueError(f"model must be a GPTConfig, a GPTModel or one of {sorted(PRESETS)}, got {model!r}")
        cfg = GPTConfig.from_preset(model)
    elif isinstance(model, GPTModel):
        cfg = model.cfg
    elif isinstance(model, GPTConfig):
        cfg = model
    else:
        raise TypeError(f"model must be a GPTConfig, a GPTModel or a preset name, got {type(model).__name__}")
    for name, v in (("n_gpus", n_gpus), ("global_batch", global_batch), ("micro_batch", micro_batch),
                    ("tp", tp)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    for name, v in (("gpu_memory_gb", gpu_memory_gb), ("bandwidth_gb_s", bandwidth_gb_s),
                    ("peak_tflops", peak_tflops)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"{name} must be a positive number, got {v!r}")
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu must be in (0, 1], got {mfu!r}")
    T = cfg.context_length if seq_len is None else seq_len
    d, L = cfg.d_model, cfg.n_layers
    N = gpt_num_parameters(cfg)
    # shared.model.GPTModel.flops_per_token: 6 x (non-embedding + LM head) + 12 L T d
    flops_tok = 6.0 * (N - cfg.context_length * d) + 12.0 * L * T * d
    if recompute:  # one more forward: 6N + attention becomes 8N + 4/3 attention
        flops_tok *= 4 / 3
    tokens = global_batch * T
    rate = peak_tflops * 1e12 * mfu
    bw = bandwidth_gb_s * 1e9
    act_layer = activation_bytes_per_layer(T, micro_batch, d, cfg.n_heads, 1, flash, recompute)
    if precision == "fp32":
        act_layer *= 2
    rows = []

    def add(name, dp_, tp_, pp_, per_param, act, compute, comm, overlapped):
        params, grads, optim = (N * per_param[k] / (tp_ * pp_) / 1e9 for k in ("params", "grads", "optimizer"))
        total = params + grads + optim + act / 1e9
        step = max(compute, comm) if overlapped else compute + comm
        rows.append(PlanRow(name, dp_, tp_, pp_, params, grads, optim, act / 1e9, total,
                            total <= gpu_memory_gb, compute, comm, step))

    def dp_ok(dp_):
        return global_batch % (dp_ * micro_batch) == 0

    grad_bytes = 2 if precision == "mixed" else 4
    compute_all = flops_tok * tokens / (n_gpus * rate)
    dp = n_gpus
    if dp_ok(dp):
        ring = 2 * (dp - 1) / dp * N * grad_bytes
        for stage, name in ((0, "DDP"), (1, "ZeRO-1"), (2, "ZeRO-2"), (3, "ZeRO-3 / FSDP")):
            comm = ring * (1.5 if stage == 3 else 1.0) / bw
            add(name, dp, 1, 1, zero_bytes_per_param(stage, dp, precision), act_layer * L, compute_all, comm, True)
    act_bytes_el = 2 if precision == "mixed" else 4
    if n_gpus > 1 and cfg.n_heads % n_gpus == 0:  # all GPUs in one tensor-parallel group
        act_tp = activation_bytes_per_layer(T, micro_batch, d, cfg.n_heads, n_gpus, flash, recompute)
        act_tp *= 1 if precision == "mixed" else 2
        n_seq = global_batch  # every TP rank processes the whole batch, micro_batch at a time
        comm = L * tp_comm_bytes_per_layer(n_seq, T, d, n_gpus, act_bytes_el, recompute)["bytes_sent_per_rank"] / bw
        add(f"TP={n_gpus}", 1, n_gpus, 1, zero_bytes_per_param(0, 1, precision), act_tp * L, compute_all, comm, False)
    if 1 < n_gpus <= L:  # all GPUs as pipeline stages; m = global_batch / micro_batch micro-batches
        m = global_batch // micro_batch
        act_pp = act_layer * (L / n_gpus) * m  # GPipe keeps every micro-batch's activations
        p2p = 2 * m * micro_batch * T * d * act_bytes_el / bw
        add(f"PP={n_gpus} (GPipe, m={m})", 1, 1, n_gpus, zero_bytes_per_param(0, 1, precision), act_pp,
            compute_all * (m + n_gpus - 1) / m, p2p, False)
    if 1 < tp < n_gpus and n_gpus % tp == 0 and cfg.n_heads % tp == 0 and dp_ok(n_gpus // tp):
        dp_ = n_gpus // tp
        act_tp = activation_bytes_per_layer(T, micro_batch, d, cfg.n_heads, tp, flash, recompute)
        act_tp *= 1 if precision == "mixed" else 2
        n_seq = global_batch // dp_
        tp_comm = L * tp_comm_bytes_per_layer(n_seq, T, d, tp, act_bytes_el, recompute)["bytes_sent_per_rank"]
        dp_comm = 2 * (dp_ - 1) / dp_ * (N / tp) * grad_bytes
        # TP traffic is on the critical path; the DP all-reduce overlaps with the backward.
        add(f"TP={tp} x DP={dp_}", dp_, tp, 1, zero_bytes_per_param(0, dp_, precision), act_tp * L,
            compute_all, (tp_comm + dp_comm) / bw, False)
        rows[-1].step_s = max(compute_all, dp_comm / bw) + tp_comm / bw
    return rows
