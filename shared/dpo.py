"""Direct Preference Optimization (Chapter 7c), written from scratch.

Reference: R. Rafailov, A. Sharma, E. Mitchell, S. Ermon, C. D. Manning, C. Finn, "Direct
Preference Optimization: Your Language Model is Secretly a Reward Model" (NeurIPS 2023),
arXiv:2305.18290, eq. 7:

    L_DPO = -E[ log σ( β log π(y_w|x)/π_ref(y_w|x) - β log π(y_l|x)/π_ref(y_l|x) ) ]

for a prompt ``x`` with a preferred ("chosen") answer ``y_w`` and a dispreferred ("rejected")
answer ``y_l``. ``π`` is the policy being trained, ``π_ref`` a frozen copy of the starting
(SFT) model, and ``β > 0`` sets how far the policy may move from the reference: the implicit
reward of an answer is ``r(x, y) = β log π(y|x)/π_ref(y|x)`` (section 5), and the loss is a
logistic loss on the reward *margin* ``r(x, y_w) - r(x, y_l)``.

``log π(y|x)`` is the log-probability of the whole answer: the **sum** over the answer's
tokens of ``log π(y_t | x, y_<t)``, with the prompt's tokens excluded (:func:`sequence_logprobs`).
The structure (chosen and rejected in one batch; rewards returned for logging) follows
TRL's ``DPOTrainer`` (``trl/trainer/dpo_trainer.py``) and the authors' ``eric-mitchell/direct-preference-optimization``.

Usage::

    ids, mask = preference_collate(pairs, pad_id)                     # [2B, T]: chosen rows, then rejected
    logps = sequence_logprobs(policy, ids, mask)                      # [2B]
    with torch.no_grad():
        ref_logps = sequence_logprobs(reference, ids, mask)
    loss, r_w, r_l = dpo_loss(logps[:B], logps[B:], ref_logps[:B], ref_logps[B:], beta=0.1)
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from shared.train import autocast_context, make_grad_scaler, optimizer_step, shuffled_batches

__all__ = ["sequence_logprobs", "dpo_loss", "preference_collate", "train_dpo", "sample_preference_pairs"]


def sequence_logprobs(model: nn.Module, ids: torch.Tensor, response_mask: torch.Tensor,
                      attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sum of the log-probabilities of the response tokens of each sequence: ``[B]``.

    ``logits = model(ids)`` (``[B, T, vocab_size]``); the token at position ``t`` is predicted
    by the logits at ``t - 1``, so ``log p(ids[:, t]) = log_softmax(logits[:, t - 1])[ids[:, t]]``.
    Only positions with ``response_mask[:, t] = 1`` count: the prompt (and padding) tokens are
    conditioned on, never scored. The result is a sum, not a mean: ``log π(y|x)`` of DPO eq. 7
    is the log-probability of the whole answer.

    Args:
        model: maps ``ids [B, T]`` (and ``attention_mask=`` if given) to logits ``[B, T, V]``.
        ids: token ids ``[B, T]`` (prompt then response, right padding allowed).
        response_mask: ``[B, T]``, 1/True on the response tokens to score, 0/False elsewhere.
            Position 0 has no logits before it and must be 0.
        attention_mask: optional ``[B, T]`` padding mask passed to the model.

    Returns:
        ``[B]`` float tensor (differentiable through ``model``), in nats.

    Raises:
        TypeError: if ``ids`` is not an integer tensor.
        ValueError: if ``ids`` is not 2-D, the masks' shapes differ from ``ids``, the mask holds
            values other than 0/1, marks position 0, or a row has no response token.
    """
    if not torch.is_tensor(ids) or ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"ids must be an integer tensor, got {getattr(ids, 'dtype', type(ids).__name__)}")
    if ids.dim() != 2:
        raise ValueError(f"ids must be [B, T], got shape {tuple(ids.shape)}")
    if not torch.is_tensor(response_mask) or response_mask.shape != ids.shape:
        raise ValueError(f"response_mask must have the shape of ids {tuple(ids.shape)}, "
                         f"got {tuple(getattr(response_mask, 'shape', ()))}")
    if attention_mask is not None and attention_mask.shape != ids.shape:
        raise ValueError(f"attention_mask must have the shape of ids {tuple(ids.shape)}, got {tuple(attention_mask.shape)}")
    values = response_mask.to(torch.float64)
    if ((values != 0) & (values != 1)).any():
        raise ValueError("response_mask must hold only 0/1 (or False/True)")
    m = response_mask.to(torch.int64)
    if m[:, 0].any():
        raise ValueError("response_mask[:, 0] must be 0: the first token has no prediction before it")
    if (m.sum(1) == 0).any():
        raise ValueError(f"rows {m.sum(1).eq(0).nonzero().flatten().tolist()} of response_mask have no response token")
    logits = model(ids) if attention_mask is None else model(ids, attention_mask=attention_mask)  # [B, T, V]
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)                                    # [B, T-1, V]
    token_logp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)                               # [B, T-1]
    return (token_logp * m[:, 1:].to(token_logp.dtype)).sum(-1)                              # [B]


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DPO loss (Rafailov et al. 2023, eq. 7) and the implicit rewards.

    ``chosen_rewards = β (log π(y_w|x) - log π_ref(y_w|x))``, likewise ``rejected_rewards``;
    ``loss = mean(-log σ(chosen_rewards - rejected_rewards))``. At the start (policy = reference)
    both rewards are 0 and the loss is ``log 2``. Its gradient raises the chosen answer's
    log-probability and lowers the rejected one's, weighted by ``σ(-margin)``: pairs the
    policy already ranks right (relative to the reference) count less (section 4, "What does
    the DPO update do?").

    Args:
        policy_chosen_logps, policy_rejected_logps: ``[B]`` summed response log-probs under the
            policy (:func:`sequence_logprobs`), differentiable.
        ref_chosen_logps, ref_rejected_logps: ``[B]``, the same under the frozen reference.
        beta: ``β > 0``, the strength of the implicit KL constraint (typically 0.1 to 0.5).

    Returns:
        ``(loss, chosen_rewards [B], rejected_rewards [B])``; the rewards are detached (for logging:
        the reward margin ``chosen - rejected`` and the preference accuracy ``mean(margin > 0)``).

    Raises:
        TypeError: if a log-prob is not a float tensor.
        ValueError: if a log-prob is not 1-D, the shapes differ or are empty, or ``beta`` is
            not a finite number > 0.
    """
    named = {"policy_chosen_logps": policy_chosen_logps, "policy_rejected_logps": policy_rejected_logps,
             "ref_chosen_logps": ref_chosen_logps, "ref_rejected_logps": ref_rejected_logps}
    for name, t in named.items():
        if not torch.is_tensor(t) or not t.is_floating_point():
            raise TypeError(f"{name} must be a float tensor, got {getattr(t, 'dtype', type(t).__name__)}")
        if t.dim() != 1 or t.numel() == 0 or t.shape != policy_chosen_logps.shape:
            raise ValueError(f"{name} must be a non-empty 1-D [B] tensor (one summed log-prob per pair) of the "
                             f"shape of policy_chosen_logps {tuple(policy_chosen_logps.shape)}, got {tuple(t.shape)}")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    chosen_logratios = policy_chosen_logps - ref_chosen_logps          # log π/π_ref (y_w)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps    # log π/π_ref (y_l)
    logits = beta * (chosen_logratios - rejected_logratios)             # reward margin, [B]
    loss = -F.logsigmoid(logits).mean()
    return loss, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def preference_collate(pairs: Sequence[tuple[Sequence[int], Sequence[int], Sequence[int]]], pad_id: int,
                       max_length: int | None = None,
                       device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch ``(prompt_ids, chosen_ids, rejected_ids)`` triples: ``(ids [2B, T], response_mask [2B, T])``.

    Rows ``0..B-1`` are ``prompt + chosen``, rows ``B..2B-1`` are ``prompt + rejected`` (one forward
    pass scores both), right-padded with ``pad_id``; ``response_mask`` is 1 on the answer's tokens.
    With ``max_length``, a sequence longer than it keeps its **last** ``max_length`` tokens (the
    prompt is cut from the left, the answer kept).

    Raises:
        ValueError: for an empty batch, an empty prompt or answer, or an answer longer than
            ``max_length - 1``.
    """
    if not pairs:
        raise ValueError("empty batch of preference pairs")
    rows = []
    for side in (1, 2):
        for i, triple in enumerate(pairs):
            prompt, response = list(triple[0]), list(triple[side])
            if not prompt or not response:
                raise ValueError(f"pair {i}: prompt and answers must be non-empty")
            if max_length is not None:
                if len(response) > max_length - 1:
                    raise ValueError(f"pair {i}: answer of {len(response)} tokens does not fit max_length={max_length}")
                prompt = prompt[-(max_length - len(response)):]
            rows.append((prompt + response, [0] * len(prompt) + [1] * len(response)))
    T = max(len(s) for s, _ in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for r, (s, m) in enumerate(rows):
        ids[r, :len(s)] = torch.tensor(s)
        mask[r, :len(m)] = torch.tensor(m)
    if device is not None:
        ids, mask = ids.to(device), mask.to(device)
    return ids, mask


def train_dpo(policy: nn.Module, reference: nn.Module, pairs: Sequence[tuple[list[int], list[int], list[int]]], *,
              steps: int, beta: float = 0.1, batch_size: int = 16, lr: float = 1e-5, pad_id: int = 0,
              seed: int = 0, device: torch.device | str = "cpu", log_every: int = 0) -> dict:
    """Train ``policy`` with :func:`dpo_loss` against the frozen ``reference`` on preference ``pairs``.

    Each step takes ``batch_size`` pairs of a shuffled epoch (``random.Random(seed)``), scores
    chosen and rejected under both models (the reference under ``no_grad``), and takes an AdamW
    step with gradient clipping at 1.0. ``reference`` is put in eval mode and never updated.

    Returns:
        ``{"loss", "margin", "accuracy", "chosen_reward", "rejected_reward"}`` (one float per
        step; ``accuracy`` is the fraction of the batch with margin > 0) and ``"seconds"``.

    Raises:
        ValueError: if ``policy`` is ``reference``, nothing is trainable, ``steps < 1``, or
            ``pairs`` is empty.
    """
    if policy is reference:
        raise ValueError("policy and reference must be different modules (copy.deepcopy the SFT model)")
    params = [p for p in policy.parameters() if p.requires_grad]
    if not params:
        raise ValueError("policy has no trainable parameters")
    if steps < 1 or not pairs:
        raise ValueError(f"need steps >= 1 and pairs, got steps={steps}, {len(pairs)} pairs")
    reference.eval().requires_grad_(False)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    scaler = make_grad_scaler(device)  # enabled only under fp16 (a T4)
    batches = shuffled_batches(len(pairs), batch_size, random.Random(seed))  # epoch after shuffled epoch
    max_len = getattr(getattr(policy, "cfg", None), "context_length", None)
    hist = {k: [] for k in ("loss", "margin", "accuracy", "chosen_reward", "rejected_reward")}
    policy.train()
    t0 = time.perf_counter()
    for step in range(steps):
        chunk = next(batches)
        ids, mask = preference_collate([pairs[i] for i in chunk], pad_id, max_length=max_len, device=device)
        B = len(chunk)
        with autocast_context(device):  # bf16/fp16 on a GPU, plain fp32 on the CPU
            logps = sequence_logprobs(policy, ids, mask)               # [2B]
            with torch.no_grad():
                ref_logps = sequence_logprobs(reference, ids, mask)
        loss, r_w, r_l = dpo_loss(logps[:B], logps[B:], ref_logps[:B], ref_logps[B:], beta)
        optimizer_step(loss, opt, params, scaler, max_norm=1.0)
        margin = r_w - r_l
        hist["loss"].append(loss.item())
        hist["margin"].append(margin.mean().item())
        hist["accuracy"].append((margin > 0).float().mean().item())
        hist["chosen_reward"].append(r_w.mean().item())
        hist["rejected_reward"].append(r_l.mean().item())
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:4d}  loss {loss.item():.3f}  margin {margin.mean().item():+.3f}")
    policy.eval()
    hist["seconds"] = time.perf_counter() - t0
    return hist


@torch.no_grad()
def sample_preference_pairs(model: nn.Module, tokenizer, records: Sequence[dict], *, n_samples: int = 4,
                            temperature: float = 1.0, max_new_tokens: int = 8, preamble: bool = False,
                            batch_size: int = 64, seed: int = 0) -> tuple[list[tuple[list[int], list[int], list[int]]], dict]:
    """Preference pairs from a verifiable task: chosen = the correct answer, rejected = the model's own wrong one.

    For every record (``{"instruction", "input", "output"}``, see :mod:`shared.instruct`) the
    model samples ``n_samples`` answers to the prompt at ``temperature``. If one is wrong (its
    stripped text differs from ``output``), the pair is ``(prompt_ids, output_ids + [eos],
    first_wrong_sample_ids [+ eos])``; a record whose samples are all correct gives no pair. So
    the rejected answers are the mistakes this model actually makes (on-policy), the setting
    where DPO is meant to help (Rafailov et al. 2023, section 6; Tajwar et al. 2024).

    Returns:
        ``(pairs, info)``; ``info`` has ``n_records``, ``n_pairs``, ``sample_accuracy`` (fraction
        of all samples that were correct) and ``examples`` (a few ``(record, wrong_text)``).

    Raises:
        ValueError: for empty ``records``, ``n_samples < 1`` or ``temperature <= 0``.
    """
    from shared.generate import generate, left_pad
    from shared.instruct import eos_token_id, format_prompt

    if not records:
        raise ValueError("records is empty")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be an int >= 1, got {n_samples!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (sampling), got {temperature!r}")
    eos = eos_token_id(tokenizer)
    keep = max(1, model.cfg.context_length - max_new_tokens)
    prompts = [tokenizer.encode(format_prompt(r, preamble))[-keep:] for r in records]
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    samples: list[list[list[int]]] = [[] for _ in records]
    for _ in range(n_samples):
        for s in range(0, len(prompts), batch_size):
            idx, mask = left_pad(prompts[s:s + batch_size], pad_id=eos)
            out = generate(model, idx, max_new_tokens, temperature=temperature, eos_id=eos,
                           attention_mask=mask, generator=gen)[:, idx.size(1):].tolist()
            for j, row in enumerate(out):
                samples[s + j].append(row[:row.index(eos) + 1] if eos in row else row)
    pairs, n_correct, examples = [], 0, []
    for rec, prompt, outs in zip(records, prompts, samples):
        target = rec["output"].strip()
        wrong = None
        for ids in outs:
            text = tokenizer.decode([i for i in ids if i != eos]).strip()
            if text == target:
                n_correct += 1
            elif wrong is None:
                wrong = (ids, text)
        if wrong is not None:
            pairs.append((list(prompt), tokenizer.encode(rec["output"]) + [eos], list(wrong[0])))
            if len(examples) < 5:
                examples.append((rec, wrong[1]))
    info = {"n_records": len(records), "n_pairs": len(pairs),
            "sample_accuracy": n_correct / (len(records) * n_samples), "examples": examples}
    return pairs, info
