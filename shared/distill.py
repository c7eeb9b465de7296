"""Knowledge distillation (Chapter 7): a small student learns from a larger teacher's soft targets.

Reference: G. Hinton, O. Vinyals, J. Dean, "Distilling the Knowledge in a Neural Network"
(2015), arXiv:1503.02531, section 2. The teacher's probabilities at a temperature ``T``,
``softmax(z_t / T)``, carry more information per example than the one-hot label (which wrong
tokens are *nearly* right). The student minimises

    L = α · T² · KL( softmax(z_t / T) ‖ softmax(z_s / T) ) + (1 − α) · CE(z_s, y)

The ``T²`` keeps the soft term's gradients the same size as ``T`` changes (their magnitude
scales as ``1/T²``, section 2.1). For language models this is applied at every position
(token-level distillation, as in DistilBERT and MiniLLM's baseline).

Usage::

    with torch.no_grad():
        teacher_logits = teacher(x)                          # [B, T, V]
    loss = distillation_loss(student(x), teacher_logits, y, temperature=2.0, alpha=0.5)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["distillation_loss"]


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor | None,
                      temperature: float = 2.0, alpha: float = 0.5, ignore_index: int = -100) -> torch.Tensor:
    """Hinton et al. (2015) distillation loss, averaged over the positions whose target is not ignored.

    Args:
        student_logits: ``[..., V]`` (differentiable).
        teacher_logits: ``[..., V]``, same shape (treated as constants: detached here).
        targets: ``[...]`` token ids for the hard cross-entropy term, ``ignore_index`` to skip a
            position (skipped in both terms). ``None`` allowed only with ``alpha = 1``.
        temperature: ``T > 0``; both distributions are softened by it.
        alpha: weight of the soft (KL) term in ``[0, 1]``; ``1 - alpha`` weighs the hard term.

    Returns:
        A scalar: ``alpha * T^2 * mean KL(p_teacher^T || p_student^T) + (1 - alpha) * mean CE``.

    Raises:
        ValueError: for mismatched shapes, ``temperature <= 0``, ``alpha`` outside [0, 1],
            missing ``targets`` with ``alpha < 1``, or no position left after ``ignore_index``.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student_logits {tuple(student_logits.shape)} and teacher_logits "
                         f"{tuple(teacher_logits.shape)} must have the same shape")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    V = student_logits.size(-1)
    s = student_logits.reshape(-1, V).float()                     # [N, V]
    t = teacher_logits.detach().reshape(-1, V).float()
    if targets is None:
        if alpha < 1:
            raise ValueError("targets are needed when alpha < 1 (the hard cross-entropy term)")
        keep = torch.ones(s.size(0), dtype=torch.bool, device=s.device)
    else:
        if targets.shape != student_logits.shape[:-1]:
            raise ValueError(f"targets must have shape {tuple(student_logits.shape[:-1])}, got {tuple(targets.shape)}")
        targets = targets.reshape(-1)
        keep = targets != ignore_index
    if not bool(keep.any()):
        raise ValueError("every position is ignore_index: nothing to distil")
    s, t = s[keep], t[keep]
    log_p_s = F.log_softmax(s / temperature, dim=-1)
    log_p_t = F.log_softmax(t / temperature, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean()    # mean over positions of KL(p_t || p_s)
    loss = alpha * temperature ** 2 * kl
    if alpha < 1:
        loss = loss + (1 - alpha) * F.cross_entropy(s, targets[keep])
    return loss
