"""The exercise machinery: checks, the generator, the autograder (on synthetic notebooks)."""

import json
import textwrap

import nbformat
import pytest

from shared import checks, exercises, grade


def test_check_reports_pass_fail_notimplemented_and_crash(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv(checks.CHECKS_FILE_ENV, str(tmp_path / "r.jsonl"))
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
    lines = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [(r["name"], r["passed"]) for r in lines] == [("ok", True), ("bad", False), ("stub", False), ("crash", False)]
    with pytest.raises(AssertionError, match="bad; stub; crash"):
        checks.summary()
    checks.reset()
    with pytest.raises(AssertionError, match="no checks ran"):
        checks.summary()


def test_strip_solutions_keeps_indent_and_hint():
    src = textwrap.dedent("""\
        def f(x):
            ### BEGIN SOLUTION hint: double it
            y = 2 * x
            return y
            ### END SOLUTION
        print(f)""")
    out = exercises.strip_solutions(src)
    assert "2 * x" not in out
    assert "    raise NotImplementedError('Exercise: replace this line with your code. Hint: double it')" in out
    assert out.endswith("print(f)")


@pytest.mark.parametrize("src, msg", [
    ("### BEGIN SOLUTION\nx = 1", "never closed"),
    ("### END SOLUTION", "without BEGIN"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION", "nested"),
])
def test_strip_solutions_rejects_bad_markers(src, msg):
    with pytest.raises(ValueError, match=msg):
        exercises.strip_solutions(src)


def _notebook(path, *cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(textwrap.dedent(c)) for c in cells]
    nbformat.write(nb, path)
    return path


def test_make_exercise_requires_a_region(tmp_path):
    p = _notebook(tmp_path / "x.ipynb", "print(1)")
    with pytest.raises(ValueError, match="no '### BEGIN SOLUTION'"):
        exercises.make_exercise(p)


def test_grade_scores_each_check_and_writes_json(tmp_path):
    nb = _notebook(tmp_path / "learner.ipynb",
                   "from shared.checks import check, summary",
                   "def double(x):\n    return 2 * x",
                   "def half(x):\n    raise NotImplementedError('hint')",
                   "check('double works', lambda: double(2) == 4 or (_ for _ in ()).throw(AssertionError('no')))",
                   "def _h():\n    assert half(4) == 2, 'half is wrong'\ncheck('half works', _h)",
                   "summary()")
    out = tmp_path / "r.json"
    code = grade.main([str(nb), "--json", str(out), "--cell-timeout", "60"])
    assert code == 1
    data = json.loads(out.read_text())
    assert data["passed"] == 1 and data["total"] == 2
    statuses = {c["name"]: c["status"] for c in data["notebooks"][0]["checks"]}
    assert statuses == {"double works": "pass", "half works": "fail"}


def test_grade_all_pass_exits_zero(tmp_path):
    nb = _notebook(tmp_path / "good.ipynb", "from shared.checks import check, summary",
                   "check('trivially true', lambda: None)", "summary()")
    assert grade.main([str(nb)]) == 0


def test_grade_reports_crash_and_infinite_loop_without_hanging(tmp_path):
    nb = _notebook(tmp_path / "loop.ipynb",
                   "from shared.checks import check",
                   "check('first', lambda: None)",
                   "while True:\n    pass",
                   "check('after the loop', lambda: None)")
    r = grade.grade_notebook(nb, cell_timeout=3, timeout=60)
    status = {c.name: c.status for c in r.checks}
    assert status == {"first": "pass", "after the loop": "not run"}
    assert any("longer than 3s" in e for e in r.errors), r.errors
    assert not r.ok


def test_grade_unreadable_notebook_is_reported(tmp_path):
    p = tmp_path / "broken.ipynb"
    p.write_text("{not json")
    r = grade.grade_notebook(p)
    assert not r.ok and "cannot read" in r.errors[0]
