"""A minimal GRPO (Chapter 7c): reinforcement learning from a verifiable reward, without a value model.

Reference: Z. Shao et al., "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open
Language Models" (2024), arXiv:2402.03300, section 4.1, eq. 3 (the GRPO objective) and the
outcome-supervision advantage of section 4.1.2. For each prompt ``q`` the policy samples a
**group** of ``G`` answers ``o_1..o_G``; each gets a scalar reward ``r_i`` (here 1 if the answer is
exactly right, else 0), and every token of ``o_i`` gets the group-normalised advantage

    A_i = (r_i - mean(r)) / (std(r) + eps).

The loss, averaged over answers and over each answer's tokens ``t``, is PPO's clipped surrogate
(Schulman et al. 2017) plus a KL penalty to the frozen reference, with ``ρ_t = π(o_t|·) / π_old(o_t|·)``:

    L = - mean_i  1/|o_i| Σ_t [ min(ρ_t A_i, clip(ρ_t, 1-ε, 1+ε) A_i) - β KL_t ],
    KL_t = π_ref/π - log(π_ref/π) - 1        (Schulman's unbiased, non-negative "k3" estimator).

With one gradient step per sampling round (as :func:`train_grpo` does), ``π_old = π`` so
``ρ_t = 1`` and the clip is inactive; the gradient is then ``-A_i ∇ log π(o_t)``: answers better
than their siblings are pushed up, worse ones down, and a group whose answers all get the same
reward teaches nothing. The structure follows TRL's ``GRPOTrainer`` (``trl/trainer/grpo_trainer.py``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from shared.train import autocast_context, make_grad_scaler, optimizer_step, shuffled_batches

__all__ = ["group_advantages", "token_logprobs", "grpo_loss", "train_grpo"]


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """``(r - mean) / (std + eps)`` within each group: ``rewards [P, G] -> [P, G]``.

    ``std`` is the sample standard deviation (``unbiased=True``, as TRL); a group whose rewards
    are all equal gets advantages 0.

    >>> [round(a, 3) for a in group_advantages(torch.tensor([[1., 0., 0., 1.]]))[0].tolist()]
    [0.866, -0.866, -0.866, 0.866]

    Raises:
        ValueError: if ``rewards`` is not 2-D with at least 2 answers per group.
    """
    if not torch.is_tensor(rewards) or rewards.dim() != 2 or rewards.size(1) < 2:
        raise ValueError(f"rewards must be a [P, G] tensor with G >= 2, got {tuple(getattr(rewards, 'shape', ()))}")
    r = rewards.float()
    return (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + eps)


def token_logprobs(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """``log π(ids[:, t] | ids[:, <t])`` for ``t >= 1``: ``[B, T] -> [B, T - 1]`` (nats).

    Raises:
        TypeError: if ``ids`` is not a 2-D integer tensor.
    """
    if not torch.is_tensor(ids) or ids.dtype not in (torch.int64, torch.int32) or ids.dim() != 2:
        raise TypeError(f"ids must be a [B, T] integer tensor, got {getattr(ids, 'dtype', type(ids).__name__)}")
    logp = F.log_softmax(model(ids)[:, :-1].float(), dim=-1)              # [B, T-1, V]
    return logp.gather(-1, ids[:, 1:, None]).squeeze(-1)                  # [B, T-1]


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, ref_logps: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, beta: float = 0.04, clip_eps: float = 0.2) -> tuple[torch.Tensor, dict]:
    """The GRPO loss of Shao et al. 2024, eq. 3, on per-token log-probabilities.

    Args:
        logps: ``[N, T]`` log-probs of the sampled tokens under the policy (with gradient).
        old_logps: ``[N, T]`` the same under the policy that sampled them (no gradient).
        ref_logps: ``[N, T]`` the same under the frozen reference (no gradient).
        advantages: ``[N]``, one per answer (:func:`group_advantages`, flattened).
        mask: ``[N, T]``, 1 on the answer's tokens, 0 on prompt and padding.
        beta: weight of the KL penalty (``>= 0``); clip_eps: PPO's ε (``> 0``).
    Returns:
        ``(loss, stats)``; ``stats`` has the mean ``kl`` and the ``clipped`` fraction of tokens.
    Raises:
        ValueError: for mismatched shapes, a row without answer tokens, ``beta < 0`` or ``clip_eps <= 0``.
    """
    if not (logps.shape == old_logps.shape == ref_logps.shape == mask.shape) or logps.dim() != 2:
        raise ValueError(f"logps, old_logps, ref_logps and mask must share one [N, T] shape, got "
                         f"{[tuple(t.shape) for t in (logps, old_logps, ref_logps, mask)]}")
    if advantages.shape != (logps.size(0),):
        raise ValueError(f"advantages must be [N] = [{logps.size(0)}], got {tuple(advantages.shape)}")
    if not beta >= 0 or not clip_eps > 0:
        raise ValueError(f"need beta >= 0 and clip_eps > 0, got beta={beta!r}, clip_eps={clip_eps!r}")
    m = mask.to(logps.dtype)
    n_tokens = m.sum(1)
    if (n_tokens == 0).any():
        raise ValueError("every row of mask needs at least one answer token")
    ratio = torch.exp(logps - old_logps)                                        # ρ_t, 1 when on-policy
    a = advantages[:, None].to(logps.dtype)
    surrogate = torch.minimum(ratio * a, ratio.clamp(1 - clip_eps, 1 + clip_eps) * a)
    log_r = ref_logps - logps
    kl = torch.exp(log_r) - log_r - 1                                           # k3 >= 0, 0 iff equal
    per_token = surrogate - beta * kl
    loss = -((per_token * m).sum(1) / n_tokens).mean()
    clipped = ((ratio - 1).abs() > clip_eps).to(logps.dtype)
    return loss, {"kl": ((kl * m).sum() / m.sum()).item(), "clipped": ((clipped * m).sum() / m.sum()).item()}


def _pad(rows: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    T = max(len(r) for r in rows)
    out = torch.full((len(rows), T), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(list(r), dtype=torch.long)
    return out


def train_grpo(policy: nn.Module, reference: nn.Module, tokenizer, records: Sequence[dict],
               reward_fn: Callable[[dict, str], float], *, steps: int, group_size: int = 8,
               prompts_per_step: int = 8, beta: float = 0.04, clip_eps: float = 0.2, lr: float = 1e-5,
               temperature: float = 1.0, max_new_tokens: int = 8, preamble: bool = False, seed: int = 0,
               device: torch.device | str = "cpu") -> dict:
    """Online GRPO: each step samples ``group_size`` answers to ``prompts_per_step`` prompts, scores them, updates once.

    Prompts are the Alpaca prompts of ``records`` (``shared.instruct.format_prompt``), walked in
    shuffled order. Answers end at ``<|endoftext|>`` (which is scored as a token of the answer,
    so the policy also learns to stop). One AdamW step per round, gradient clipping at 1.0.

    Returns:
        ``{"reward": [...], "informative": [...], "kl": [...], "loss": [...], "seconds": s}``:
        per step, the mean reward of the samples, the fraction of groups whose rewards differ
        (the only ones that teach), the mean KL to the reference and the loss.
    Raises:
        ValueError: for empty ``records``, ``steps < 1``, ``group_size < 2`` or ``prompts_per_step < 1``.
    """
    from shared.generate import generate, left_pad
    from shared.instruct import eos_token_id, format_prompt

    if not records:
        raise ValueError("records is empty")
    for name, v, lo in (("steps", steps, 1), ("group_size", group_size, 2), ("prompts_per_step", prompts_per_step, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    eos = eos_token_id(tokenizer)
    keep = max(1, policy.cfg.context_length - max_new_tokens)
    prompts = [tokenizer.encode(format_prompt(r, preamble))[-keep:] for r in records]
    batches = shuffled_batches(len(records), prompts_per_step, random.Random(seed))  # epoch after shuffled epoch
    gen = torch.Generator(device=device).manual_seed(seed)
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    scaler = make_grad_scaler(device)  # enabled only under fp16 (a T4)
    reference.eval()
    hist = {"reward": [], "informative": [], "kl": [], "loss": []}
    t0 = time.perf_counter()
    for _ in range(steps):
        chosen = next(batches)
        # 1. sample a group of answers per prompt from the current policy
        batch_prompts = [prompts[i] for i in chosen for _ in range(group_size)]
        policy.eval()
        with torch.no_grad():
            idx, amask = left_pad(batch_prompts, pad_id=eos, device=device)
            new = generate(policy, idx, max_new_tokens, temperature=temperature, eos_id=eos,
                           attention_mask=amask, generator=gen)[:, idx.size(1):].tolist()
        answers = [row[:row.index(eos) + 1] if eos in row else row for row in new]
        # 2. rewards and group-relative advantages
        rewards = torch.tensor([[reward_fn(records[i], tokenizer.decode([t for t in answers[k * group_size + g] if t != eos]))
                                 for g in range(group_size)] for k, i in enumerate(chosen)], dtype=torch.float32)
        adv = group_advantages(rewards).flatten().to(device)                          # [P*G]
        # 3. one clipped-surrogate step on prompt + answer (right-padded; the mask marks the answer)
        rows = [list(p) + a for p, a in zip(batch_prompts, answers)]
        ids = _pad(rows, eos).to(device)                                                 # [N, T]
        mask = torch.zeros(ids.size(0), ids.size(1) - 1, device=device)
        for r, (p, a) in enumerate(zip(batch_prompts, answers)):
            mask[r, len(p) - 1:len(p) - 1 + len(a)] = 1                                  # targets = answer tokens
        policy.train()
        with autocast_context(device):  # bf16/fp16 on a GPU, plain fp32 on the CPU
            logps = token_logprobs(policy, ids)
            with torch.no_grad():
                ref_logps = token_logprobs(reference, ids)
        loss, stats = grpo_loss(logps, logps.detach(), ref_logps, adv, mask, beta=beta, clip_eps=clip_eps)
        optimizer_step(loss, opt, params, scaler, max_norm=1.0)
        hist["reward"].append(rewards.mean().item())
        hist["informative"].append((rewards.std(1) > 0).float().mean().item())
        hist["kl"].append(stats["kl"])
        hist["loss"].append(loss.item())
    policy.eval()
    hist["seconds"] = time.perf_counter() - t0
    return hist
