"""The GPT-2 architecture (Chapter 4): config, blocks, model, parameter and FLOP counts.

References: Radford et al., "Language Models are Unsupervised Multitask Learners" (2019);
OpenAI's ``gpt-2/src/model.py``; Karpathy's nanoGPT ``model.py``; FLOPs from Kaplan et
al. (2020) table 1 and PaLM (Chowdhery et al., 2022) appendix B.

State-dict names (``shared.weights`` maps them to and from Hugging Face GPT-2)::

    tok_emb.weight                 [vocab_size, d_model]      (tied with lm_head.weight)
    pos_emb.weight                 [context_length, d_model]
    blocks.{i}.ln1.weight/.bias    [d_model]
    blocks.{i}.attn.qkv.weight     [3 * d_model, d_model]    (+ .bias when qkv_bias)
    blocks.{i}.attn.out_proj.*     [d_model, d_model], [d_model]
    blocks.{i}.ln2.weight/.bias    [d_model]
    blocks.{i}.mlp.fc.*            [4 * d_model, d_model], [4 * d_model]
    blocks.{i}.mlp.proj.*          [d_model, 4 * d_model], [d_model]
    final_norm.weight/.bias        [d_model]
    lm_head.weight                 [vocab_size, d_model]      (same tensor as tok_emb.weight)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from shared.attention import KVCache, MultiHeadAttention, build_attention_mask

__all__ = ["GPTConfig", "GPTModel", "LayerNorm", "GELU", "FeedForward", "TransformerBlock", "PRESETS"]

PRESETS: dict[str, dict] = {
    "gpt2-small": dict(d_model=768, n_heads=12, n_layers=12),    # 124M
    "gpt2-medium": dict(d_model=1024, n_heads=16, n_layers=24),  # 355M
    "gpt2-large": dict(d_model=1280, n_heads=20, n_layers=36),   # 774M
    "gpt2-xl": dict(d_model=1600, n_heads=25, n_layers=48),      # 1558M
}


@dataclass
class GPTConfig:
    """Hyper-parameters of a GPT. Validated on creation.

    ``GPTConfig()`` has GPT-2 small's sizes but **no QKV bias** (``qkv_bias=False``, the
    course's from-scratch default, as in nanoGPT's ``bias=False`` option): its parameter count
    is GPT-2 small's minus ``12 * 3 * 768`` biases, and GPT-2's weights do not load into it.
    For GPT-2 itself use ``GPTConfig.from_preset("gpt2-small")`` (``qkv_bias=True``).

    Attributes:
        vocab_size: number of token ids (GPT-2: 50257).
        context_length: longest sequence, in tokens (GPT-2: 1024).
        d_model: width of the residual stream (embedding size, ``C``).
        n_heads: attention heads per block; must divide ``d_model``.
        n_layers: number of transformer blocks.
        dropout: dropout probability on embeddings, attention weights and residual branches.
        qkv_bias: bias in the query/key/value projection (GPT-2: True; default False).

    Raises:
        ValueError: for non-positive sizes, ``d_model % n_heads != 0``, dropout outside [0, 1)
            or a non-bool ``qkv_bias``.
    """

    vocab_size: int = 50257
    context_length: int = 1024
    d_model: int = 768
    n_heads: int = 12
    n_layers: int = 12
    dropout: float = 0.0
    qkv_bias: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "d_model", "n_heads", "n_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {value!r}")
        if self.d_model % self.n_heads != 0:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        if not isinstance(self.qkv_bias, bool):
            raise ValueError(f"qkv_bias must be True or False, got {self.qkv_bias!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def from_preset(cls, name: str, **overrides) -> GPTConfig:
        """A GPT-2 size: ``"gpt2-small" | "gpt2-medium" | "gpt2-large" | "gpt2-xl"``.

        Example::

            >>> GPTConfig.from_preset("gpt2-small").d_model
            768
        """
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        base = dict(vocab_size=50257, context_length=1024, dropout=0.0, qkv_bias=True)
        return cls(**{**base, **PRESETS[name], **overrides})

    def to_dict(self) -> dict:
        return asdict(self)


class LayerNorm(nn.Module):
    """Layer normalisation over the last dimension (Ba et al., 2016), with scale and shift.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias``, mean and (biased) variance over
    the last dimension. Chapter 4 writes this formula by hand and checks it equals
    ``F.layer_norm``, which this module calls because it is one fused kernel.
    Shape: ``[..., C] -> [..., C]``.
    """

    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        if isinstance(d_model, bool) or not isinstance(d_model, int) or d_model < 1:
            raise ValueError(f"d_model must be a positive int, got {d_model!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"eps must be a number > 0, got {eps!r}")
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.size(-1) != self.weight.numel():
            raise ValueError(f"x must be [..., d_model={self.weight.numel()}], got shape {tuple(x.shape)}")
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class GELU(nn.Module):
    """GELU with GPT-2's tanh approximation (Hendrycks & Gimpel, 2016, eq. in section 2):
    ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``. Shape-preserving."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a tensor, got {type(x).__name__}")
        return F.gelu(x, approximate="tanh")


class FeedForward(nn.Module):
    """Position-wise MLP: ``[B, T, C] -> [B, T, 4C] -> GELU -> [B, T, C]``."""

    def __init__(self, d_model: int):
        super().__init__()
        if isinstance(d_model, bool) or not isinstance(d_model, int) or d_model < 1:
            raise ValueError(f"d_model must be a positive int, got {d_model!r}")
        self.d_model = d_model  # stored: fc may be swapped for a wrapper (LoRA) without .in_features
        self.fc = nn.Linear(d_model, 4 * d_model)  # expand: room for features
        self.act = GELU()
        self.proj = nn.Linear(4 * d_model, d_model)  # back into the residual stream

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.size(-1) != self.d_model:
            raise ValueError(f"x must be [..., d_model={self.d_model}], got shape {tuple(x.shape)}")
        return self.proj(self.act(self.fc(x)))


class TransformerBlock(nn.Module):
    """Pre-LN block: ``x + attn(ln1(x))`` then ``x + mlp(ln2(x))``. ``[B, T, C] -> [B, T, C]``.

    Pre-LN (GPT-2) keeps an un-normalised residual path from input to output, so gradients
    reach early layers undamped; post-LN (the 2017 Transformer) needs careful warmup.
    """

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if not isinstance(cfg, GPTConfig):
            raise TypeError(f"cfg must be a GPTConfig, got {type(cfg).__name__} (write GPTConfig(**d))")
        self.ln1 = LayerNorm(cfg.d_model)
        self.attn = MultiHeadAttention(cfg.d_model, cfg.d_model, cfg.context_length, cfg.n_heads,
                                       dropout=cfg.dropout, qkv_bias=cfg.qkv_bias)
        self.ln2 = LayerNorm(cfg.d_model)
        self.mlp = FeedForward(cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                kv_cache: KVCache | None = None, layer_idx: int = 0) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), attn_mask=attn_mask, kv_cache=kv_cache, layer_idx=layer_idx))
        x = x + self.drop(self.mlp(self.ln2(x)))
        return x


def _check_token_range(idx: torch.Tensor, vocab_size: int) -> None:
    """Token ids must lie in ``[0, vocab_size)``: out of range, ``nn.Embedding`` fails with a bare
    ``IndexError`` on the CPU and a device-side assert on CUDA. The CPU check is exact; on CUDA
    an asynchronous assert avoids a host sync on every forward pass."""
    if idx.numel() == 0 or idx.is_meta or torch.compiler.is_compiling():
        return
    if idx.device.type == "cuda":
        torch._assert_async(((idx >= 0) & (idx < vocab_size)).all(),
                            f"idx holds token ids outside [0, vocab_size={vocab_size})")
        return
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"idx holds token id {lo if lo < 0 else hi}, outside [0, vocab_size={vocab_size}); "
                         "was the text encoded with another tokenizer?")


class GPTModel(nn.Module):
    """A GPT-2-style decoder-only language model.

    ``forward(idx: LongTensor[B, T]) -> logits: FloatTensor[B, T, vocab_size]``, where
    ``logits[b, t]`` scores the token that follows ``idx[b, :t + 1]``.

    ``model.activation_checkpointing = True`` recomputes each block's activations during
    backward instead of storing them (``torch.utils.checkpoint``; Chen et al., 2016): less
    memory, one more forward of compute, the same results. Chapter 5b measures it.

    Raises:
        TypeError: if ``cfg`` is not a :class:`GPTConfig`.
        ValueError: if ``idx`` is not a ``[B, T]`` tensor of ``torch.long`` (or int32) ids in
            ``[0, vocab_size)``, or ``T`` (plus any cached positions) exceeds ``cfg.context_length``.
    """

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if not isinstance(cfg, GPTConfig):
            raise TypeError(f"cfg must be a GPTConfig, got {type(cfg).__name__} (write GPTConfig(**d))")
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))
        self.final_norm = LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # weight tying (Press & Wolf, 2017)
        self.activation_checkpointing = False  # see the class docstring
        self.apply(self._init_weights)
        # GPT-2: scale residual-branch outputs by 1/sqrt(2 * n_layers) so the residual
        # stream's variance does not grow with depth (two branches per block).
        for name, p in self.named_parameters():
            if name.endswith(("attn.out_proj.weight", "mlp.proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def hidden_states(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None,
                      kv_cache: KVCache | None = None) -> torch.Tensor:
        """Final-LayerNorm features ``[B, T, d_model]`` (what the LM head reads).

        Args:
            idx: token ids ``[B, T]``.
            attention_mask: optional ``[B, T_past + T]``, 1 for real tokens, 0 for padding.
            position_ids: optional ``[B, T]`` or ``[T]`` positions; default
                ``T_past .. T_past + T - 1`` (left-padded batches pass their own).
            kv_cache: optional :class:`shared.attention.KVCache`, advanced by ``T``.
        """
        if idx.dim() != 2:
            raise ValueError(f"idx must be [B, T], got shape {tuple(idx.shape)}")
        if idx.dtype not in (torch.long, torch.int32):  # what nn.Embedding takes; uint8 would wrap
            raise ValueError(f"idx must hold integer token ids (torch.long), got dtype {idx.dtype}")
        _check_token_range(idx, self.cfg.vocab_size)
        B, T = idx.shape
        past = kv_cache.length if kv_cache is not None else 0
        if past + T > self.cfg.context_length:
            raise ValueError(f"sequence length {past + T} exceeds context_length={self.cfg.context_length}; "
                             "crop the input (e.g. idx[:, -context_length:])")
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(position_ids))  # [B, T, C]
        # The same causal/padding mask serves every layer: build it once, not once per layer.
        mask = build_attention_mask(T, past + T, attention_mask, idx.device)
        recompute = (self.activation_checkpointing and self.training and torch.is_grad_enabled()
                     and kv_cache is None)
        for i, block in enumerate(self.blocks):
            if recompute:  # keep only x; backward re-runs the block (the RNG is replayed for dropout)
                x = torch.utils.checkpoint.checkpoint(block, x, mask, use_reentrant=False)
            else:
                x = block(x, attn_mask=mask, kv_cache=kv_cache, layer_idx=i)
        if kv_cache is not None:
            kv_cache.length += T
        return self.final_norm(x)

    def forward(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, kv_cache: KVCache | None = None) -> torch.Tensor:
        """Logits ``[B, T, vocab_size]`` for token ids ``idx: [B, T]`` (see :meth:`hidden_states`)."""
        return self.lm_head(self.hidden_states(idx, attention_mask, position_ids, kv_cache))

    def new_kv_cache(self) -> KVCache:
        """An empty cache sized for this model (``n_layers`` x ``context_length``)."""
        return KVCache(self.cfg.n_layers, self.cfg.context_length)

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Number of parameters, each tied tensor counted once.

        ``non_embedding=True`` leaves out the token and position embeddings (Kaplan et al.'s
        ``N``). With weight tying the LM head *is* the token embedding, so it goes too.

        Raises:
            TypeError: if ``non_embedding`` is not a bool.
        """
        if not isinstance(non_embedding, bool):
            raise TypeError(f"non_embedding must be True or False, got {non_embedding!r}")
        n = sum(p.numel() for p in self.parameters())  # parameters() de-duplicates tied tensors
        if non_embedding:
            n -= self.tok_emb.weight.numel() + self.pos_emb.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward) at sequence length ``seq_len``.

        ``6 * N + 12 * n_layers * seq_len * d_model`` (PaLM, appendix B), where ``N`` counts
        every weight used in a matmul: the non-embedding parameters plus the LM head
        (``vocab_size * d_model``). The second term is attention's ``QK^T`` and ``AV`` over the
        *full* ``T x T`` score matrix, as PaLM counts it (and as a dense kernel computes it);
        counting only the causal half, as Kaplan et al. do, gives ``6 * n_layers * T * d_model``.
        Forward only is one third of this.

        Raises:
            ValueError: if ``seq_len`` is not an int in ``1 .. context_length``.
        """
        cfg = self.cfg
        if seq_len is not None and (isinstance(seq_len, bool) or not isinstance(seq_len, int)
                                    or not 1 <= seq_len <= cfg.context_length):
            raise ValueError(f"seq_len must be an int in 1..context_length={cfg.context_length}, got {seq_len!r}")
        T = cfg.context_length if seq_len is None else seq_len
        n_matmul = self.num_parameters(non_embedding=True) + cfg.vocab_size * cfg.d_model
        return 6.0 * n_matmul + 12.0 * cfg.n_layers * T * cfg.d_model
