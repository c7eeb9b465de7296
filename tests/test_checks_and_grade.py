"""The exercise machinery: checks, hints, hidden parameters, the generator, and the grader's pieces."""

import csv
import json
import random
import textwrap

import nbformat
import pytest

from shared import checks
from shared.course import exercises, grade
from shared.course.exercises import ROOT
from shared.course.harness import definitions_only


def test_check_reports_pass_fail_notimplemented_and_crash(capsys, monkeypatch):
    seen = []
    monkeypatch.setattr(checks, "_sink", seen.append)
    checks.reset()
    assert checks.check("ok", lambda: None)

    def bad():
        assert 1 == 2, "likely mistake: forgot to shift"
    assert not checks.check("bad", bad)

    def stub():
        raise NotImplementedError("hint: use zip")
    assert not checks.check("stub", stub)
    assert not checks.check("crash", lambda: 1 / 0)
    out = capsys.readouterr().out
    assert "PASS  ok" in out and "forgot to shift" in out and "not implemented yet" in out and "ZeroDivisionError" in out
    assert [(r["name"], r["passed"]) for r in seen] == [("ok", True), ("bad", False), ("stub", False), ("crash", False)]
    with pytest.raises(AssertionError, match="bad; stub; crash"):
        checks.summary()
    checks.reset()
    with pytest.raises(AssertionError, match="no checks ran"):
        checks.summary()


def test_check_time_limit_stops_an_infinite_loop(monkeypatch):
    monkeypatch.setattr(checks, "_time_limit", 0.3)

    def forever():
        while True:
            pass
    assert not checks.check("loop", forever)
    assert "longer than 0.3s" in checks.results()["loop"][1]


def test_hidden_parameters(monkeypatch):
    assert checks.hidden(3, [5, 7]) == 3                      # visible default in a learner's kernel
    monkeypatch.setattr(checks, "_rng", random.Random(0))     # what the grader does
    assert {checks.hidden(3, [5, 7]) for _ in range(20)} == {5, 7}
    with pytest.raises(ValueError, match="choices"):
        checks.hidden(1, [])


def test_hint_reveals_one_at_a_time(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(checks, "_hints_shown", {})
    nb = nbformat.v4.new_notebook()
    nb.metadata["course"] = {"hints": {"merge": ["first", "second"]}}
    nbformat.write(nb, tmp_path / "exercise_x.ipynb")
    assert "1/2 for merge: first" in checks.hint("merge", where=tmp_path)
    assert "2/2 for merge: second" in checks.hint("merge", where=tmp_path)
    assert "1/2" in checks.hint("merge", 1, where=tmp_path)
    with pytest.raises(ValueError, match="hints 1..2"):
        checks.hint("merge", 3, where=tmp_path)
    with pytest.raises(ValueError, match="no hints"):
        checks.hint("nothing", where=tmp_path)


def test_strip_solutions_keeps_indent_names_the_topic_and_hides_hints():
    src = textwrap.dedent("""\
        def f(x):
            ### BEGIN SOLUTION hint: double it
            ### HINT: multiply
            y = 2 * x
            return y
            ### END SOLUTION
        print(f)""")
    out = exercises.strip_solutions(src)
    assert "2 * x" not in out and "multiply" not in out
    assert out.startswith("def f(x):\n    raise NotImplementedError(\"Exercise (f): replace this line with your code. "
                          "Concept: double it. Stuck? run hint('f')")
    assert out.endswith("print(f)")
    regions = exercises.solution_regions(src)
    assert regions[0]["topic"] == "f" and regions[0]["hints"] == ["multiply"] and regions[0]["concept"] == "double it"


@pytest.mark.parametrize("src, msg", [
    ("### BEGIN SOLUTION\nx = 1", "never closed"),
    ("### END SOLUTION", "without BEGIN"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION", "nested"),
])
def test_strip_solutions_rejects_bad_markers(src, msg):
    with pytest.raises(ValueError, match=msg):
        exercises.strip_solutions(src)


def test_make_exercise_requires_a_region(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("print(1)")]
    nbformat.write(nb, tmp_path / "x.ipynb")
    with pytest.raises(ValueError, match="no '### BEGIN SOLUTION'"):
        exercises.make_exercise(tmp_path / "x.ipynb")


def test_definitions_only_keeps_definitions_and_drops_the_rest():
    import ast
    tree = ast.parse(textwrap.dedent("""\
        import os
        from math import pi
        X = 3
        a, b = 1, 2
        def f(): return 1
        class C: pass
        print("hi")
        shared.checks.check = f
        for i in range(3): pass
        os._exit(0)
        """))
    kept, dropped = definitions_only(tree)
    assert [type(n).__name__ for n in kept.body] == ["Import", "ImportFrom", "Assign", "Assign", "FunctionDef", "ClassDef"]
    assert dropped == ["print('hi')", "shared.checks.check = f", "for i in range(3):", "os._exit(0)"]


def test_unreadable_and_unknown_notebooks_are_refused(tmp_path):
    p = tmp_path / "broken.ipynb"
    p.write_text("{not json")
    r = grade.grade_notebook(p)
    assert not r.ok and "cannot read" in r.refused
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("print(1)")]
    nbformat.write(nb, tmp_path / "mine.ipynb")
    r = grade.grade_notebook(tmp_path / "mine.ipynb")
    assert "cannot tell which assignment" in r.refused
    r = grade.grade_notebook(tmp_path / "mine.ipynb", assignment="ch99/nothing")
    assert "unknown assignment" in r.refused


def _solved(tmp_path, name, n_solved):
    """A learner copy of the Chapter 3 exercise with its answer cell solved (or not)."""
    sol = nbformat.read(ROOT / "ch03_attention" / "solutions" / "exercise_attention.ipynb", as_version=4)
    nb = nbformat.read(ROOT / "ch03_attention" / "exercise_attention.ipynb", as_version=4)
    if n_solved:
        for i, c in enumerate(nb.cells):
            if c.cell_type == "code" and c.metadata["course"]["kind"] == "answer":
                c.source = sol.cells[i].source.replace("### BEGIN SOLUTION", "# mine").replace("### END SOLUTION", "")
    p = tmp_path / "class" / name / "exercise_attention.ipynb"
    p.parent.mkdir(parents=True)
    nbformat.write(nb, p)
    return p


def test_grade_a_class_of_20_with_two_jobs(tmp_path, capsys):
    """The instructor workflow: a class folder, --jobs 2, results, feedback and the gradebook."""
    for i in range(20):
        _solved(tmp_path, f"student{i:02d}", n_solved=i % 4 == 0)
    out = tmp_path / "grades"
    code = grade.main([str(tmp_path / "class"), "--jobs", "2", "--out", str(out), "--seed", "1"])
    assert code == 1  # most of the class has not solved it
    rows = list(csv.DictReader((out / "gradebook.csv").open()))
    assert len(rows) == 20 and rows[0]["student"] == "student00"
    names = grade.expected_checks(grade.assignments()["ch03_attention/exercise_attention"].learner)
    assert [k for k in rows[0] if k.startswith("ch03")] == [f"ch03_attention/exercise_attention: {n}" for n in names]
    solved = {r["student"] for r in rows if r["score"] == "1.000"}
    assert solved == {f"student{i:02d}" for i in range(0, 20, 4)}
    assert all(r["passed"] == "0" for r in rows if r["student"] not in solved)
    assert len(list((out / "results").glob("*.json"))) == 20
    fb = (out / "feedback" / "student01__exercise_attention.md").read_text()
    assert "Score: 0/" in fb and "not implemented yet" in fb
    data = json.loads((out / "results" / "student00__exercise_attention.json").read_text())
    assert data["score"] == 1.0 and not data["tamper"] and not data["review"]
    assert "hidden check parameters drawn with --seed 1" in capsys.readouterr().out


def test_release_writes_the_student_folder_without_solutions(tmp_path):
    dest = tmp_path / "student-folder"
    assert grade.main(["release", str(dest)]) == 0
    files = [p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()]
    assert "ch03_attention/exercise_attention.ipynb" in files and "shared/checks.py" in files
    assert not [f for f in files if "/solutions/" in f or f.startswith(("tests/", ".ci/"))]
    assert not [f for f in files if f.endswith((".ipynb",)) and '"role": "solution"' in (dest / f).read_text()]
    assert grade.main(["release", str(dest)]) == 2  # never overwrites
