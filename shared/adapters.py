"""Bottleneck adapters (Chapter 7), written from scratch: the other parameter-efficient method next to LoRA.

Reference: N. Houlsby et al., "Parameter-Efficient Transfer Learning for NLP" (ICML 2019),
arXiv:1902.00751, section 2.1 and figure 2. Each transformer sublayer (attention, feed-forward)
gets a small **adapter** on its output, before that output is added to the residual stream:

    adapter(h) = h + W_up f(W_down h),   W_down: [m, d], W_up: [d, m], m << d

a bottleneck of width ``m`` with its own skip connection. The pretrained weights are frozen;
the adapters (``2 (2 d m + m + d)`` parameters per block: two adapters of ``2 d m`` weights and
``m + d`` biases) and, as in the paper, the LayerNorms train. With ``W_up`` initialised to zero
the adapter is the identity at the start (the paper uses a near-zero init for the same reason),
so training starts exactly at the pretrained model, like LoRA with ``B = 0``.

Unlike LoRA an adapter is a new layer in the forward pass: it cannot be merged into the
weights, so it costs a little time at inference (two thin matmuls per sublayer).

Usage::

    model = apply_adapters(model, bottleneck=16)     # freezes everything else
    count_trainable(model)                           # from shared.lora
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BottleneckAdapter", "WithAdapter", "apply_adapters", "adapter_param_count"]


class BottleneckAdapter(nn.Module):
    """``h + up(gelu(down(h)))`` for ``h: [..., d_model] -> [..., d_model]`` (Houlsby et al. 2019, fig. 2).

    ``down = nn.Linear(d_model, bottleneck)`` keeps its default initialisation; ``up =
    nn.Linear(bottleneck, d_model)`` starts at **zero** (weight and bias), so the adapter is
    exactly the identity at the start, and ``up`` still receives a gradient
    (``∂L/∂W_up = g · gelu(down(h))^T``, non-zero).

    Raises:
        ValueError: if ``d_model`` or ``bottleneck`` is not a positive int.
    """

    def __init__(self, d_model: int, bottleneck: int):
        super().__init__()
        for name, v in (("d_model", d_model), ("bottleneck", bottleneck)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.down = nn.Linear(d_model, bottleneck)
        self.act = nn.GELU(approximate="tanh")
        self.up = nn.Linear(bottleneck, d_model)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.act(self.down(h)))  # [..., d_model]


class WithAdapter(nn.Module):
    """A frozen sublayer followed by an adapter: ``adapter(inner(*args, **kwargs))``.

    Keyword arguments (the attention's ``attn_mask``, ``kv_cache``, ``layer_idx``) pass through,
    so cached generation works unchanged.
    """

    def __init__(self, inner: nn.Module, adapter: BottleneckAdapter):
        super().__init__()
        self.inner, self.adapter = inner, adapter

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.adapter(self.inner(*args, **kwargs))


def adapter_param_count(d_model: int, bottleneck: int, n_layers: int, train_layernorm: bool = True) -> int:
    """Trainable parameters of :func:`apply_adapters` on a GPT: ``L (2 (2 d m + m + d) [+ 4 d]) [+ 2 d]``.

    The bracketed terms are the LayerNorms (two per block and the final one, ``2 d`` each)."""
    per_block = 2 * (2 * d_model * bottleneck + bottleneck + d_model)
    if train_layernorm:
        per_block += 2 * 2 * d_model
    return n_layers * per_block + (2 * d_model if train_layernorm else 0)


def apply_adapters(model: nn.Module, bottleneck: int, train_layernorm: bool = True) -> nn.Module:
    """Freeze ``model`` and put a :class:`BottleneckAdapter` after the attention and the MLP of every block.

    Works on :class:`shared.model.GPTModel` (blocks in ``model.blocks``, sublayers ``attn`` and
    ``mlp``). With ``train_layernorm`` (the paper's choice) the LayerNorms stay trainable. The
    adapters are created on the device and dtype of the model. Returns ``model`` (changed in place).

    Raises:
        ValueError: if ``model`` has no ``blocks`` with ``attn`` and ``mlp``, or already has adapters.
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None or not all(hasattr(b, "attn") and hasattr(b, "mlp") for b in blocks):
        raise ValueError("apply_adapters needs a GPT with model.blocks[i].attn and .mlp")
    if any(isinstance(m, WithAdapter) for m in model.modules()):
        raise ValueError("model already has adapters")
    model.requires_grad_(False)
    w = model.tok_emb.weight
    d_model = w.size(1)
    for block in blocks:
        for name in ("attn", "mlp"):
            adapter = BottleneckAdapter(d_model, bottleneck).to(device=w.device, dtype=w.dtype)
            setattr(block, name, WithAdapter(getattr(block, name), adapter))
    if train_layernorm:
        for m in model.modules():
            if type(m).__name__ == "LayerNorm":
                m.requires_grad_(True)
    return model
