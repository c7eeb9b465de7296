"""Moved to :mod:`shared.course.grade` (instructor and maintainer tooling lives in ``shared/course/``).

This shim keeps ``python -m shared.grade`` and ``import shared.grade`` working: importing it gives
the real module object, so every name (and any monkeypatching) refers to the one implementation.
"""

import sys

from shared.course import grade as _impl

if __name__ == "__main__":
    sys.exit(_impl.main())
sys.modules[__name__] = _impl
