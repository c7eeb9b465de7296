"""Run profile, device choice and seeding: the three lines at the top of every notebook.

The course has exactly **one switch**, the environment variable ``LLM_PROFILE``:

=============  ==========================================================================
``smoke``      tiny sizes so every notebook finishes in about 2 minutes on 2 CPU cores.
               Chosen automatically when ``CI`` is set or under pytest/nbval.
``default``    sizes meant for learners, picked from the device (CPU laptop or GPU).
=============  ==========================================================================

Example::

    >>> from shared.runtime import PROFILE, DEVICE, pick, set_seed
    >>> set_seed(0)
    >>> n_steps = pick(smoke=20, cpu=2_000, gpu=10_000)   # doctest: +SKIP

The device is chosen automatically: ``cuda``, then ``mps``, then ``cpu``. Override it with
``LLM_DEVICE=cpu`` (or ``cuda``/``mps``) if you need to.
"""

from __future__ import annotations

import os
import random
from typing import TypeVar

import numpy as np
import torch

__all__ = ["PROFILE", "DEVICE", "get_profile", "get_device", "is_smoke", "pick", "set_seed"]

PROFILES = ("smoke", "default")
T = TypeVar("T")


def get_profile() -> str:
    """Return the active run profile, ``"smoke"`` or ``"default"``.

    ``LLM_PROFILE`` wins when set; otherwise ``CI`` or a running pytest selects ``smoke``.

    Raises:
        ValueError: if ``LLM_PROFILE`` is set to anything but ``smoke`` or ``default``.
    """
    value = os.environ.get("LLM_PROFILE", "").strip().lower()
    if value:
        if value not in PROFILES:
            raise ValueError(f"LLM_PROFILE={value!r} is not one of {PROFILES}")
        return value
    if os.environ.get("CI") or os.environ.get("PYTEST_CURRENT_TEST"):
        return "smoke"
    return "default"


def get_device() -> torch.device:
    """Pick the best available device: ``cuda``, then ``mps``, then ``cpu``.

    ``LLM_DEVICE`` overrides the choice. The smoke profile always uses the CPU so that test
    results do not depend on the machine.

    Raises:
        ValueError: if ``LLM_DEVICE`` is not a device name, or ``LLM_PROFILE`` is invalid.
    """
    forced = os.environ.get("LLM_DEVICE", "").strip().lower()
    if forced:
        try:
            return torch.device(forced)
        except RuntimeError:
            raise ValueError(f"LLM_DEVICE={forced!r} is not a device; use cpu, cuda, cuda:1 or mps") from None
    if get_profile() == "smoke":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def is_smoke() -> bool:
    """True under the smoke profile (tests, CI)."""
    return get_profile() == "smoke"


def pick(smoke: T, cpu: T, gpu: T | None = None, mps: T | None = None) -> T:
    """Choose a size for the active profile and device.

    Args:
        smoke: value under the smoke profile (tests/CI, must run in ~2 min on 2 CPU cores).
        cpu: value for the default profile on a CPU.
        gpu: value on a CUDA GPU (defaults to ``cpu``).
        mps: value on Apple silicon (defaults to ``gpu`` if given, else ``cpu``).
    """
    if is_smoke():
        return smoke
    kind = get_device().type
    if kind == "cuda":
        return cpu if gpu is None else gpu
    if kind == "mps":
        return mps if mps is not None else (cpu if gpu is None else gpu)
    return cpu


def set_seed(seed: int = 0) -> None:
    """Seed Python, NumPy and torch (all devices) so that a run is repeatable.

    Raises:
        TypeError: if ``seed`` is not an int. ValueError: if it is outside ``0 .. 2**32 - 1``
            (NumPy's range).
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in 0 .. 2**32 - 1, got {seed}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds CUDA and MPS generators


PROFILE: str = get_profile()
DEVICE: torch.device = get_device()
