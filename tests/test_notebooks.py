"""Conventions every notebook keeps (see CONTRIBUTING.md). nbval itself runs the notebooks."""

import re
from pathlib import Path

import nbformat
import pytest

from shared.notebooks import (
    ABS_PATH_PATTERNS,
    all_notebooks,
    colab_url,
    setup_cell,
    shared_source,
    tagged_cells,
)

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = all_notebooks()
IDS = [p.relative_to(ROOT).as_posix() for p in NOTEBOOKS]


def _is_learner_copy(p: Path) -> bool:
    return p.name.startswith("exercise_") and p.parent.name != "solutions"


def _chapter(p: Path) -> str:
    return next(part for part in p.relative_to(ROOT).parts if part.startswith("ch"))


@pytest.fixture(params=NOTEBOOKS, ids=IDS)
def nb_path(request):
    return request.param


def test_every_chapter_has_a_narrated_notebook_and_an_exercise():
    for ch in sorted(ROOT.glob("ch0*")):
        narrated = [p for p in ch.glob("*.ipynb") if not p.name.startswith("exercise_")]
        exercises = list(ch.glob("exercise_*.ipynb"))
        assert narrated, f"{ch.name}: no narrated notebook"
        assert exercises, f"{ch.name}: no exercise notebook"
        for ex in exercises:
            assert (ch / "solutions" / ex.name).exists(), f"{ex}: no solution in {ch.name}/solutions/"


def test_first_code_cell_is_the_setup_cell(nb_path):
    nb = nbformat.read(nb_path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and code[0].source.strip() == setup_cell(_chapter(nb_path)).strip(), \
        f"first code cell must be `python -m shared.notebooks setup-cell {_chapter(nb_path)}`"


def test_first_markdown_cell_has_a_colab_badge(nb_path):
    nb = nbformat.read(nb_path, as_version=4)
    md = next(c for c in nb.cells if c.cell_type == "markdown")
    assert colab_url(nb_path) in md.source, "first markdown cell needs shared.notebooks.colab_badge(path)"


def test_tagged_cells_are_exactly_the_shared_code(nb_path):
    """`# shared: shared.x.y` cells show the real package code, so notebook and package cannot drift."""
    nb = nbformat.read(nb_path, as_version=4)
    for index, target, body in tagged_cells(nb):
        expected = shared_source(target)
        assert body == expected, (f"cell {index} of {nb_path.name} has drifted from {target}; "
                                  "copy the package source into the cell (or fix the package)")


def test_no_machine_specific_paths(nb_path):
    text = nb_path.read_text(encoding="utf-8")
    for pattern in ABS_PATH_PATTERNS:
        assert not pattern.search(text), f"{nb_path.name} contains a machine-specific path ({pattern.pattern})"


def test_no_shell_escapes_that_cannot_fail(nb_path):
    """`!cmd` never fails a cell (nbval passes silently); use subprocess.run(..., check=True)."""
    nb = nbformat.read(nb_path, as_version=4)
    for i, c in enumerate(nb.cells):
        if c.cell_type == "code":
            assert not re.search(r"^\s*!", c.source, re.M), f"cell {i} uses a `!` shell escape"


def test_outputs_committed_only_where_meant(nb_path):
    nb = nbformat.read(nb_path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    has_out = [bool(c.get("outputs")) for c in code]
    if _is_learner_copy(nb_path):
        assert not any(has_out), "learner copies are committed without outputs"
    else:
        assert sum(has_out) >= len(code) // 3, "commit the notebook with the outputs of a real run"
        errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, f"committed outputs contain an error: {errors[0].get('ename')}"


def test_plots_have_labels(nb_path):
    """Every matplotlib figure in code gets axis labels (a cheap, source-level check)."""
    nb = nbformat.read(nb_path, as_version=4)
    src = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    n_plots = len(re.findall(r"\bplt\.(subplots|figure)\(", src))
    if n_plots:
        assert re.search(r"xlabel[(=]", src) and re.search(r"ylabel[(=]", src), \
            "plots need labelled axes"
