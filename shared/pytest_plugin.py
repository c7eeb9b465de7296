"""Moved to :mod:`shared.course.pytest_plugin` (instructor and maintainer tooling lives in ``shared/course/``).

This shim keeps ``python -m shared.pytest_plugin`` and ``import shared.pytest_plugin`` working: importing it gives
the real module object, so every name (and any monkeypatching) refers to the one implementation.
"""

import sys

from shared.course import pytest_plugin as _impl

sys.modules[__name__] = _impl
