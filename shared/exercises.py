"""Generate learner exercise notebooks from solution notebooks (nbgrader-style markers).

The source of truth for each exercise is ``chXX_*/solutions/<name>.ipynb``. Inside its code
cells, the learner's part is fenced like this::

    def get_stats(ids):
        ### BEGIN SOLUTION hint: count zip(ids, ids[1:]) with a dict
        counts = {}
        ...
        return counts
        ### END SOLUTION

The generator writes ``chXX_*/<name>.ipynb`` (the learner copy) in which each fenced region
becomes ``raise NotImplementedError("<hint>")`` at the same indentation, all outputs are
cleared, markdown lines containing ``SOLUTION-ONLY`` are dropped, and the solution's
Colab badge is pointed at the learner copy.

Usage::

    python -m shared.exercises            # regenerate every exercise notebook
    python -m shared.exercises --check    # exit 1 if a committed copy is stale
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

__all__ = ["make_exercise", "solution_notebooks", "exercise_path", "main"]

ROOT = Path(__file__).resolve().parent.parent
BEGIN = re.compile(r"^(?P<indent>[ \t]*)### BEGIN SOLUTION(?:\s+hint:\s*(?P<hint>.*?))?\s*$")
END = re.compile(r"^[ \t]*### END SOLUTION\s*$")


def solution_notebooks(root: Path = ROOT) -> list[Path]:
    """All solution notebooks, ``ch*/solutions/*.ipynb``, sorted."""
    return sorted(p for p in root.glob("ch*/solutions/*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def exercise_path(solution: Path) -> Path:
    """Where the learner copy of ``solution`` lives: the chapter folder, same file name."""
    return solution.parent.parent / solution.name


def strip_solutions(source: str, where: str = "") -> str:
    """Replace every ``### BEGIN SOLUTION`` ... ``### END SOLUTION`` region with a stub.

    Raises:
        ValueError: on an unterminated or nested region.
    """
    out: list[str] = []
    inside = False
    for lineno, line in enumerate(source.splitlines(), 1):
        m = BEGIN.match(line)
        if m:
            if inside:
                raise ValueError(f"{where}: nested BEGIN SOLUTION at line {lineno}")
            inside = True
            hint = (m.group("hint") or "").strip()
            msg = "Exercise: replace this line with your code." + (f" Hint: {hint}" if hint else "")
            out.append(f"{m.group('indent')}raise NotImplementedError({msg!r})")
            continue
        if END.match(line):
            if not inside:
                raise ValueError(f"{where}: END SOLUTION without BEGIN at line {lineno}")
            inside = False
            continue
        if not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{where}: BEGIN SOLUTION is never closed")
    return "\n".join(out)


def make_exercise(solution: Path) -> nbformat.NotebookNode:
    """Build the learner notebook for ``solution`` (does not write it).

    Raises:
        ValueError: if the notebook has no solution region at all (nothing to exercise).
    """
    from shared.notebooks import colab_url

    nb = nbformat.read(solution, as_version=4)
    sol_url, ex_url = colab_url(solution), colab_url(exercise_path(solution))
    n_regions = 0
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:03d}"  # deterministic ids: the generated file is byte-stable
        if cell.cell_type == "code":
            n_regions += len([ln for ln in cell.source.splitlines() if BEGIN.match(ln)])
            cell.source = strip_solutions(cell.source, where=f"{solution.name} cell {i}")
            cell.outputs = []
            cell.execution_count = None
            cell.metadata.pop("execution", None)
        elif cell.cell_type == "markdown":
            cell.source = "\n".join(ln for ln in cell.source.splitlines() if "SOLUTION-ONLY" not in ln)
            # The solution's own Colab badge must point to the learner copy in the learner copy.
            cell.source = cell.source.replace(sol_url, ex_url)
    if n_regions == 0:
        raise ValueError(f"{solution}: no '### BEGIN SOLUTION' region found")
    nb.metadata.pop("widgets", None)
    return nb


def render(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only verify; exit 1 if a copy is stale")
    args = ap.parse_args(argv)
    stale = []
    for sol in solution_notebooks():
        text = render(make_exercise(sol))
        dest = exercise_path(sol)
        if args.check:
            if not dest.exists() or dest.read_text(encoding="utf-8") != text:
                stale.append(dest)
        else:
            dest.write_text(text, encoding="utf-8")
            print(f"wrote {dest.relative_to(ROOT)}")
    if stale:
        print("stale exercise notebooks (run `python -m shared.exercises`):", *stale, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
