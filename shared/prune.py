"""Pruning (Chapter 6b): unstructured magnitude pruning and structured head/neuron removal.

* **Unstructured** (Han et al., 2015, "Learning both Weights and Connections"): zero the
  weights of smallest magnitude. ``scope="global"`` ranks all prunable weights together (layers
  with many small weights lose more), ``scope="layer"`` removes the same fraction from every
  matrix. The matrices keep their shape, so a dense matmul does exactly the same work: the
  zeros save nothing until a sparse kernel or format uses them.
* **Structured**: remove whole attention heads (Michel et al., 2019, "Are Sixteen Heads Really
  Better than One?") or MLP neurons. The matrices really shrink, so every matmul does less work.
  A head ``h`` owns rows ``h*hd:(h+1)*hd`` of each of W_q, W_k, W_v (inside ``attn.qkv``) and the
  same columns of ``attn.out_proj``; an MLP neuron ``j`` owns row ``j`` of ``mlp.fc`` (and its
  bias) and column ``j`` of ``mlp.proj``. Deleting them is exact: the model computes what it
  computed with that head's (or neuron's) output set to zero.

Scores for choosing what to remove are weight magnitudes (:func:`head_scores`,
:func:`neuron_scores`); a short fine-tune afterwards recovers much of the lost quality (the
notebook measures it). Works on :class:`shared.model.GPTModel`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

__all__ = ["PRUNABLE", "magnitude_prune", "apply_masks", "sparsity", "head_scores", "neuron_scores",
           "prune_heads", "prune_neurons"]

#: Which weights unstructured pruning touches: the matrices inside the blocks (embeddings,
#: the tied LM head, norms and biases are left alone).
PRUNABLE = ("attn.qkv.weight", "attn.out_proj.weight", "mlp.fc.weight", "mlp.proj.weight")


def _prunable(model: nn.Module) -> dict[str, nn.Parameter]:
    params = {n: p for n, p in model.named_parameters() if n.endswith(PRUNABLE)}
    if not params:
        raise ValueError("model has no prunable weights (expected a shared.model.GPTModel)")
    return params


def magnitude_prune(model: nn.Module, sparsity: float, scope: str = "global") -> dict[str, torch.Tensor]:
    """Zero the ``sparsity`` fraction of smallest-magnitude block weights, in place.

    Args:
        model: a :class:`shared.model.GPTModel`; the :data:`PRUNABLE` matrices are pruned.
        sparsity: fraction in ``[0, 1)`` of those weights set to zero.
        scope: ``"global"`` (one threshold for all of them) or ``"layer"`` (per matrix).

    Returns:
        ``{parameter name: bool mask}`` (True = kept), for :func:`apply_masks` after each
        optimizer step of a recovery fine-tune.

    Raises:
        ValueError: for a sparsity outside ``[0, 1)`` or an unknown scope.
    """
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    params = _prunable(model)
    masks = {}
    with torch.no_grad():
        if scope == "global":
            scores = torch.cat([p.abs().flatten() for p in params.values()])
            n_drop = int(sparsity * scores.numel())
            # the n_drop-th smallest |w| is the threshold; ties broken by the sort order
            order = torch.argsort(scores)
            keep_flat = torch.ones_like(scores, dtype=torch.bool)
            keep_flat[order[:n_drop]] = False
            offset = 0
            for name, p in params.items():
                masks[name] = keep_flat[offset:offset + p.numel()].view_as(p)
                offset += p.numel()
        else:
            for name, p in params.items():
                n_drop = int(sparsity * p.numel())
                keep = torch.ones(p.numel(), dtype=torch.bool, device=p.device)
                keep[torch.argsort(p.abs().flatten())[:n_drop]] = False
                masks[name] = keep.view_as(p)
    apply_masks(model, masks)
    return masks


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero every weight where ``masks[name]`` is False (call after each optimizer step).

    Raises:
        ValueError: if a mask names a parameter the model does not have or has the wrong shape.
    """
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            if name not in params or params[name].shape != mask.shape:
                raise ValueError(f"mask {name!r} does not match a parameter of the model")
            params[name].mul_(mask.to(params[name].dtype))


def sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero entries among the :data:`PRUNABLE` weights."""
    params = _prunable(model).values()
    return sum(int((p == 0).sum()) for p in params) / sum(p.numel() for p in params)


# ---------------------------------------------------------------------------- structured pruning

def _blocks(model: nn.Module):
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError("model must be a shared.model.GPTModel (needs .blocks)")
    return blocks


def head_scores(model: nn.Module) -> torch.Tensor:
    """Magnitude importance of each head, ``[n_layers, n_heads]``.

    ``||W_v rows of h|| * ||out_proj columns of h||`` (Frobenius norms): how strongly a head
    can write into the residual stream.
    """
    rows = []
    for block in _blocks(model):
        attn = block.attn
        H, hd, d = attn.n_heads, attn.head_dim, attn.d_out
        w_v = attn.qkv.weight[2 * d:].reshape(H, hd, -1)               # [H, hd, d_in]
        w_o = attn.out_proj.weight.reshape(-1, H, hd).transpose(0, 1)  # [H, d_model, hd]
        rows.append(w_v.flatten(1).norm(dim=1) * w_o.flatten(1).norm(dim=1))
    return torch.stack(rows).detach()


def neuron_scores(model: nn.Module) -> list[torch.Tensor]:
    """Magnitude importance of each MLP neuron per layer: ``||fc row j|| * ||proj column j||``."""
    return [(b.mlp.fc.weight.norm(dim=1) * b.mlp.proj.weight.norm(dim=0)).detach() for b in _blocks(model)]


def _keep_index(n: int, drop: Sequence[int], what: str) -> torch.Tensor:
    drop = sorted(set(int(i) for i in drop))
    if any(i < 0 or i >= n for i in drop):
        raise ValueError(f"{what} indices must be in 0..{n - 1}, got {drop}")
    if len(drop) >= n:
        raise ValueError(f"cannot remove all {n} {what}s of a layer")
    return torch.tensor([i for i in range(n) if i not in drop], dtype=torch.long)


def _shrink(linear: nn.Linear, out_idx: torch.Tensor | None = None, in_idx: torch.Tensor | None = None) -> nn.Linear:
    w = linear.weight.detach()
    b = None if linear.bias is None else linear.bias.detach()
    if out_idx is not None:
        w = w[out_idx.to(w.device)]
        b = None if b is None else b[out_idx.to(w.device)]
    if in_idx is not None:
        w = w[:, in_idx.to(w.device)]
    new = nn.Linear(w.size(1), w.size(0), bias=b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    return new


def prune_heads(model: nn.Module, heads: Mapping[int, Sequence[int]]) -> nn.Module:
    """Remove attention heads, in place: ``heads = {layer: [head, ...]}``. Returns ``model``.

    Each named layer's ``attn.qkv`` loses ``3 * hd`` rows per head and ``attn.out_proj`` loses
    ``hd`` columns; ``n_heads`` and ``d_out`` of that attention module shrink, ``head_dim``
    does not (so the ``1 / sqrt(hd)`` scale is unchanged). The KV cache holds one head count
    for all layers, so every layer must keep the same number of heads.

    Raises:
        ValueError: for an unknown layer or head, removing every head of a layer, or layers left
            with different head counts.
    """
    blocks = _blocks(model)
    if not isinstance(heads, Mapping):
        raise ValueError(f"heads must be a dict {{layer: [heads]}}, got {type(heads).__name__}")
    for layer in heads:
        if not isinstance(layer, int) or not 0 <= layer < len(blocks):
            raise ValueError(f"layer must be in 0..{len(blocks) - 1}, got {layer!r}")
    left = {i: b.attn.n_heads - len(set(heads.get(i, ()))) for i, b in enumerate(blocks)}
    if len(set(left.values())) > 1:
        raise ValueError(f"every layer must keep the same number of heads (the KV cache stores one head "
                         f"count), but this would leave {left}")
    for layer, drop in heads.items():
        attn = blocks[layer].attn
        H, hd, d = attn.n_heads, attn.head_dim, attn.d_out
        keep = _keep_index(H, drop, "head")
        cols = (keep[:, None] * hd + torch.arange(hd)).flatten()      # this head's slots in d_out
        attn.qkv = _shrink(attn.qkv, out_idx=torch.cat([cols, d + cols, 2 * d + cols]))
        attn.out_proj = _shrink(attn.out_proj, in_idx=cols)
        attn.n_heads, attn.d_out = len(keep), len(keep) * hd
    return model


def prune_neurons(model: nn.Module, neurons: Mapping[int, Sequence[int]]) -> nn.Module:
    """Remove MLP hidden neurons, in place: ``neurons = {layer: [index, ...]}``. Returns ``model``.

    ``mlp.fc`` loses those rows (and bias entries), ``mlp.proj`` those columns; layers may keep
    different widths.

    Raises:
        ValueError: for an unknown layer or index, or removing every neuron of a layer.
    """
    blocks = _blocks(model)
    if not isinstance(neurons, Mapping):
        raise ValueError(f"neurons must be a dict {{layer: [indices]}}, got {type(neurons).__name__}")
    for layer, drop in neurons.items():
        if not isinstance(layer, int) or not 0 <= layer < len(blocks):
            raise ValueError(f"layer must be in 0..{len(blocks) - 1}, got {layer!r}")
        mlp = blocks[layer].mlp
        keep = _keep_index(mlp.fc.out_features, drop, "neuron")
        mlp.fc = _shrink(mlp.fc, out_idx=keep)
        mlp.proj = _shrink(mlp.proj, in_idx=keep)
    return model
