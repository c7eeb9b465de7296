"""Causal multi-head self-attention (Chapter 3) and its key/value cache (Chapter 6).

Reference: Vaswani et al., "Attention Is All You Need" (2017), eq. 1 and section 3.2.2;
GPT-2's ``GPT2Attention`` in Hugging Face ``transformers`` for the fused QKV layout.

State-dict contract (Chapter 4's GPT-2 loader relies on these exact names and shapes):

==================  =====================  =============================================
key                 shape                  meaning
==================  =====================  =============================================
``qkv.weight``      ``[3 * d_out, d_in]``  rows ``[W_q; W_k; W_v]``, each head a block of
                                           ``head_dim`` rows (HF ``c_attn.weight`` transposed)
``qkv.bias``        ``[3 * d_out]``        only when ``qkv_bias=True`` (GPT-2 has it)
``out_proj.weight`` ``[d_out, d_out]``     HF ``c_proj.weight`` transposed
``out_proj.bias``   ``[d_out]``
==================  =====================  =============================================

The causal mask is a non-persistent buffer, so it is not part of the state dict.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MultiHeadAttention", "KVCache", "build_attention_mask"]


def build_attention_mask(T: int, T_k: int, key_padding: torch.Tensor | None = None,
                   device: torch.device | None = None) -> torch.Tensor | None:
    """Which keys each query may attend to: boolean ``[B or 1, 1, T, T_k]`` (True = may attend).

    The ``T`` queries sit at absolute positions ``T_k - T .. T_k - 1`` (the first ``T_k - T``
    keys are cached), and query ``i`` may see keys ``j <= T_k - T + i`` (causal). With a
    ``key_padding`` mask ``[B, T_k]`` (1 = real token, 0 = padding) padded keys are hidden too.

    Returns ``None`` when plain causal attention needs no mask: no padding and either no cached
    keys (SDPA's fast ``is_causal`` path) or one query, which may see every cached key.
    A model builds this once per forward and hands it to every layer.

    Raises:
        ValueError: if not ``1 <= T <= T_k``, if ``key_padding`` is not ``[B, T_k]``, or if it
            holds values other than 0/1 (an additive ``0 / -inf`` mask would be read inverted).
    """
    if not 1 <= T <= T_k:
        raise ValueError(f"need 1 <= T <= T_k (queries are the last T of T_k positions), got T={T}, T_k={T_k}")
    if key_padding is None and (T == T_k or T == 1):
        return None
    q_pos = torch.arange(T_k - T, T_k, device=device)[:, None]  # [T, 1] absolute query positions
    k_pos = torch.arange(T_k, device=device)[None, :]            # [1, T_k]
    allowed = k_pos <= q_pos                                     # [T, T_k] causal
    if key_padding is None:
        return allowed[None, None]
    if key_padding.dim() != 2 or key_padding.shape[-1] != T_k:
        raise ValueError(f"attn_mask covers {key_padding.shape[-1]} positions, expected {T_k} "
                         f"(a key-padding mask is [B, T_k]; got shape {tuple(key_padding.shape)})")
    if key_padding.dtype != torch.bool and bool(((key_padding != 0) & (key_padding != 1)).any()):
        raise ValueError("attn_mask must hold 1 (real token) and 0 (padding), or True/False; got other "
                         "values (an additive 0/-inf mask? convert it with mask == 0)")
    # A padding query would see no key at all (softmax of all -inf = NaN, which then leaks
    # through 0 * NaN). Let every query see itself; padding outputs are ignored anyway.
    allowed = (allowed & key_padding.bool()[:, None, :]) | (k_pos == q_pos)  # [B, T, T_k]
    return allowed[:, None]


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


class KVCache:
    """Pre-allocated keys and values of every layer, for fast autoregressive decoding.

    Buffers have shape ``[n_layers, B, n_heads, max_len, head_dim]`` and are allocated on the
    first :meth:`update`, with the dtype and device of the keys (so bf16 autocast just works).
    ``length`` is how many positions are stored; the model advances it after each forward.

    The caller advances ``length`` once all layers have stored a chunk (``GPTModel`` does:
    ``kv_cache.length += T``). A layer that stores twice at the same ``length`` means nobody
    advanced it, and the second chunk would overwrite the first: :meth:`update` refuses.

    Args:
        n_layers: number of transformer blocks.
        max_len: capacity in positions (usually the model's ``context_length``).

    Raises:
        ValueError: if ``n_layers`` or ``max_len`` is not a positive int.
    """

    def __init__(self, n_layers: int, max_len: int):
        for name, value in (("n_layers", n_layers), ("max_len", max_len)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.n_layers = n_layers
        self.max_len = max_len
        self.length = 0
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self._stored = [0] * n_layers  # per layer: position up to which it has stored keys

    @property
    def length(self) -> int:
        """Positions stored and complete in every layer (advance it after each forward)."""
        return self._length

    @length.setter
    def length(self, value: int) -> None:
        self._length = value
        if hasattr(self, "_stored"):  # moving back (e.g. discarding rejected tokens) frees positions
            self._stored = [min(s, value) for s in self._stored]

    def update(self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k_new, v_new`` (``[B, H, T, hd]``) after the cached positions of ``layer``.

        Returns:
            all keys and values of that layer so far, ``[B, H, length + T, hd]`` (views).

        Raises:
            ValueError: if the cache would overflow ``max_len``; if ``layer`` is out of range;
                if ``k_new``/``v_new`` are not the same ``[B, H, T, hd]`` shape, or do not fit
                the buffers; or if ``layer`` already stored keys at ``length`` (nobody advanced
                ``length`` after the previous forward: add ``T`` to it, as ``GPTModel`` does).
        """
        if not (isinstance(layer, int) and 0 <= layer < self.n_layers):
            raise ValueError(f"layer must be in 0..{self.n_layers - 1}, got {layer!r}")
        if k_new.dim() != 4 or v_new.shape != k_new.shape:
            raise ValueError(f"k_new and v_new must both be [B, H, T, hd], got {tuple(k_new.shape)} and "
                             f"{tuple(v_new.shape)}")
        B, H, T, hd = k_new.shape
        end = self.length + T
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {self.length} cached + {T} new > max_len={self.max_len}")
        if self._stored[layer] > self.length:
            raise ValueError(f"KV cache: layer {layer} already stored positions {self.length}.."
                             f"{self._stored[layer] - 1} and length was not advanced; after a forward "
                             f"through every layer, add its T to kv_cache.length (GPTModel does this)")
        if self.k is not None and (self.k.shape[1], self.k.shape[2], self.k.shape[4]) != (B, H, hd):
            raise ValueError(f"k_new has B={B}, H={H}, hd={hd} but the cache holds B={self.k.shape[1]}, "
                             f"H={self.k.shape[2]}, hd={self.k.shape[4]}; use a new cache")
        if self.k is None:
            shape = (self.n_layers, B, H, self.max_len, hd)
            self.k = torch.zeros(shape, dtype=k_new.dtype, device=k_new.device)
            self.v = torch.zeros(shape, dtype=v_new.dtype, device=v_new.device)
        self.k[layer, :, :, self.length:end] = k_new
        self.v[layer, :, :, self.length:end] = v_new
        self._stored[layer] = end
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def bytes(self) -> int:
        """Memory held by the buffers, in bytes (0 before the first update)."""
        return 0 if self.k is None else 2 * self.k.numel() * self.k.element_size()


class MultiHeadAttention(nn.Module):
    """Causal multi-head self-attention: ``forward(x: [B, T, d_in]) -> [B, T, d_out]``.

    Args:
        d_in: input feature size.
        d_out: output feature size; split into ``n_heads`` heads of ``d_out // n_heads``.
        context_length: the longest sequence allowed (size of the causal mask).
        n_heads: number of attention heads.
        dropout: dropout probability on the attention weights (training only).
        qkv_bias: whether the query/key/value projection has a bias (GPT-2: True).
        use_sdpa: use ``F.scaled_dot_product_attention`` (fused, flash on GPUs). Set False
            for the hand-written path taught in Chapter 3; both give the same result.

    Raises:
        ValueError: if a size is not a positive int, ``d_out`` is not divisible by ``n_heads``,
            ``dropout`` is not in [0, 1), or a sequence is longer than ``context_length``.
    """

    def __init__(self, d_in: int, d_out: int, context_length: int, n_heads: int,
                 dropout: float = 0.0, qkv_bias: bool = False, use_sdpa: bool = True):
        super().__init__()
        _check_sizes(d_in=d_in, d_out=d_out, context_length=context_length)
        if isinstance(n_heads, bool) or not isinstance(n_heads, int) or n_heads < 1 or d_out % n_heads != 0:
            raise ValueError(f"d_out={d_out} must be divisible by n_heads={n_heads}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        self.d_in, self.d_out, self.n_heads, self.head_dim = d_in, d_out, n_heads, d_out // n_heads
        self.context_length = context_length
        self.dropout = dropout
        self.use_sdpa = use_sdpa
        self.qkv = nn.Linear(d_in, 3 * d_out, bias=qkv_bias)  # W_q, W_k, W_v fused: one matmul
        self.out_proj = nn.Linear(d_out, d_out)  # mixes the heads back together
        # True above the diagonal = "future" positions that a query may not see.
        mask = torch.triu(torch.ones(context_length, context_length, dtype=torch.bool), diagonal=1)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                kv_cache: KVCache | None = None, layer_idx: int = 0) -> torch.Tensor:
        """
        Args:
            x: ``[B, T, d_in]``.
            attn_mask: optional key-padding mask ``[B, T_past + T]`` (True/1 = real token,
                False/0 = padding) for batched prompts of different lengths, or the boolean
                ``[B or 1, 1, T, T_past + T]`` mask that :func:`build_attention_mask` builds from it
                (a model builds it once and passes it to every layer).
            kv_cache: optional :class:`KVCache`; keys/values of ``x`` are appended to it
                and the queries attend to everything cached so far.
            layer_idx: which layer of ``kv_cache`` this module owns.

        Returns:
            ``[B, T, d_out]``. Query ``i`` attends to keys ``0 .. T_past + i`` only (causal),
            minus the padded ones.

        Raises:
            ValueError: if ``x`` is not ``[B, T, d_in]``, if ``T_past + T > context_length``,
                if ``attn_mask`` does not cover ``T_past + T`` positions, or (from
                :meth:`KVCache.update`) if the cache is full or was not advanced.
            TypeError: if a 4-D ``attn_mask`` is not boolean (a float 0/1 mask would be
                *added* to the scores by SDPA, and causality would be lost).
        """
        if x.dim() != 3 or x.size(-1) != self.d_in:  # self.d_in, not qkv.in_features: qkv may be wrapped (LoRA)
            raise ValueError(f"x must be [B, T, d_in={self.d_in}], got shape {tuple(x.shape)}")
        if attn_mask is not None and attn_mask.dim() == 4 and attn_mask.dtype != torch.bool:
            raise TypeError(f"a 4-D attn_mask must be boolean (True = may attend), as build_attention_mask "
                            f"returns; got {attn_mask.dtype}")
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split(self.d_out, dim=2)  # 3 x [B, T, d_out]
        # [B, T, d_out] -> [B, T, H, hd] -> [B, H, T, hd]: each head attends independently.
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        if kv_cache is not None:
            k, v = kv_cache.update(layer_idx, k, v)  # [B, H, T_past + T, hd]
        T_k = k.size(2)
        if T_k > self.context_length:
            raise ValueError(f"sequence length {T_k} exceeds context_length={self.context_length}")

        if attn_mask is not None and attn_mask.dim() == 4:
            allowed = attn_mask  # already built by the caller, once for all layers
        else:
            allowed = build_attention_mask(T, T_k, attn_mask, x.device)  # None means plain causal
        if self.use_sdpa:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0,
                is_causal=allowed is None and T > 1)
        else:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # [B, H, T, T_k]
            if allowed is not None:
                scores = scores.masked_fill(~allowed, float("-inf"))
            elif T > 1:  # no cached keys: the plain causal mask
                scores = scores.masked_fill(self.mask[:T, :T], float("-inf"))
            weights = torch.softmax(scores, dim=-1)
            weights = F.dropout(weights, p=self.dropout, training=self.training)
            out = weights @ v  # [B, H, T, hd]
        out = out.transpose(1, 2).reshape(B, T, self.d_out)  # merge heads: [B, T, d_out]
        return self.out_proj(out)


# Efficient variants (Chapter 3b: FlashAttention's tiling, sliding windows, sparse masks, linear
# attention) live in their own module and are re-exported here.
from shared.efficient_attention import (  # noqa: E402
    flash_attention, linear_attention, sliding_window_mask, strided_sparse_mask)

__all__ += ["flash_attention", "linear_attention", "sliding_window_mask", "strided_sparse_mask"]
