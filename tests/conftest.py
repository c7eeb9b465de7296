"""Test-suite set-up: smoke profile everywhere, a faster allocator, and which notebooks nbval runs."""

import os
from pathlib import Path

# Everything under pytest runs the smoke profile on the CPU (notebook kernels inherit this).
os.environ["LLM_PROFILE"] = "smoke"
os.environ.setdefault("LLM_DEVICE", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
# glibc: never return freed memory to the OS. Measured 1.4-1.8x faster small-model CPU
# training (fewer page faults). Only takes effect in processes started from here on
# (notebook kernels, torchrun workers), which is where the time goes.
os.environ.setdefault(
    "GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=4294967295")

ROOT = Path(__file__).resolve().parent.parent


def pytest_ignore_collect(collection_path, config):
    """nbval runs narrated and solution notebooks. The learner copies (chNN/exercise_*.ipynb)
    are stubs that are *meant* to fail their checks: tests/test_exercises.py covers them."""
    p = Path(collection_path)
    if ".ipynb_checkpoints" in p.parts:
        return True
    if p.suffix == ".ipynb" and p.name.startswith("exercise_") and p.parent.name != "solutions":
        return True
    return None
