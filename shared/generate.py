"""Text generation (Chapter 6): decoding strategies, the KV-cached loop, batching, streaming.

The pieces, in the order they act on the next-token ``logits: [B, vocab_size]``:

1. :func:`apply_temperature` divides by ``T`` (``T -> 0`` is greedy, ``T = 1`` is the model's
   own distribution, ``T > 1`` flattens it);
2. :func:`top_k_filter` keeps the ``k`` highest logits;
3. :func:`top_p_filter` keeps the smallest set of tokens whose probability reaches ``p``
   (nucleus sampling, Holtzman et al., 2020, "The Curious Case of Neural Text Degeneration");
4. :func:`sample_next` draws one token with ``torch.multinomial`` (and a ``torch.Generator``
   when given), or takes the argmax when ``temperature == 0``.

This is the order Hugging Face ``transformers`` uses (its ``TemperatureLogitsWarper``,
``TopKLogitsWarper`` and ``TopPLogitsWarper``). Top-p after top-k means the nucleus is
measured on the renormalised top-k distribution.

:func:`generate_tokens` is the loop: one prefill of the prompt into a
:class:`shared.attention.KVCache`, then one token per forward pass. :func:`generate` collects its
tokens; :func:`generate_text` and :func:`stream` go from text to text.

Context length. GPT-2 has *learned absolute* position embeddings, so a model never sees
more than ``context_length`` tokens, and the cache cannot simply drop its oldest entry
(every cached key was computed at a position that would change). The documented choices:

* a prompt longer than ``context_length`` is **cropped from the left**: the model conditions
  on its last ``context_length`` tokens (the returned ids still start with the whole prompt);
* when the sequence reaches ``context_length`` during generation, the window **slides**: each
  further step re-prefills a fresh cache with the last ``context_length`` tokens. This is
  exactly what generation without a cache computes (``idx[:, -context_length:]`` each step),
  so cached and uncached generation agree at every length, but past the context every step
  costs a full forward pass again.
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

__all__ = ["generate", "generate_tokens", "generate_text", "stream", "apply_temperature",
           "top_k_filter", "top_p_filter", "sample_next", "left_pad", "find_eos_id"]


def _check_sampling_args(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not isinstance(temperature, (int, float)) or math.isnan(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"top_k must be an int >= 1 or None, got {top_k!r}")
    if top_p is not None and (not isinstance(top_p, (int, float)) or not 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide ``logits: [..., V]`` by ``temperature`` (softmax(z / T)).

    ``T < 1`` sharpens the distribution, ``T > 1`` flattens it; ``T -> 0`` tends to the argmax,
    which :func:`sample_next` handles as the special case ``temperature == 0``.

    Raises:
        ValueError: if ``temperature <= 0`` (greedy decoding never calls this).
    """
    if not isinstance(temperature, (int, float)) or math.isnan(temperature) or temperature <= 0:
        raise ValueError(f"apply_temperature needs temperature > 0, got {temperature!r}; "
                         "use temperature=0 in sample_next/generate for greedy decoding")
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest ``logits: [..., V]``; set the others to ``-inf``. Same shape.

    Tokens tied with the ``k``-th largest logit are kept too (as in Hugging Face's
    ``TopKLogitsWarper``); ``k >= V`` keeps everything.

    Raises:
        ValueError: if ``k`` is not an int >= 1.
    """
    _check_sampling_args(1.0, k, None)
    k = min(k, logits.size(-1))
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # [..., 1], the k-th largest
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of tokens whose probability mass reaches ``p``.

    Sort the probabilities in descending order; token ``i`` (in that order) is kept when the
    mass of the tokens *before* it is still below ``p``. So the token that crosses ``p`` is
    kept, and the most likely token always is. Others become ``-inf``. ``p = 1`` keeps all.
    ``logits: [..., V]`` -> same shape. Probabilities come from ``softmax(logits)`` in float32.

    Raises:
        ValueError: if ``p`` is not in ``(0, 1]``.
    """
    _check_sampling_args(1.0, None, p)
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs  # exclusive cumulative sum
    drop_sorted = mass_before >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocab order
    return logits.masked_fill(drop, float("-inf"))


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Choose the next token for each row of ``logits: [B, V]`` -> ``LongTensor[B]``.

    ``temperature == 0`` is greedy (argmax; ``top_k`` and ``top_p`` cannot change the argmax,
    so they are ignored). Otherwise: temperature, then top-k, then top-p, then one draw from
    the renormalised softmax with ``torch.multinomial``. A ``generator`` on another device
    than ``logits`` (e.g. a CPU generator for CUDA logits) is honoured by drawing on its device.

    A row's logits are shifted so that its largest is 0 before dividing by the temperature
    (softmax does not change), so even ``temperature=1e-45`` gives a valid distribution
    (the argmax) instead of ``inf / inf = NaN``.

    Raises:
        ValueError: for temperature < 0, top_k < 1 or top_p outside (0, 1]; for ``logits``
            that are not ``[B, V]``, hold a NaN, or have a row with no finite value (every
            token masked to ``-inf``: there is nothing to sample).
    """
    _check_sampling_args(temperature, top_k, top_p)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.size(-1) == 0:
        raise ValueError(f"logits must be a [B, V] tensor, got {getattr(logits, 'shape', type(logits).__name__)}")
    bad = torch.isnan(logits).any(-1) | ~torch.isfinite(logits).any(-1)  # [B]
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"logits row {row} holds a NaN or no finite value (every token is -inf): "
                         "nothing can be sampled")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float()
    logits = apply_temperature(logits - logits.amax(dim=-1, keepdim=True), temperature)  # max 0: no inf/inf
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = torch.softmax(logits, dim=-1)  # [B, V], zero where filtered (exp(-inf) = 0)
    if generator is not None and generator.device != probs.device:
        return torch.multinomial(probs.to(generator.device), 1, generator=generator).to(logits.device)[:, 0]
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0,
             device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack prompts of different lengths, padded on the **left**, for batched generation.

    Left padding puts every row's last real token in the last column, so one ``[:, -1]``
    reads the next-token logits of the whole batch and new tokens append on the right.

    Returns:
        ``idx: LongTensor[B, T_max]`` and ``attention_mask: LongTensor[B, T_max]`` (1 = real).

    Raises:
        ValueError: if there are no prompts, one of them is empty, or ``pad_id`` is negative.
        TypeError: if a prompt is a string or holds a non-integer id, or ``pad_id`` is not an int.
    """
    if isinstance(prompts, (str, bytes)) or any(isinstance(p, (str, bytes)) for p in prompts):
        raise TypeError("prompts must be sequences of token ids (encode the text first), not strings")
    if len(prompts) == 0 or any(len(p) == 0 for p in prompts):
        raise ValueError("left_pad needs at least one prompt, and every prompt needs >= 1 token")
    if isinstance(pad_id, bool) or not isinstance(pad_id, int):
        raise TypeError(f"pad_id must be an int, got {pad_id!r}")
    if pad_id < 0:
        raise ValueError(f"pad_id must be a token id >= 0, got {pad_id}")
    for p in prompts:
        if isinstance(p, torch.Tensor):
            if p.is_floating_point() or p.dtype == torch.bool:
                raise TypeError(f"prompts must hold int token ids, got a {p.dtype} tensor")
        elif any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) for i in p):
            raise TypeError(f"prompts must hold int token ids, got {list(p)[:8]!r}")
    T = max(len(p) for p in prompts)
    idx = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), T), dtype=torch.long)
    for b, p in enumerate(prompts):
        idx[b, T - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
        mask[b, T - len(p):] = 1
    return idx.to(device), mask.to(device)


def _positions(mask: torch.Tensor | None) -> torch.Tensor | None:
    """Position ids ``[B, T]`` for a left-padded window: 0 at each row's first real token."""
    return None if mask is None else (mask.long().cumsum(-1) - 1).clamp(min=0)


def _last_logits(model, idx, mask, kv_cache=None, position_ids=None) -> torch.Tensor:
    """Logits ``[B, V]`` of the last position only (no LM-head work on the other positions)."""
    if position_ids is None:
        position_ids = _positions(mask)
    with torch.no_grad():
        if hasattr(model, "hidden_states") and hasattr(model, "lm_head"):
            h = model.hidden_states(idx, attention_mask=mask, position_ids=position_ids, kv_cache=kv_cache)
            return model.lm_head(h[:, -1])
        return model(idx, attention_mask=mask, position_ids=position_ids, kv_cache=kv_cache)[:, -1]


def generate_tokens(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
                    top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
                    use_cache: bool = True, generator: torch.Generator | None = None,
                    attention_mask: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The decoding loop, one step at a time: yields ``(next_ids [B], logits [B, V])``.

    Same arguments, rules and errors as :func:`generate`. ``logits`` are the raw next-token
    logits the step sampled from. The model is put in eval mode while the iterator runs and
    restored afterwards. ``idx`` must already be on the model's device.
    """
    _check_generate_args(model, idx, max_new_tokens, temperature, top_k, top_p, attention_mask)
    _check_eos(eos_id, model)
    ctx = model.cfg.context_length
    seq = idx[:, -ctx:]  # crop from the left: the model sees at most ctx tokens
    mask = None if attention_mask is None else attention_mask[:, -ctx:].bool()
    finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    cache = None
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            if not use_cache:  # recompute the whole window: O(T) work per step
                logits = _last_logits(model, seq[:, -ctx:], None if mask is None else mask[:, -ctx:])
            elif cache is None or cache.length >= ctx:  # prefill (or slide: re-prefill the window)
                cache = model.new_kv_cache()
                logits = _last_logits(model, seq[:, -ctx:], None if mask is None else mask[:, -ctx:], cache)
            else:  # one new token attends to the cached keys/values: O(1) new work per layer
                window = None if mask is None else mask[:, -(cache.length + 1):]  # [B, past + 1]
                pos = None if window is None else window.long().sum(-1, keepdim=True) - 1  # [B, 1]
                logits = _last_logits(model, seq[:, -1:], window, cache, pos)
            nxt = sample_next(logits, temperature, top_k, top_p, generator)  # [B]
            if eos_id is not None:  # finished rows keep emitting eos
                nxt = torch.where(finished, torch.full_like(nxt, eos_id), nxt)
                finished |= nxt == eos_id
            seq = torch.cat([seq, nxt[:, None]], dim=1)[:, -ctx:]  # keep at most ctx tokens
            if mask is not None:
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)[:, -ctx:]
            yield nxt, logits
            if eos_id is not None and bool(finished.all()):
                return
    finally:
        model.train(was_training)


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _check_generate_args(model, idx, max_new_tokens, temperature, top_k, top_p, attention_mask) -> None:
    _check_sampling_args(temperature, top_k, top_p)
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.size(1) == 0:
        shape = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise ValueError(f"idx must be a LongTensor [B, T] with T >= 1 (use idx[None] for one prompt), got {shape}")
    if idx.dtype != torch.long:
        raise ValueError(f"idx must hold token ids as torch.long, got {idx.dtype}")
    if attention_mask is not None:
        if attention_mask.shape != idx.shape:
            raise ValueError(f"attention_mask must have idx's shape {tuple(idx.shape)}, got {tuple(attention_mask.shape)}")
        m = attention_mask.bool()
        if not bool(m[:, -1].all()):
            raise ValueError("attention_mask: every row needs a real last token (pad on the left; see left_pad)")
        if bool((m[:, 1:] < m[:, :-1]).any()):
            raise ValueError("attention_mask must be left-padded: zeros, then ones, in every row (see left_pad)")
    if not hasattr(model, "cfg") or not hasattr(model, "new_kv_cache"):
        raise ValueError("model must be a course model, shared.model.GPTModel or shared.llama.LlamaModel (needs .cfg and .new_kv_cache())")
    vocab_size = getattr(model.cfg, "vocab_size", None)
    if isinstance(vocab_size, int) and idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= vocab_size):
        bad = int(idx.min()) if int(idx.min()) < 0 else int(idx.max())
        raise ValueError(f"idx holds token id {bad}, outside [0, vocab_size={vocab_size}) of the model")


def _check_eos(eos_id, model) -> None:
    if eos_id is None:
        return
    vocab_size = getattr(getattr(model, "cfg", None), "vocab_size", None)
    if isinstance(eos_id, bool) or not isinstance(eos_id, int) or eos_id < 0 or (
            isinstance(vocab_size, int) and eos_id >= vocab_size):
        raise ValueError(f"eos_id must be None or a token id in [0, vocab_size={vocab_size}), got {eos_id!r}")


def generate(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
             use_cache: bool = True, generator: torch.Generator | None = None,
             attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Autoregressively extend ``idx: LongTensor[B, T]`` -> ``LongTensor[B, T + n]``.

    Args:
        model: a :class:`shared.model.GPTModel` (eval mode is used during generation).
        idx: prompt token ids ``[B, T]``, ``T >= 1``. A prompt longer than
            ``model.cfg.context_length`` is cropped from the left for the model, but the
            returned tensor starts with all of ``idx``.
        max_new_tokens: at most this many tokens are appended (``n <= max_new_tokens``).
        temperature: 0 means greedy (argmax); otherwise logits are divided by it.
        top_k: keep only the ``k`` most likely tokens (None = no limit).
        top_p: keep the smallest set of tokens whose probability reaches ``p`` (None = all).
        eos_id: a row that produces this id is finished; its later tokens are all ``eos_id``.
            Generation stops early (``n < max_new_tokens``) once every row is finished.
        use_cache: use a :class:`shared.attention.KVCache` (same tokens, far less work).
            Past ``context_length`` each step re-prefills the last ``context_length`` tokens
            (see the module docstring), which is what uncached generation computes.
        generator: a seeded ``torch.Generator`` makes sampling reproducible.
        attention_mask: ``[B, T]`` 1 for real tokens, 0 for left padding (see
            :func:`left_pad`); positions then count from each row's first real token, so
            each row sees the same next-token distributions as when generated alone (up to
            float rounding). Greedy decoding therefore gives each row the tokens it gets alone;
            *sampled* rows draw from one shared random stream, so their tokens differ from a
            row sampled on its own with the same seed.

    Raises:
        ValueError: temperature < 0, top_k < 1, top_p outside (0, 1], max_new_tokens < 0, an
            ``idx`` that is not ``[B, T >= 1]`` long or holds ids outside ``[0, vocab_size)``,
            an ``eos_id`` that is not such an id, or a mask that is not left padding.

    Example::

        >>> out = generate(model, torch.tensor([[50256]]), 20, temperature=0.8, top_k=50)  # doctest: +SKIP
    """
    _check_generate_args(model, idx, max_new_tokens, temperature, top_k, top_p, attention_mask)
    _check_eos(eos_id, model)
    device = _model_device(model)
    idx = idx.to(device)
    if attention_mask is not None:
        attention_mask = attention_mask.to(device)
    new = [nxt[:, None] for nxt, _ in generate_tokens(
        model, idx, max_new_tokens, temperature, top_k, top_p, eos_id, use_cache, generator, attention_mask)]
    return torch.cat([idx, *new], dim=1)


# ---------------------------------------------------------------------------- text in, text out

def find_eos_id(tokenizer) -> int | None:
    """The id that ends generation: the tokenizer's own ``eos_id`` when it declares one (a GGUF
    chat model's end-of-turn ``<|im_end|>``), else ``<|endoftext|>`` for a tiktoken ``Encoding``
    or a course ``BPETokenizer`` (None if the tokenizer has no such token).

    Raises:
        TypeError: if ``tokenizer`` has no ``encode`` method.
    """
    if not callable(getattr(tokenizer, "encode", None)):
        raise TypeError(f"tokenizer must have an encode() method, got {type(tokenizer).__name__}")
    eos = getattr(tokenizer, "eos_id", None)  # a tokenizer that declares its end token (GGUF: <|im_end|>)
    if isinstance(eos, int) and not isinstance(eos, bool):
        return eos
    eot = getattr(tokenizer, "eot_token", None)  # tiktoken
    if isinstance(eot, int):
        return eot
    for kwargs in ({"allowed_special": "all"}, {"allowed_special": {"<|endoftext|>"}}):
        try:
            ids = tokenizer.encode("<|endoftext|>", **kwargs)
        except Exception:  # noqa: BLE001 - tokenizers differ in what they accept
            continue
        if len(ids) == 1:
            return int(ids[0])
    return None


def _resolve_eos(tokenizer, eos_id):
    return find_eos_id(tokenizer) if isinstance(eos_id, str) and eos_id == "auto" else eos_id


def _decode(tokenizer, ids: list[int]) -> str:
    """Decode generated ids; bytes that do not yet form a whole UTF-8 character become U+FFFD."""
    if hasattr(tokenizer, "decode_bytes"):
        return tokenizer.decode_bytes(ids).decode("utf-8", errors="replace")
    return tokenizer.decode(ids)


def _prompt_ids(model, tokenizer, prompt: str, eos_id) -> torch.Tensor:
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    ids = tokenizer.encode(prompt)
    if not ids:
        if eos_id is None:
            raise ValueError("empty prompt and the tokenizer has no <|endoftext|> to start from")
        ids = [eos_id]  # GPT-2 convention: an unconditional sample starts after <|endoftext|>
    return torch.tensor([ids], dtype=torch.long, device=_model_device(model))


def _token_ids(model, tokenizer, prompt, max_new_tokens, temperature, top_k, top_p, eos_id,
               use_cache, generator) -> Iterator[int]:
    """Generated ids for one text prompt, stopping before ``eos_id``."""
    idx = _prompt_ids(model, tokenizer, prompt, eos_id)
    _check_generate_args(model, idx, max_new_tokens, temperature, top_k, top_p, None)
    for nxt, _ in generate_tokens(model, idx, max_new_tokens, temperature, top_k, top_p, eos_id,
                                  use_cache, generator):
        tok = int(nxt[0])
        if tok == eos_id:
            return
        yield tok


def _stops(stop: str | Sequence[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if any(not isinstance(s, str) or s == "" for s in stops):
        raise ValueError(f"stop sequences must be non-empty strings, got {stop!r}")
    return stops


def _cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[:min(hits)], True) if hits else (text, False)


def generate_text(model, tokenizer, prompt: str, max_new_tokens: int = 100, temperature: float = 0.0,
                  top_k: int | None = None, top_p: float | None = None,
                  stop: str | Sequence[str] | None = None, eos_id: int | None | str = "auto",
                  use_cache: bool = True, generator: torch.Generator | None = None) -> str:
    """Text in, text out: the continuation of ``prompt`` (without the prompt itself).

    Generation ends at ``max_new_tokens``, at ``eos_id`` (``"auto"``: the tokenizer's
    ``<|endoftext|>``, None: never), or when the text contains one of the ``stop`` strings; the
    text is cut just before the earliest stop string and the EOS token is not included.
    An empty prompt starts from ``<|endoftext|>`` (an unconditional sample).

    Raises:
        ValueError: for invalid sampling arguments or an empty stop string.
    """
    stops = _stops(stop)
    eos_id = _resolve_eos(tokenizer, eos_id)
    ids: list[int] = []
    for tok in _token_ids(model, tokenizer, prompt, max_new_tokens, temperature, top_k, top_p, eos_id,
                          use_cache, generator):
        ids.append(tok)
        if stops and _cut_at_stop(_decode(tokenizer, ids), stops)[1]:
            break
    return _cut_at_stop(_decode(tokenizer, ids), stops)[0]


def stream(model, tokenizer, prompt: str, max_new_tokens: int = 100, temperature: float = 0.0,
           top_k: int | None = None, top_p: float | None = None,
           stop: str | Sequence[str] | None = None, eos_id: int | None | str = "auto",
           use_cache: bool = True, generator: torch.Generator | None = None) -> Iterator[str]:
    """Yield the continuation of ``prompt`` piece by piece, as tokens are produced.

    ``"".join(stream(...)) == generate_text(...)`` for the same arguments and seed. Two
    things are held back until they are settled: bytes of a UTF-8 character split across
    tokens (only whole characters are yielded), and text that could be the start of a
    ``stop`` string.

    Raises:
        ValueError: as :func:`generate_text`.
    """
    stops = _stops(stop)
    eos_id = _resolve_eos(tokenizer, eos_id)
    use_bytes = hasattr(tokenizer, "decode_bytes")  # tiktoken and the course BPETokenizer have it
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text, sent, ids = "", 0, []
    for tok in _token_ids(model, tokenizer, prompt, max_new_tokens, temperature, top_k, top_p, eos_id,
                          use_cache, generator):
        if use_bytes:  # exact: the incremental decoder keeps an incomplete character's bytes
            text += utf8.decode(tokenizer.decode_bytes([tok]))
            settled = len(text)
        else:  # generic tokenizers: a trailing U+FFFD may be an incomplete character
            ids.append(tok)
            text = tokenizer.decode(ids)
            settled = len(text.rstrip("\ufffd"))
        cut, hit = _cut_at_stop(text, stops)
        if hit:
            if len(cut) > sent:
                yield cut[sent:]
            return
        for s in stops:  # hold back a suffix that could still grow into a stop string
            for n in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:n]):
                    settled = min(settled, len(text) - n)
                    break
        if settled > sent:
            yield text[sent:settled]
            sent = settled
    if use_bytes:
        text += utf8.decode(b"", final=True)
    cut, _ = _cut_at_stop(text, stops)
    if len(cut) > sent:
        yield cut[sent:]


# ---------------------------------------------------------------------------- Chapter 6b extras
# Penalties, min-p and beam search live in shared.decoding; speculative decoding in
# shared.speculative. They are re-exported here lazily (PEP 562), so that
# `from shared.generate import beam_search` works without an import cycle.
_EXTRAS = {"apply_repetition_penalty": "shared.decoding", "apply_frequency_penalty": "shared.decoding",
           "min_p_filter": "shared.decoding", "process_logits": "shared.decoding",
           "generate_with_penalties": "shared.decoding", "beam_search": "shared.decoding",
           "speculative_accept": "shared.speculative", "speculative_generate": "shared.speculative"}
__all__ += list(_EXTRAS)


def __getattr__(name: str):
    if name in _EXTRAS:
        import importlib

        return getattr(importlib.import_module(_EXTRAS[name]), name)
    raise AttributeError(f"module 'shared.generate' has no attribute {name!r}")
