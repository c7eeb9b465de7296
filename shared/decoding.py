"""Better decoding (Chapter 6b): repetition/frequency penalties, min-p, and beam search.

Re-exported from :mod:`shared.generate`. The pieces act on next-token ``logits: [B, V]``:

* :func:`apply_repetition_penalty` (Keskar et al., 2019, "CTRL", section 4.1): every token
  already in the sequence has its logit divided by ``penalty`` when positive and multiplied
  by it when negative, so it always becomes less likely (``penalty > 1``).
* :func:`apply_frequency_penalty` (the OpenAI API's ``frequency_penalty`` and
  ``presence_penalty``): ``z_i -= frequency * count_i + presence * [count_i > 0]``.
  Unlike CTRL's penalty it grows with how often a token was used.
* :func:`min_p_filter` (Nguyen et al., 2024, "Turning Up the Heat: Min-p Sampling"): keep
  tokens with ``p_i >= min_p * max_j p_j``. The cut-off scales with the model's confidence,
  so a confident step keeps few tokens and an uncertain one many.
* :func:`beam_search` keeps the ``num_beams`` most likely partial sequences and ranks finished
  ones by ``sum log p / length ** length_penalty`` (Wu et al., 2016, GNMT eq. 14 in its simple
  form, as Hugging Face's ``BeamSearchScorer``).

:func:`generate_with_penalties` is :func:`shared.generate.generate` with these extras; its
processing order is penalties, then temperature, top-k, top-p, min-p (Hugging Face applies
repetition penalties before its warpers too).
"""

from __future__ import annotations

import math

import torch

__all__ = ["apply_repetition_penalty", "apply_frequency_penalty", "min_p_filter", "process_logits",
           "generate_with_penalties", "beam_search"]


def _check_prev(logits: torch.Tensor, prev_ids: torch.Tensor) -> None:
    if not isinstance(prev_ids, torch.Tensor) or prev_ids.dim() != 2 or prev_ids.size(0) != logits.size(0):
        raise ValueError(f"prev_ids must be a LongTensor [B, T] with B = logits.size(0) = {logits.size(0)}, "
                         f"got {tuple(prev_ids.shape) if isinstance(prev_ids, torch.Tensor) else type(prev_ids).__name__}")


def apply_repetition_penalty(logits: torch.Tensor, prev_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty: ``logits: [B, V]``, ``prev_ids: [B, T]`` -> ``[B, V]``.

    For each token present in a row of ``prev_ids`` (however often): ``z / penalty`` if
    ``z > 0`` else ``z * penalty``. ``penalty = 1`` changes nothing.

    Raises:
        ValueError: if ``penalty <= 0`` or ``prev_ids`` does not match the batch.
    """
    if not isinstance(penalty, (int, float)) or isinstance(penalty, bool) or not penalty > 0:
        raise ValueError(f"repetition_penalty must be a number > 0 (1 = off), got {penalty!r}")
    _check_prev(logits, prev_ids)
    if penalty == 1.0 or prev_ids.size(1) == 0:
        return logits
    seen = torch.gather(logits, 1, prev_ids)                         # [B, T] logits of used tokens
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(1, prev_ids, seen)                         # duplicates write the same value


def apply_frequency_penalty(logits: torch.Tensor, prev_ids: torch.Tensor, frequency: float = 0.0,
                            presence: float = 0.0) -> torch.Tensor:
    """``z_i - frequency * count_i - presence * [count_i > 0]`` for ``logits: [B, V]``.

    ``count_i`` is how often token ``i`` occurs in that row of ``prev_ids: [B, T]``.

    Raises:
        ValueError: for non-numeric penalties or ``prev_ids`` that do not match the batch.
    """
    for name, v in (("frequency_penalty", frequency), ("presence_penalty", presence)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or math.isnan(v):
            raise ValueError(f"{name} must be a number, got {v!r}")
    _check_prev(logits, prev_ids)
    if (frequency == 0 and presence == 0) or prev_ids.size(1) == 0:
        return logits
    counts = torch.zeros_like(logits).scatter_add_(1, prev_ids, torch.ones_like(prev_ids, dtype=logits.dtype))
    return logits - frequency * counts - presence * (counts > 0).to(logits.dtype)


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Min-p: keep tokens with ``p_i >= min_p * p_max``, set the rest to ``-inf``. ``[..., V]`` -> same.

    The most likely token always survives; ``min_p = 0`` keeps everything.

    Raises:
        ValueError: if ``min_p`` is not in ``[0, 1]``.
    """
    if not isinstance(min_p, (int, float)) or isinstance(min_p, bool) or not 0.0 <= min_p <= 1.0:
        raise ValueError(f"min_p must be in [0, 1], got {min_p!r}")
    probs = torch.softmax(logits.float(), dim=-1)
    threshold = min_p * probs.amax(dim=-1, keepdim=True)            # scales with confidence
    return logits.masked_fill(probs < threshold, float("-inf"))


def process_logits(logits: torch.Tensor, prev_ids: torch.Tensor | None = None, temperature: float = 1.0,
                   top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
                   repetition_penalty: float = 1.0, frequency_penalty: float = 0.0,
                   presence_penalty: float = 0.0) -> torch.Tensor:
    """All of the above in order, on ``logits: [B, V]`` -> float ``[B, V]`` (``-inf`` = removed).

    Penalties (need ``prev_ids``), then temperature (skipped when 0: the caller takes the
    argmax), top-k, top-p and min-p. ``softmax`` of the result is the distribution sampled from.
    """
    from shared.generate import _check_sampling_args, apply_temperature, top_k_filter, top_p_filter

    _check_sampling_args(temperature, top_k, top_p)
    z = logits.float()
    if prev_ids is not None:
        z = apply_repetition_penalty(z, prev_ids, repetition_penalty)
        z = apply_frequency_penalty(z, prev_ids, frequency_penalty, presence_penalty)
    if temperature > 0:
        z = apply_temperature(z, temperature)
    if top_k is not None:
        z = top_k_filter(z, top_k)
    if top_p is not None:
        z = top_p_filter(z, top_p)
    if min_p is not None:
        z = min_p_filter(z, min_p)
    return z


class _CachedStepper:
    """Feeds new tokens to ``model`` with a KV cache; returns the logits of the last position.

    Keeps every row's whole sequence; within the context it feeds only the tokens the cache
    has not seen, past it re-prefills the last ``context_length`` tokens (as generate does).
    """

    def __init__(self, model):
        self.model, self.ctx, self.cache = model, model.cfg.context_length, None

    def logits(self, seq: torch.Tensor) -> torch.Tensor:
        from shared.generate import _last_logits

        if self.cache is None or seq.size(1) > self.ctx:
            self.cache = self.model.new_kv_cache()
            return _last_logits(self.model, seq[:, -self.ctx:], None, self.cache)
        return _last_logits(self.model, seq[:, self.cache.length:], None, self.cache)

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep cache rows ``rows`` (beam search picks which beams survive)."""
        if self.cache is not None and self.cache.k is not None:
            self.cache.k, self.cache.v = self.cache.k[:, rows], self.cache.v[:, rows]


def generate_with_penalties(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
                            top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
                            repetition_penalty: float = 1.0, frequency_penalty: float = 0.0,
                            presence_penalty: float = 0.0, penalty_window: int | None = None,
                            eos_id: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """:func:`shared.generate.generate` plus penalties and min-p: ``[B, T]`` -> ``[B, T + n]``.

    Args:
        penalty_window: penalise only the last this many tokens (None: the whole sequence,
            prompt included, as Hugging Face does).
        others: as :func:`process_logits` and :func:`shared.generate.generate`; temperature 0
            is greedy on the penalised logits.

    Raises:
        ValueError: for invalid sampling or penalty arguments (as those functions).
    """
    from shared.generate import _check_generate_args, _model_device, sample_next

    _check_generate_args(model, idx, max_new_tokens, temperature, top_k, top_p, None)
    if penalty_window is not None and (not isinstance(penalty_window, int) or penalty_window < 1):
        raise ValueError(f"penalty_window must be an int >= 1 or None, got {penalty_window!r}")
    seq = idx.to(_model_device(model))
    finished = torch.zeros(seq.size(0), dtype=torch.bool, device=seq.device)
    stepper, was_training = _CachedStepper(model), model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            logits = stepper.logits(seq)                              # [B, V]
            prev = seq if penalty_window is None else seq[:, -penalty_window:]
            z = process_logits(logits, prev, temperature, top_k, top_p, min_p, repetition_penalty,
                               frequency_penalty, presence_penalty)
            nxt = z.argmax(-1) if temperature == 0 else sample_next(z, 1.0, generator=generator)
            if eos_id is not None:
                nxt = torch.where(finished, torch.full_like(nxt, eos_id), nxt)
                finished |= nxt == eos_id
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            if eos_id is not None and bool(finished.all()):
                break
    finally:
        model.train(was_training)
    return seq


def beam_search(model, idx: torch.Tensor, max_new_tokens: int, num_beams: int = 4,
                length_penalty: float = 1.0, eos_id: int | None = None) -> tuple[torch.Tensor, float]:
    """The most likely continuation found with ``num_beams`` beams, for one prompt ``idx: [1, T]``.

    Each step extends every live beam by every token, scores ``sum log p``, and keeps the
    ``num_beams`` best; a candidate ending in ``eos_id`` is set aside as finished. At the end
    (``max_new_tokens`` or no live beams, or when no live beam can still beat the finished
    ones under ``length_penalty <= 0``) the best of the finished and live beams by
    ``sum log p / n_generated ** length_penalty`` wins. ``length_penalty > 0`` favours longer
    sequences (a sum of log-probabilities only falls with length), ``0`` is the raw sum.
    With ``num_beams = 1`` this is greedy decoding.

    Returns:
        ``(ids: LongTensor[1, T + n], score)``: the winning sequence (its EOS included) and
        its length-normalised log-probability (nats).

    Raises:
        ValueError: for a batch other than 1, ``num_beams < 1``, a non-numeric ``length_penalty``,
            or the usual :func:`shared.generate.generate` argument errors.
    """
    from shared.generate import _check_generate_args, _model_device

    _check_generate_args(model, idx, max_new_tokens, 0.0, None, None, None)
    if idx.size(0) != 1:
        raise ValueError(f"beam_search takes one prompt (idx [1, T]), got batch {idx.size(0)}")
    if not isinstance(num_beams, int) or isinstance(num_beams, bool) or num_beams < 1:
        raise ValueError(f"num_beams must be an int >= 1, got {num_beams!r}")
    if not isinstance(length_penalty, (int, float)) or isinstance(length_penalty, bool) or math.isnan(length_penalty):
        raise ValueError(f"length_penalty must be a number, got {length_penalty!r}")
    idx = idx.to(_model_device(model))
    if max_new_tokens == 0:
        return idx, 0.0
    norm = lambda s, n: s / n ** length_penalty  # noqa: E731 - the ranking score
    beams, scores = idx, torch.zeros(1, device=idx.device)           # live beams [n_live, T + t], sum log p
    finished: list[tuple[float, torch.Tensor]] = []                 # (normalised score, ids [T + n])
    stepper, was_training = _CachedStepper(model), model.training
    model.eval()
    try:
        for t in range(1, max_new_tokens + 1):
            logp = torch.log_softmax(stepper.logits(beams).float(), dim=-1)  # [n_live, V]
            V = logp.size(-1)
            cand = (scores[:, None] + logp).reshape(-1)               # [n_live * V]
            top = torch.topk(cand, min(2 * num_beams, cand.numel()))  # enough to refill after EOS
            keep_rows, keep_tok, keep_scores = [], [], []
            for s, flat in zip(top.values.tolist(), top.indices.tolist()):
                row, tok = divmod(flat, V)
                if eos_id is not None and tok == eos_id:
                    finished.append((norm(s, t), torch.cat([beams[row], beams.new_tensor([tok])])))
                else:
                    keep_rows.append(row), keep_tok.append(tok), keep_scores.append(s)
                if len(keep_rows) == num_beams:
                    break
            finished = sorted(finished, key=lambda f: -f[0])[:num_beams]
            if not keep_rows:
                break
            rows = torch.tensor(keep_rows, device=idx.device)
            stepper.reorder(rows)
            beams = torch.cat([beams[rows], torch.tensor(keep_tok, device=idx.device)[:, None]], dim=1)
            scores = torch.tensor(keep_scores, device=idx.device)
            # A sum of log-probs only falls as a beam grows; with length_penalty <= 0 the
            # normalised score cannot rise either, so a full set of better finished beams is final.
            if len(finished) == num_beams and length_penalty <= 0 and finished[-1][0] >= norm(float(scores[0]), t):
                break
    finally:
        model.train(was_training)
    live = [(norm(float(s), beams.size(1) - idx.size(1)), b) for s, b in zip(scores, beams)] if keep_rows else []
    best_score, best = max(finished + live, key=lambda f: f[0])
    return best[None], float(best_score)
