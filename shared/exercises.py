"""Moved to :mod:`shared.course.exercises` (instructor and maintainer tooling lives in ``shared/course/``).

This shim keeps ``python -m shared.exercises`` and ``import shared.exercises`` working: importing it gives
the real module object, so every name (and any monkeypatching) refers to the one implementation.
"""

import sys

from shared.course import exercises as _impl

if __name__ == "__main__":
    sys.exit(_impl.main())
sys.modules[__name__] = _impl
