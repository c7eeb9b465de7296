"""Intervals for accuracies and exact-match rates (Chapter 7): a result is a claim with an error bar.

An accuracy measured on ``n`` test items is an estimate; on ``n = 300`` its 95% interval is
about ±5.5 points, so two models 1.3 points apart are not distinguishable. Every table of
Chapter 7 reports :func:`wilson_interval` next to the rate.

Reference: E. B. Wilson, "Probable inference, the law of succession, and statistical
inference", JASA 22 (1927); recommended over the normal ("Wald") interval by Brown, Cai and
DasGupta, "Interval Estimation for a Binomial Proportion", Statistical Science 16 (2001),
because it stays inside [0, 1] and keeps its coverage at rates near 0 or 1 and small ``n``.

Example::

    >>> lo, hi = wilson_interval(29, 100)
    >>> f"{lo:.3f} {hi:.3f}"
    '0.210 0.385'
    >>> format_rate(29, 100)
    '29.0% [21.0, 38.5] (29/100)'
"""

from __future__ import annotations

import math

__all__ = ["wilson_interval", "format_rate"]


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval for a binomial rate ``k / n``: ``(low, high)`` in [0, 1].

    ``centre = (p + z²/2n) / (1 + z²/n)``, ``half = z sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n)``
    with ``p = k / n`` (Wilson 1927; Brown et al. 2001, eq. 4). ``z = 1.96`` gives 95%.

    It assumes the ``n`` items are independent. Passages cut from the same few plays are not
    (they share characters and style), so for those the true uncertainty is larger.

    Raises:
        TypeError: if ``k`` or ``n`` is not an int.
        ValueError: if ``n < 1``, ``k`` is outside ``0..n`` or ``z <= 0``.
    """
    for name, v in (("k", k), ("n", n)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int count, got {type(v).__name__}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 <= k <= n:
        raise ValueError(f"k must be in 0..n={n}, got {k}")
    if not z > 0:
        raise ValueError(f"z must be > 0, got {z}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def format_rate(k: int, n: int, z: float = 1.96) -> str:
    """``"53.3% [47.7, 58.9] (160/300)"``: the rate, its Wilson interval in percent, the counts."""
    lo, hi = wilson_interval(k, n, z)
    return f"{100 * k / n:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] ({k}/{n})"
