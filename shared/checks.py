"""Self-checks for exercise notebooks.

Each check is one named test of the learner's code::

    from shared.checks import check, summary

    def _roundtrip():
        assert decode(encode("héllo 👋")) == "héllo 👋", "decode(encode(s)) changed the text"
    check("round-trip on Unicode", _roundtrip)
    ...
    summary()   # last cell: raises if any check failed

``check`` never raises: it prints a clear PASS/FAIL line (with the likely mistake) so that
every check runs even when an earlier one fails. ``summary()`` raises ``AssertionError``
listing the failed checks, so an unfinished notebook ends red.

A stub that still raises ``NotImplementedError`` is reported as "not implemented yet".
When the environment variable ``COURSE_CHECKS_FILE`` is set (the autograder
``python -m shared.grade`` and the test-suite set it), each result is also appended to that
file as one JSON line, so the grader can score the notebook.
"""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Callable

__all__ = ["check", "summary", "results", "reset", "CHECKS_FILE_ENV"]

CHECKS_FILE_ENV = "COURSE_CHECKS_FILE"
_results: dict[str, tuple[bool, str]] = {}


def _record(name: str, passed: bool, message: str) -> None:
    _results[name] = (passed, message)
    path = os.environ.get(CHECKS_FILE_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"name": name, "passed": passed, "message": message}) + "\n")


def check(name: str, fn: Callable[[], object]) -> bool:
    """Run one check and print PASS or FAIL with the reason.

    Args:
        name: a short, unique, human-readable name (the grader reports it).
        fn: a function of no arguments; it passes when it returns without raising.
            Use ``assert cond, "likely mistake ..."`` inside it so the message names the bug.

    Returns:
        True if the check passed.
    """
    try:
        fn()
    except NotImplementedError as e:
        msg = f"not implemented yet ({e})" if str(e) else "not implemented yet"
        passed = False
    except AssertionError as e:
        msg = str(e) or "assertion failed (no message)"
        passed = False
    except Exception as e:  # a crash in the learner's code is a failure, not a crash of the notebook
        tb = traceback.extract_tb(e.__traceback__)
        where = f" at line {tb[-1].lineno} in {tb[-1].name}()" if tb else ""
        msg = f"{type(e).__name__}: {e}{where}"
        passed = False
    else:
        msg = ""
        passed = True
    print(f"✅ PASS  {name}" if passed else f"❌ FAIL  {name}\n        → {msg}")
    _record(name, passed, msg)
    return passed


def results() -> dict[str, tuple[bool, str]]:
    """All check results so far in this kernel: ``{name: (passed, message)}``."""
    return dict(_results)


def reset() -> None:
    """Forget earlier results (useful when re-running the notebook top to bottom)."""
    _results.clear()


def summary() -> None:
    """Print the score and raise ``AssertionError`` if any check failed or none ran."""
    n = len(_results)
    failed = [k for k, (ok, _) in _results.items() if not ok]
    print(f"\n{n - len(failed)}/{n} checks passed.")
    if n == 0:
        raise AssertionError("no checks ran")
    if failed:
        raise AssertionError("failed checks: " + "; ".join(failed))
    print("🎉 All checks passed: your implementation matches the reference.")
