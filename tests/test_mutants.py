"""Every exercise's mutant library, through the real grader.

For each ``tests/mutants/<exercise_stem>.py`` (see :mod:`shared.course.mutants` for the format):

* every MUTANT (a realistic wrong solution) fails at least one check, with a message that
  contains its ``expect`` text, so the feedback names the mistake;
* every ALTERNATIVE (a correct solution in another style) passes every check.

Each variant is graded as a student's notebook is (the same plan, sandbox, course check cells
and scoring, :mod:`shared.course.grade`), in two sandboxes at a time as CI has two cores; each
sandbox runs its share of the variants in processes forked after importing torch
(:func:`shared.course.grade.grade_batch`), which halves the suite's time.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.course.exercises import solution_notebooks
from shared.course.mutants import load_library, run_variants

ROOT = Path(__file__).resolve().parent.parent
LIBRARIES = sorted((ROOT / "tests" / "mutants").glob("exercise_*.py"))
VARIANTS = {f"{lib.stem}: {v.kind}: {v.name}": (sol, v) for lib in LIBRARIES for sol, vs in [load_library(lib)] for v in vs}


def test_every_exercise_has_a_mutant_library():
    have = {p.stem for p in LIBRARIES}
    missing = [s.relative_to(ROOT).as_posix() for s in solution_notebooks() if s.stem not in have]
    assert not missing, f"these exercises have no tests/mutants/<stem>.py: {missing}"


@pytest.mark.parametrize("lib", LIBRARIES, ids=[p.stem for p in LIBRARIES])
def test_library_is_large_enough(lib):
    sol, variants = load_library(lib)
    assert sol.exists(), f"{lib.name}: SOLUTION {sol} does not exist"
    kinds = [v.kind for v in variants]
    assert kinds.count("mutant") >= 5, f"{lib.name}: at least 5 mutants, has {kinds.count('mutant')}"
    assert kinds.count("alternative") >= 2, f"{lib.name}: at least 2 alternatives, has {kinds.count('alternative')}"


@pytest.fixture(scope="module")
def outcomes(request):
    """Grade the selected variants, two at a time, once for the whole module."""
    wanted = [item.callspec.params["variant"] for item in request.session.items
              if getattr(item, "module", None) is request.module  # nbval's notebook cells have no .module
              and hasattr(item, "callspec") and "variant" in item.callspec.params]
    return dict(zip(wanted, run_variants([VARIANTS[key] for key in wanted], jobs=2)))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant(outcomes, variant):
    ok, why, report = outcomes[variant]
    _, v = VARIANTS[variant]
    assert ok, f"{v.kind} {v.name!r}: {why}\nerrors: {report.errors[:3]}\nnotes: {report.notes[-3:]}"
