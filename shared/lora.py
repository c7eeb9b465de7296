"""LoRA, low-rank adaptation (Chapter 7), written from scratch.

Reference: E. J. Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models" (2021),
arXiv:2106.09685. Eq. 3 gives the forward pass ``h = W0 x + ΔW x = W0 x + B A x``; section
4.1 gives the initialisation (A random Gaussian, B zero, so ΔW = BA = 0 at the start), the
``α / r`` scaling, and merging ``W = W0 + BA`` for inference with no extra latency.

Why it works: finetuning updates ``ΔW`` of a pretrained weight have low "intrinsic rank", so
we learn ``ΔW = B A`` with ``B: [d_out, r]`` and ``A: [r, d_in]``, ``r << min(d_in, d_out)``,
and freeze ``W0``. A ``d_out x d_in`` weight then trains ``r (d_in + d_out)`` numbers instead
of ``d_in d_out``.

Usage::

    model = apply_lora(model, rank=8, alpha=16)      # freezes everything else
    ...train...                                      # only A and B (and nothing else) learn
    torch.save(lora_state_dict(model), "adapter.pt") # a few hundred kB, not the whole model
    merge_lora(model)                                # plain nn.Linear again, zero overhead
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["LoRALinear", "apply_lora", "merge_lora", "lora_state_dict", "load_lora_state_dict",
           "count_trainable", "DEFAULT_TARGETS"]

#: The four projections of every GPT block (attention in/out, MLP up/down).
DEFAULT_TARGETS = ("attn.qkv", "attn.out_proj", "mlp.fc", "mlp.proj")


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update (Hu et al., 2021, eq. 3).

    ``forward(x) = base(x) + (alpha / rank) * dropout(x) @ A.T @ B.T``, i.e.
    ``W0 x + b + (α/r) B A x`` for ``x: [..., d_in] -> [..., d_out]``.

    Initialisation (section 4.1): ``A: [rank, d_in]`` is Kaiming-uniform (as ``nn.Linear``
    initialises its weights, and as the reference ``loralib`` does), ``B: [d_out, rank]`` is
    **zero**. So ``BA = 0`` and the wrapped layer computes exactly what the base layer did: the
    model starts at the pretrained model, not at a randomly perturbed one. ``B`` still gets a
    gradient (``∂L/∂B = (α/r) g (A x)^T``, non-zero because ``A`` is not), so learning starts at once.
    Both cannot be zero: then neither would ever receive a gradient.

    The scale ``α/r`` keeps the size of the update roughly independent of ``rank``, so the
    learning rate need not be retuned when ``rank`` changes (section 4.1).

    Args:
        base: the pretrained layer; its weight and bias are frozen (``requires_grad=False``).
        rank: ``r >= 1``, the rank of the update.
        alpha: ``α > 0``; the update is scaled by ``α / r``.
        dropout: dropout on the input of the low-rank branch only (0 disables it).

    Raises:
        ValueError: if ``base`` is not an ``nn.Linear``, ``rank < 1`` or ``rank`` exceeds
            ``min(d_in, d_out)``, ``alpha <= 0`` or ``dropout`` is outside [0, 1).
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ValueError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be a positive int, got {rank!r}")
        if rank > min(base.in_features, base.out_features):
            raise ValueError(f"rank={rank} exceeds min(d_in, d_out) = "
                             f"{min(base.in_features, base.out_features)}: the update would not be low-rank")
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.base = base
        self.rank, self.alpha = rank, float(alpha)
        self.scaling = self.alpha / rank
        for p in self.base.parameters():
            p.requires_grad_(False)
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # same as nn.Linear's weight
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def delta_weight(self) -> torch.Tensor:
        """The update ``(α/r) B A``, shape ``[d_out, d_in]`` (same as ``base.weight``)."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x has {x.shape[-1]} features in its last dimension; this layer's in_features "
                             f"is {self.in_features}")
        # Two thin matmuls ([.., d_in] -> [.., r] -> [.., d_out]); never form the d_out x d_in BA.
        return self.base(x) + (self.dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scaling

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` with ``W = W0 + (α/r) BA`` and the base bias (section 4.1)."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.base.bias is not None,
                        device=self.base.weight.device, dtype=self.base.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(self.base.weight + self.delta_weight())
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}, scaling={self.scaling:g}"


def _matches(name: str, targets: Iterable[str]) -> bool:
    """``name`` (e.g. ``blocks.3.attn.qkv``) ends with one of ``targets`` at a dot boundary."""
    return any(name == t or name.endswith("." + t) for t in targets)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def apply_lora(model: nn.Module, rank: int, alpha: float,
               target_modules: Iterable[str] = DEFAULT_TARGETS, dropout: float = 0.0) -> nn.Module:
    """Wrap every ``nn.Linear`` whose name ends with one of ``target_modules`` in :class:`LoRALinear`,
    and freeze every other parameter. Modifies ``model`` in place and returns it.

    Args:
        model: e.g. a :class:`shared.model.GPTModel` (names ``blocks.{i}.attn.qkv`` ...).
        rank, alpha, dropout: see :class:`LoRALinear`.
        target_modules: name suffixes at a dot boundary (``"attn.qkv"`` matches
            ``blocks.0.attn.qkv``). Default: all four projections of every block.

    Afterwards only the ``lora_A``/``lora_B`` tensors have ``requires_grad=True``. To also
    train a fresh task head, unfreeze it after this call (``head.requires_grad_(True)``).

    Raises:
        ValueError: if no ``nn.Linear`` matches (a typo in ``target_modules``), or if a matched
            layer is already a LoRA layer.
    """
    targets = tuple(target_modules)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and _matches(n, targets)]
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("model already has LoRA layers; merge_lora(model) first or apply once")
    if not names:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][:6]
        raise ValueError(f"no nn.Linear matches target_modules={targets}; linear layers look like {linears}")
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        _set_submodule(model, name, LoRALinear(model.get_submodule(name), rank, alpha, dropout))
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every :class:`LoRALinear` into a plain ``nn.Linear`` (``W0 + (α/r) BA``), in place.

    The merged model computes the same function (up to float rounding) with no extra
    matmuls at inference (Hu et al., 2021, section 4.1). Returns ``model``.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    names = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    for name in names:
        _set_submodule(model, name, model.get_submodule(name).merged())
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors (``...lora_A`` / ``...lora_B``), detached on the CPU.

    Their names are the model's own (``blocks.0.attn.qkv.lora_A``), so the file is tiny and
    only loads into a model of the same architecture with LoRA applied the same way.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``.
        ValueError: if it has no LoRA layers (an empty adapter file would be saved silently).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    sd = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
          if k.endswith((".lora_A", ".lora_B"))}
    if not sd:
        raise ValueError("model has no LoRA layers: call apply_lora(model, rank, alpha, ...) first")
    return sd


def load_lora_state_dict(model: nn.Module, sd: dict[str, torch.Tensor]) -> nn.Module:
    """Copy adapter tensors ``sd`` (from :func:`lora_state_dict`) into ``model``, in place.

    Raises:
        ValueError: naming the key, if ``sd`` is empty, has a key the model lacks (e.g. LoRA
            was not applied, or to other modules), misses one of the model's adapter keys, or
            has a tensor whose shape differs (e.g. another rank or model width).
    """
    own = lora_state_dict(model)  # raises if the model has no LoRA layers
    if not sd:
        raise ValueError("adapter state dict is empty")
    for key, value in sd.items():
        if key not in own:
            raise ValueError(f"unexpected adapter key {key!r}: the model has no such LoRA tensor "
                             f"(its keys look like {sorted(own)[:2]})")
        if tuple(value.shape) != tuple(own[key].shape):
            raise ValueError(f"shape mismatch for {key!r}: adapter has {tuple(value.shape)}, model expects "
                             f"{tuple(own[key].shape)} (different rank or model size?)")
    missing = sorted(set(own) - set(sd))
    if missing:
        raise ValueError(f"adapter is missing key {missing[0]!r} ({len(missing)} missing in all)")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in sd.items():
            params[key].copy_(value)
    return model


def count_trainable(model: nn.Module) -> int:
    """Number of parameters with ``requires_grad=True`` (tied tensors counted once).

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
