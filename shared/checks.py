"""Self-checks and hints for exercise notebooks.

Each check is one named test of the learner's code::

    from shared.checks import check, summary, hint

    def _roundtrip():
        assert decode(encode("héllo 👋")) == "héllo 👋", "decode(encode(s)) changed the text"
    check("round-trip on Unicode", _roundtrip)
    ...
    summary()   # last cell: raises if any check failed

``check`` never raises: it prints a clear PASS/FAIL line (with the likely mistake) so that
every check runs even when an earlier one fails. ``summary()`` raises ``AssertionError``
listing the failed checks, so an unfinished notebook ends red. A stub that still raises
``NotImplementedError`` is reported as "not implemented yet".

Progressive hints: ``hint("get_stats")`` prints the next hint for that part of the exercise,
``hint("get_stats", 2)`` the second one. The hints live in the exercise notebook's metadata
(written by ``python -m shared.exercises``), so reading the code does not spoil them.

Grading: the autograder ``python -m shared.grade`` runs the checks in its own sandboxed
process and collects the results itself (see :mod:`shared.course.grade`); nothing here
writes a file. It may set hidden check parameters (:func:`hidden`) drawn at grading time.
"""

from __future__ import annotations

import json
import random
import signal
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["check", "summary", "results", "reset", "hint", "hidden", "CheckTimeout"]

_results: dict[str, tuple[bool, str]] = {}
# Set only by the grader's harness (shared.course.harness), never by a notebook:
_sink: Callable[[dict], None] | None = None   # receives each result as it is recorded
_time_limit: float | None = None              # seconds per check (SIGALRM), None = no limit
_rng: random.Random | None = None             # hidden parameters; None = the fixed defaults
_hints_shown: dict[str, int] = {}


class CheckTimeout(BaseException):
    """Raised inside a check that runs past the grader's time limit (e.g. an infinite loop)."""


def _on_alarm(signum, frame):
    raise CheckTimeout


def _record(name: str, passed: bool, message: str) -> None:
    _results[name] = (passed, message)
    if _sink is not None:
        _sink({"name": name, "passed": passed, "message": message})


def check(name: str, fn: Callable[[], object]) -> bool:
    """Run one check and print PASS or FAIL with the reason.

    Args:
        name: a short, unique, human-readable name (the grader reports it).
        fn: a function of no arguments; it passes when it returns without raising.
            Use ``assert cond, "likely mistake ..."`` inside it so the message names the bug.

    Returns:
        True if the check passed.
    """
    limit = _time_limit
    if limit:
        old = signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        fn()
    except CheckTimeout:
        msg, passed = (f"took longer than {limit:g}s and was stopped: an infinite loop? (e.g. a dataset "
                       "whose __getitem__ never raises IndexError, or a loop that never ends)"), False
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
    finally:
        if limit:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
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


def hidden(default, choices: Sequence):
    """A check parameter: ``default`` when you run the notebook, a random one of ``choices``
    when the grader runs it (so a solution cannot be tuned to the visible inputs).

    Example: ``alpha = hidden(8.0, [3.0, 5.5, 7.25])``.
    """
    if not choices:
        raise ValueError("choices must not be empty")
    return default if _rng is None else _rng.choice(list(choices))


def _find_hints(topic: str, where: Path) -> list[str] | None:
    for nb in sorted(where.glob("*.ipynb")):
        try:
            meta = json.loads(nb.read_text(encoding="utf-8")).get("metadata", {})
        except (OSError, ValueError):
            continue
        found = meta.get("course", {}).get("hints", {})
        if topic in found:
            return list(found[topic])
    return None


def hint(topic: str, n: int | None = None, *, where: str | Path = ".") -> str:
    """Print (and return) hint ``n`` for ``topic``, or the next one you have not seen yet.

    Args:
        topic: the part of the exercise, as named in its stub (e.g. ``"get_stats"``).
        n: which hint, from 1; by default the one after the last shown.
        where: the folder holding the exercise notebook (the notebook's own folder).

    Raises:
        ValueError: if ``topic`` has no hints or ``n`` is out of range.
    """
    hints = _find_hints(str(topic), Path(where))
    if not hints:
        raise ValueError(f"no hints for {topic!r} in the notebooks of {Path(where).resolve()}")
    k = min(_hints_shown.get(topic, 0) + 1, len(hints)) if n is None else int(n)
    if not 1 <= k <= len(hints):
        raise ValueError(f"{topic!r} has hints 1..{len(hints)}, asked for {k}")
    _hints_shown[topic] = max(_hints_shown.get(topic, 0), k)
    text = f"Hint {k}/{len(hints)} for {topic}: {hints[k - 1]}"
    print(text)
    return text
