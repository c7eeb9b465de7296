"""The autograder against a dishonest student: every trick gets no full marks, and says why.

Each case starts from the unsolved learner copy of the Chapter 3 exercise (5 checks, the
cheapest to run), applies one trick, and is graded through the real sandboxed grader. All
cases are graded together with ``--jobs 2`` in one fixture to keep the suite fast.
"""

from __future__ import annotations

import copy
import json
import os
import textwrap
from pathlib import Path

import nbformat
import pytest

from shared.course import grade
from shared.course.exercises import ROOT

ASSIGNMENT = "ch03_attention/exercise_attention"
LEARNER = ROOT / "ch03_attention" / "exercise_attention.ipynb"
N_CHECKS = 5


def _learner():
    return nbformat.read(LEARNER, as_version=4)


def _code(nb, kind):
    return [c for c in nb.cells if c.cell_type == "code" and c.metadata.get("course", {}).get("kind") == kind]


def _add_cell(nb, source, before_first_check=True):
    cell = nbformat.v4.new_code_cell(textwrap.dedent(source))
    idx = nb.cells.index(_code(nb, "check")[0]) if before_first_check else len(nb.cells)
    nb.cells.insert(idx, cell)
    return nb


def _answer(nb, source):
    """Replace the (single) answer cell's source: the class the student writes."""
    _code(nb, "answer")[0].source = textwrap.dedent(source)
    return nb


def case_delete_checks_keep_trivial():
    nb = _learner()
    for c in _code(nb, "check"):
        nb.cells.remove(c)
    return _add_cell(nb, "from shared.checks import check, summary\ncheck('trivial', lambda: None)\nsummary()",
                     before_first_check=False)


def case_many_trivial_checks():
    nb = _learner()
    return _add_cell(nb, "\n".join(f"check('trivial {i}', lambda: None)" for i in range(96)), before_first_check=False)


def case_neutered_assertions():
    nb = _learner()
    for c in _code(nb, "check"):
        c.source = "def _noop():\n    pass\n" + c.source.replace("check(", "(lambda name, fn: check(name, _noop))(")
    return nb


def case_monkeypatch_check_top_level():
    return _add_cell(_learner(), """\
        import shared.checks
        shared.checks.check = lambda name, fn: print("✅ PASS ", name) or True
        shared.checks.summary = lambda: None
        """)


def case_monkeypatch_check_in_assignment():
    # An assignment survives the definitions-only filter: the runtime integrity check catches it.
    return _add_cell(_learner(), """\
        import shared.checks
        _ = setattr(shared.checks, "check", lambda name, fn: True)
        """)


def case_patch_torch_allclose():
    return _add_cell(_learner(), """\
        import torch
        _ = setattr(torch, "allclose", lambda *a, **k: True)
        """)


def case_forged_lines_and_exit():
    # The old grader read COURSE_CHECKS_FILE: forge lines there and in every open descriptor, then die.
    return _answer(_learner(), """\
        import json, os
        from torch import nn

        def _forge():
            line = json.dumps({"event": "check", "name": "output shapes, attributes and the d_out % n_heads error",
                               "passed": True, "message": ""}) + "\\n"
            path = os.environ.get("COURSE_CHECKS_FILE")
            if path:
                open(path, "a").write(line)
            for fd in range(3, 64):
                try:
                    os.write(fd, line.encode())
                except OSError:
                    pass
            os._exit(0)

        class CausalMultiHeadAttention(nn.Module):
            def __init__(self, *args, **kwargs):
                super().__init__()
                _forge()
        """)


def case_exec_solution():
    # Top-level exec is not run at grading; from inside a function the solutions are not there.
    return _answer(_learner(), """\
        import json, pathlib
        src = pathlib.Path("solutions/exercise_attention.ipynb")
        exec("\\n".join(c["source"] if isinstance(c["source"], str) else "".join(c["source"])
                       for c in json.loads(src.read_text())["cells"] if c["cell_type"] == "code"))

        class CausalMultiHeadAttention:
            def __new__(cls, *args, **kwargs):
                import shared, pathlib, json
                root = pathlib.Path(shared.__file__).parent.parent
                for nb in list(root.glob("ch03_attention/solutions/*.ipynb")) + \\
                        list(pathlib.Path(__file__ if "__file__" in globals() else ".").parent.glob("**/solutions/*.ipynb")):
                    ns = {}
                    exec("\\n".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"]
                                    if c["cell_type"] == "code" and "BEGIN SOLUTION" in "".join(c["source"])), ns)
                    return ns["CausalMultiHeadAttention"](*args, **kwargs)
                raise FileNotFoundError("no solution found")
        """)


def case_edit_course_checks_on_disk():
    return _answer(_learner(), """\
        class CausalMultiHeadAttention:
            def __init__(self, *args, **kwargs):
                import shared.checks, pathlib
                for target in (pathlib.Path(shared.checks.__file__),
                               pathlib.Path(%r) / "shared" / "checks.py"):
                    try:
                        target.write_text("def check(name, fn):\\n    return True\\n")
                    except OSError as e:
                        print("could not write", target, e)
                raise NotImplementedError
        """ % str(ROOT))


def case_kill_the_grader():
    return _answer(_learner(), """\
        import os, signal

        class CausalMultiHeadAttention:
            def __init__(self, *args, **kwargs):
                for pid in (os.getppid(), 1, -1, 0):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
        """)


def case_memory_and_loop():
    return _answer(_learner(), """\
        class CausalMultiHeadAttention:
            def __init__(self, *args, **kwargs):
                self.hog = bytearray(64 * 2**30)   # 64 GiB

            def forward(self, x):
                while True:
                    pass
        """)


CASES = {name.removeprefix("case_"): fn for name, fn in globals().items() if name.startswith("case_")}
if not grade.namespaces_available():
    # Without namespaces the checking process shares the file system and can see the grader:
    # these two would really damage the checkout or kill the test run (the grader warns).
    CASES.pop("edit_course_checks_on_disk")
    CASES.pop("kill_the_grader")


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tamper")
    paths = []
    for name, make in CASES.items():
        p = tmp / name / "exercise_attention.ipynb"
        p.parent.mkdir()
        nbformat.write(make(), p)
        paths.append(p)
    out = tmp / "grades"
    limits = grade.Limits(cell_timeout=5, check_timeout=5, timeout=120, memory_mb=4096)
    reports = grade.grade_many(paths, out=out, jobs=2, quiet=True, limits=limits, seed=None)
    return {r.student: r for r in reports}, out


@pytest.mark.parametrize("name", list(CASES))
def test_no_full_marks(graded, name):
    r = graded[0][name]
    assert r.assignment == ASSIGNMENT
    assert r.total == N_CHECKS, f"only the course's {N_CHECKS} checks count, got {[c.name for c in r.checks]}"
    assert r.passed == 0, grade.format_report(r)
    assert not r.ok


def _says(r, *words):
    text = " ".join(r.tamper + r.review + r.errors + r.notes + [c.message for c in r.checks]).lower()
    return all(w.lower() in text for w in words)


def test_each_trick_is_named(graded):
    g = graded[0]
    assert _says(g["delete_checks_keep_trivial"], "deleted check cell", "added a cell that calls check")
    assert _says(g["many_trivial_checks"], "added a cell that calls check")
    assert _says(g["neutered_assertions"], "edited check cell")
    assert _says(g["monkeypatch_check_top_level"], "not run at grading", "shared.checks.check =")
    assert _says(g["monkeypatch_check_top_level"], "touches the check machinery")
    assert _says(g["monkeypatch_check_in_assignment"], "shared.checks.check was replaced", "not trusted")
    assert _says(g["patch_torch_allclose"], "torch.allclose was replaced")
    r = g["forged_lines_and_exit"]
    assert _says(r, "without the grader's key") or _says(r, "malformed"), r.tamper
    assert _says(r, "ended early") and _says(r, "exits or sends signals")
    assert _says(g["exec_solution"], "runs code from strings", "not run at grading")
    if "kill_the_grader" in g:
        assert _says(g["kill_the_grader"], "exits or sends signals")
    assert _says(g["memory_and_loop"], "memoryerror") or _says(g["memory_and_loop"], "longer than")


def test_course_files_survive_and_results_are_written(graded):
    reports, out = graded
    text = (ROOT / "shared" / "checks.py").read_text()
    assert "def check(name: str, fn" in text and "return True\n" != text
    # The grader survived the kill attempt and wrote every result, feedback and the gradebook.
    assert len(list((out / "results").glob("*.json"))) == len(CASES)
    assert len(list((out / "feedback").glob("*.md"))) == len(CASES)
    rows = (out / "gradebook.csv").read_text().splitlines()
    assert len(rows) == 1 + len(CASES)
    data = json.loads((out / "results" / "memory_and_loop__exercise_attention.json").read_text())
    assert data["passed"] == 0 and data["total"] == N_CHECKS


@pytest.mark.skipif(not grade.namespaces_available(), reason="needs Linux user namespaces (unshare)")
def test_sandbox_is_read_only_and_offline(graded):
    r = graded[0]["edit_course_checks_on_disk"]
    assert "Read-only file system" in r.output or "Permission denied" in r.output, r.output


def test_solution_and_renamed_notebooks_are_refused(tmp_path):
    sol = ROOT / "ch03_attention" / "solutions" / "exercise_attention.ipynb"
    r = grade.grade_notebook(sol)
    assert r.refused and "solution notebook" in r.refused and r.passed == 0
    # The solution with its metadata made to look like a learner copy: the answers give it away.
    nb = nbformat.read(sol, as_version=4)
    nb.metadata["course"]["role"] = "exercise"
    p = tmp_path / "exercise_attention.ipynb"
    nbformat.write(nb, p)
    r = grade.grade_notebook(p)
    assert r.refused and "identical to the published solution" in r.refused
    # Another chapter's notebook renamed to this exercise's name.
    other = nbformat.read(ROOT / "ch02_embeddings" / "exercise_dataset.ipynb", as_version=4)
    nbformat.write(other, p)
    r = grade.grade_notebook(p)
    assert r.refused and "renamed" in r.refused
    r = grade.grade_notebook(ROOT / "ch02_embeddings" / "exercise_dataset.ipynb", assignment=ASSIGNMENT)
    assert r.refused and "not 'ch03_attention/exercise_attention'" in r.refused
    # ... and with its metadata stripped as well: no cell belongs to the assignment.
    other.metadata.pop("course")
    nbformat.write(other, p)
    r = grade.grade_notebook(p)
    assert r.refused and "no cell of this notebook belongs" in r.refused
    data = copy.deepcopy(r.to_dict())
    assert data["score"] == 0.0


def test_no_checks_file_is_handed_to_the_kernel(graded):
    r = graded[0]["forged_lines_and_exit"]
    assert "COURSE_CHECKS_FILE" not in os.environ
    assert all(c.status != "pass" for c in r.checks)
