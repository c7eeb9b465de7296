"""Exercises: learner copies are fresh, and every check fails on the unsolved stubs.

(That every *solution* notebook passes is proven by nbval, which runs chNN/solutions/*.ipynb.)
"""

from pathlib import Path

import nbformat
import pytest

from shared.exercises import exercise_path, make_exercise, render, solution_notebooks
from shared.grade import expected_checks, grade_notebook

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = solution_notebooks()
IDS = [p.relative_to(ROOT).as_posix() for p in SOLUTIONS]


@pytest.mark.parametrize("solution", SOLUTIONS, ids=IDS)
def test_learner_copy_is_what_the_generator_produces(solution):
    learner = exercise_path(solution)
    assert learner.exists(), f"missing {learner.name}: run `python -m shared.exercises`"
    assert learner.read_text(encoding="utf-8") == render(make_exercise(solution)), \
        f"{learner.relative_to(ROOT)} is stale: run `python -m shared.exercises`"


@pytest.mark.parametrize("solution", SOLUTIONS, ids=IDS)
def test_learner_copy_has_stubs_and_the_same_checks(solution):
    learner = nbformat.read(exercise_path(solution), as_version=4)
    src = "\n".join(c.source for c in learner.cells if c.cell_type == "code")
    assert "NotImplementedError" in src and "BEGIN SOLUTION" not in src
    checks = expected_checks(learner)
    assert len(checks) >= 3, "an exercise needs several named checks"
    assert checks == expected_checks(nbformat.read(solution, as_version=4))
    assert "summary()" in src, "the last cell should call shared.checks.summary()"


@pytest.mark.parametrize("solution", SOLUTIONS, ids=IDS)
def test_every_check_fails_on_the_stubs(solution):
    """A check that passes on unsolved stubs tests nothing: each one must fail."""
    report = grade_notebook(exercise_path(solution), cell_timeout=300, timeout=600)
    statuses = {c.name: c.status for c in report.checks}
    passing = [n for n, s in statuses.items() if s == "pass"]
    not_run = [n for n, s in statuses.items() if s == "not run"]
    assert not passing, f"these checks pass on the unsolved stubs (vacuous): {passing}"
    assert not not_run, f"these checks never ran (put their setup inside the check function): {not_run}; errors: {report.errors}"
    assert statuses and all(s == "fail" for s in statuses.values())
