"""Speculative decoding (Chapter 6b): a small draft model proposes, the target model verifies.

Re-exported from :mod:`shared.generate`. One *round*:

1. the draft model generates ``k`` tokens ``x_1..x_k`` one by one, with distributions ``q_i``;
2. the target runs **once** over all of them (``k + 1`` positions in one forward pass, like a
   prefill) and gives its distributions ``p_1..p_{k+1}``;
3. each draft token is accepted with probability ``min(1, p_i(x_i) / q_i(x_i))``; at the first
   rejection a replacement is drawn from the residual ``norm(max(0, p_i - q_i))`` and the round
   ends; if all ``k`` are accepted, a bonus token is drawn from ``p_{k+1}``.

Every emitted token is distributed exactly as the target alone would sample it (Leviathan et
al., 2023, "Fast Inference from Transformers via Speculative Decoding", algorithm 1 and
theorem 3.5; Chen et al., 2023, "Accelerating Large Language Model Decoding with Speculative
Sampling", algorithm 2). Greedy decoding is the special case "accept while the draft's token is
the target's argmax", so its output equals the target's greedy output token for token.

Each round costs ``k`` draft steps and one target pass, and yields between 1 and ``k + 1``
tokens. It pays off when the target's cost per pass hardly grows with ``k + 1`` positions
(memory-bound decoding of a large model) and the draft is much cheaper and often right.
"""

from __future__ import annotations

import torch

__all__ = ["speculative_accept", "speculative_generate"]


def speculative_accept(p: torch.Tensor, q: torch.Tensor, draft: torch.Tensor,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The modified rejection rule, for ``B`` independent rounds at once.

    Args:
        p: target probabilities ``[B, k + 1, V]`` (rows sum to 1).
        q: draft probabilities ``[B, k, V]``; ``draft[b, i]`` was drawn from ``q[b, i]``.
        draft: ``LongTensor[B, k]``.

    Returns:
        ``(n_accepted: LongTensor[B] in 0..k, next_token: LongTensor[B])``: the round emits
        ``draft[b, :n_accepted[b]]`` then ``next_token[b]``.

    Raises:
        ValueError: if the shapes do not fit together.
    """
    B, k = draft.shape
    if p.shape[:2] != (B, k + 1) or q.shape != (B, k, p.size(-1)):
        raise ValueError(f"need p [B, k+1, V], q [B, k, V], draft [B, k]; got {tuple(p.shape)}, "
                         f"{tuple(q.shape)}, {tuple(draft.shape)}")
    p_x = p[:, :k].gather(-1, draft[..., None])[..., 0]              # [B, k] p_i(x_i)
    q_x = q.gather(-1, draft[..., None])[..., 0]                     # [B, k] q_i(x_i) > 0
    u = torch.rand(B, k, generator=generator, device=p.device if generator is None else generator.device).to(p.device)
    accepted = u < p_x / q_x                                         # min(1, ratio): u < 1 always
    n_acc = accepted.long().cumprod(dim=1).sum(dim=1)                # leading run of acceptances
    rows = torch.arange(B, device=p.device)
    p_at = p[rows, n_acc]                                            # [B, V] where the round stops
    q_at = torch.cat([q, q.new_zeros(B, 1, p.size(-1))], dim=1)[rows, n_acc]  # 0 after k accepts
    resid = (p_at - q_at).clamp(min=0)                               # residual max(0, p - q)
    mass = resid.sum(-1, keepdim=True)
    resid = torch.where(mass > 0, resid / mass.clamp(min=1e-30), p_at)  # p == q: never rejected
    nxt = _draw(resid, generator)
    return n_acc, nxt


def _draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw per row of ``probs: [B, V]`` (on the generator's device if it has one)."""
    if generator is not None and generator.device != probs.device:
        return torch.multinomial(probs.to(generator.device), 1, generator=generator).to(probs.device)[:, 0]
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def _all_logits(model, ids: torch.Tensor, cache) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, kv_cache=cache)                            # [1, n, V]


def speculative_generate(target, draft, idx: torch.Tensor, max_new_tokens: int, k: int = 4,
                         temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                         eos_id: int | None = None, generator: torch.Generator | None = None,
                         return_stats: bool = False):
    """Generate with ``target``'s distribution, proposing ``k`` tokens at a time with ``draft``.

    Args:
        target, draft: models with the same ``cfg.vocab_size`` (the course ``GPTModel``, or any
            model with ``.cfg`` and ``.new_kv_cache()`` whose forward takes ``kv_cache=``).
        idx: one prompt ``LongTensor[1, T]``; ``T + max_new_tokens`` must fit both contexts.
        k: draft tokens per round (>= 1).
        temperature, top_k, top_p: as :func:`shared.generate.generate`, applied to both
            models' logits (``temperature = 0``: greedy, output equals ``generate(target, ...)``).
        eos_id: stop after this token.
        return_stats: also return ``{"rounds", "drafted", "accepted", "acceptance_rate",
            "tokens_per_round"}``.

    Returns:
        ``ids: LongTensor[1, T + n]`` (and the stats dict when asked).

    Raises:
        ValueError: different vocabularies, a batch other than 1, ``k < 1``, a sequence that
            does not fit a context, or invalid sampling arguments.
    """
    from shared.decoding import process_logits
    from shared.generate import _check_generate_args, _model_device

    for name, m in (("target", target), ("draft", draft)):
        _check_generate_args(m, idx, max_new_tokens, temperature, top_k, top_p, None)
    if target.cfg.vocab_size != draft.cfg.vocab_size:
        raise ValueError(f"draft and target must share a vocabulary: target vocab_size={target.cfg.vocab_size}, "
                         f"draft vocab_size={draft.cfg.vocab_size}")
    if idx.size(0) != 1:
        raise ValueError(f"speculative_generate takes one prompt (idx [1, T]), got batch {idx.size(0)}")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k (draft tokens per round) must be an int >= 1, got {k!r}")
    ctx = min(target.cfg.context_length, draft.cfg.context_length)
    if idx.size(1) + max_new_tokens > ctx:
        raise ValueError(f"prompt ({idx.size(1)}) + max_new_tokens ({max_new_tokens}) exceeds the context "
                         f"({ctx}); speculative decoding here does not slide the window")
    device = _model_device(target)
    seq = idx.to(device)
    t_cache, d_cache = target.new_kv_cache(), draft.new_kv_cache()
    greedy = temperature == 0
    dist = lambda z: torch.softmax(process_logits(z, None, temperature, top_k, top_p), -1)  # noqa: E731
    stats = {"rounds": 0, "drafted": 0, "accepted": 0}
    modes = [(m, m.training) for m in (target, draft)]
    for m, _ in modes:
        m.eval()
    try:
        while seq.size(1) - idx.size(1) < max_new_tokens:
            L = seq.size(1)
            k_eff = min(k, max_new_tokens - (L - idx.size(1)) - 1)   # never emit past the budget
            # 1. draft k_eff tokens (feeding whatever its cache has not seen yet)
            drafted, qs = [], []
            if k_eff > 0:
                z = _all_logits(draft, seq[:, d_cache.length:], d_cache)[:, -1]     # [1, V]
                for i in range(k_eff):
                    if greedy:
                        tok = z.argmax(-1)
                    else:
                        qs.append(dist(z))
                        tok = _draw(qs[-1], generator)
                    drafted.append(tok)
                    if i < k_eff - 1:
                        z = _all_logits(draft, tok[:, None], d_cache)[:, -1]
            d = torch.stack(drafted, 1) if drafted else seq.new_zeros(1, 0)          # [1, k_eff]
            # 2. the target scores every draft position in one pass: [1, k_eff + 1, V]
            zt = _all_logits(target, torch.cat([seq[:, t_cache.length:], d], 1), t_cache)[:, -(k_eff + 1):]
            # 3. accept / reject
            if greedy:
                best = zt.argmax(-1)                                  # [1, k_eff + 1]
                match = (best[:, :k_eff] == d).long().cumprod(1)
                n_acc = int(match.sum())
                nxt = best[:, n_acc]
            else:
                p = torch.softmax(process_logits(zt[0], None, temperature, top_k, top_p), -1)[None]
                q = torch.stack(qs, 1) if qs else p.new_zeros(1, 0, p.size(-1))
                n_acc_t, nxt = speculative_accept(p, q, d, generator)
                n_acc = int(n_acc_t[0])
            new = torch.cat([d[:, :n_acc], nxt[:, None]], 1)         # 1 .. k_eff + 1 tokens
            # 4. roll both caches back to the accepted prefix (stale slots get overwritten)
            t_cache.length = L + n_acc
            d_cache.length = min(d_cache.length, L + n_acc)
            stats["rounds"] += 1
            stats["drafted"] += k_eff
            stats["accepted"] += n_acc
            if eos_id is not None and bool((new == eos_id).any()):
                cut = int((new[0] == eos_id).nonzero()[0]) + 1
                seq = torch.cat([seq, new[:, :cut]], 1)
                break
            seq = torch.cat([seq, new], 1)
    finally:
        for m, was in modes:
            m.train(was)
    if not return_stats:
        return seq
    stats["acceptance_rate"] = stats["accepted"] / max(1, stats["drafted"])
    stats["tokens_per_round"] = (seq.size(1) - idx.size(1)) / max(1, stats["rounds"])
    return seq, stats
