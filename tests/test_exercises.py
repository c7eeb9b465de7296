"""Exercises: learner copies are fresh, carry what the grader needs, and every check fails on the stubs.

(That every *solution* notebook passes is proven by nbval, which runs chNN/solutions/*.ipynb, and
by tests/test_mutants.py, whose alternatives and mutants go through the real grader.)
"""

import re
from pathlib import Path

import nbformat
import pytest

from shared.course.exercises import (assignment_id, exercise_path, make_exercise, render, solution_notebooks,
                                     solution_regions)
from shared.course.grade import expected_checks, grade_notebook

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = solution_notebooks()
IDS = [p.relative_to(ROOT).as_posix() for p in SOLUTIONS]


@pytest.mark.parametrize("solution", SOLUTIONS, ids=IDS)
def test_learner_copy_is_what_the_generator_produces(solution):
    learner = exercise_path(solution)
    assert learner.exists(), f"missing {learner.name}: run `python -m shared.exercises`"
    assert learner.read_text(encoding="utf-8") == render(make_exercise(solution)), \
        f"{learner.relative_to(ROOT)} is stale: run `python -m shared.exercises`"
    meta = nbformat.read(solution, as_version=4).metadata.get("course", {})
    assert meta == {"assignment": assignment_id(solution), "role": "solution"}, \
        f"{solution.name} lacks its course metadata: run `python -m shared.exercises`"


@pytest.mark.parametrize("solution", SOLUTIONS, ids=IDS)
def test_learner_copy_has_stubs_ids_and_the_same_checks(solution):
    learner = nbformat.read(exercise_path(solution), as_version=4)
    assert learner.metadata["course"]["assignment"] == assignment_id(solution)
    assert learner.metadata["course"]["role"] == "exercise"
    src = "\n".join(c.source for c in learner.cells if c.cell_type == "code")
    assert "NotImplementedError" in src and "BEGIN SOLUTION" not in src and "### HINT" not in src
    checks = expected_checks(learner)
    assert len(checks) >= 3, "an exercise needs several named checks"
    assert checks == expected_checks(nbformat.read(solution, as_version=4))
    assert "summary()" in src, "the last cell should call shared.checks.summary()"
    kinds = [c.metadata["course"]["kind"] for c in learner.cells if c.cell_type == "code"]
    assert "answer" in kinds and "check" in kinds
    ids = [c["id"] for c in learner.cells]
    assert len(set(ids)) == len(ids) and all(i.startswith(solution.stem.removeprefix("exercise_")) for i in ids)
    for c in learner.cells:
        if c.cell_type == "code" and c.metadata["course"]["kind"] == "check":
            assert c.metadata.get("editable") is False and c.metadata.get("deletable") is False


def _solution_lines(nb):
    lines = set()
    for c in nb.cells:
        if c.cell_type == "code":
            for r in solution_regions(c.source):
                lines |= {re.sub(r"\s+", "", ln) for ln in r["code"] if len(re.sub(r"\s+", "", ln)) >= 16}
    return lines


@pytest.mark.parametrize("solution", SOLUTIONS, ids=IDS)
def test_hints_are_progressive_and_never_the_solution_line(solution):
    nb = nbformat.read(solution, as_version=4)
    lines = _solution_lines(nb)
    regions = [r for c in nb.cells if c.cell_type == "code" for r in solution_regions(c.source)]
    for r in regions:
        assert r["concept"], f"{solution.name}: the region in {r['topic']} has no `hint:` naming its concept"
        for text in [r["concept"], *r["hints"]]:
            flat = re.sub(r"\s+", "", text)
            leaked = [ln for ln in lines if ln in flat]
            assert not leaked, f"{solution.name} {r['topic']}: a hint contains the solution line {leaked[0]!r}"
    learner = nbformat.read(exercise_path(solution), as_version=4)
    hints = learner.metadata["course"]["hints"]
    if solution.stem in {"exercise_bpe", "exercise_dataset", "exercise_attention", "exercise_gpt",
                         "exercise_training", "exercise_sampling", "exercise_lora"}:
        assert hints and all(len(v) >= 1 for v in hints.values()), "the course's exercises give progressive hints"
        assert sum(len(v) >= 2 for v in hints.values()) >= 1


@pytest.mark.parametrize("solution", SOLUTIONS, ids=IDS)
def test_exercise_states_its_time_and_the_component_it_rebuilds(solution):
    nb = nbformat.read(solution, as_version=4)
    intro = "\n".join(c.source for c in nb.cells[:4] if c.cell_type == "markdown")
    assert re.search(r"\d+\s*(?:[-–]|to)?\s*\d*\s*min", intro), f"{solution.name}: state the estimated time (e.g. '45 min')"
    assert re.search(r"shared\.\w+", intro), f"{solution.name}: name the shared component it rebuilds (shared.x.Y)"


@pytest.mark.parametrize("solution", SOLUTIONS, ids=IDS)
def test_every_check_fails_on_the_stubs(solution):
    """A check that passes on unsolved stubs tests nothing: each one must fail (through the real grader)."""
    report = grade_notebook(exercise_path(solution))
    assert not report.refused, report.refused
    assert not report.tamper, report.tamper
    statuses = {c.name: c.status for c in report.checks}
    passing = [n for n, s in statuses.items() if s == "pass"]
    not_run = [n for n, s in statuses.items() if s == "not run"]
    assert not passing, f"these checks pass on the unsolved stubs (vacuous): {passing}"
    assert not not_run, f"these checks never ran (put their setup inside the check function): {not_run}; errors: {report.errors}"
    assert statuses and all(s == "fail" for s in statuses.values())
