"""Generate learner exercise notebooks from solution notebooks (nbgrader-style markers).

The source of truth for each exercise is ``chXX_*/solutions/<name>.ipynb``. Inside its code
cells, the learner's part is fenced like this::

    def get_stats(ids, counts=None):
        ### BEGIN SOLUTION hint: count every adjacent pair
        ### HINT: the pairs of [1, 2, 3] are (1, 2) and (2, 3): what pairs them up?
        ### HINT: zip a list with itself shifted by one; a dict keeps the counts
        counts = {}
        ...
        return counts
        ### END SOLUTION

The generator writes ``chXX_*/<name>.ipynb`` (the learner copy) in which:

* each fenced region becomes ``raise NotImplementedError("<topic>: <concept>. Stuck? ...")``
  at the same indentation. The topic is the enclosing function (``get_stats``) or method
  (``GPTDataset.__len__``); the concept is the ``hint:`` text, which names the idea and never
  gives the solution line;
* the ``### HINT:`` lines (any number, from vague to precise) go into the notebook's metadata,
  and ``shared.checks.hint(topic)`` shows them one at a time;
* all outputs are cleared, markdown lines containing ``SOLUTION-ONLY`` are dropped, and the
  solution's Colab badge is pointed at the learner copy;
* cells get stable ids (``cell-000`` ...), and metadata the grader relies on: the notebook's
  ``course.assignment`` id and ``role``, and each code cell's ``course.kind``: ``answer`` (the
  learner edits it), ``given`` or ``check`` (the grader runs the course's own copy of both).
  Check cells are also marked read-only for JupyterLab (``editable: false``).

The solution notebook gets the same notebook metadata with ``role: solution`` (so the grader
can refuse it).

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

__all__ = ["make_exercise", "solution_notebooks", "exercise_path", "assignment_id", "cell_kind",
           "strip_solutions", "solution_regions", "main"]

ROOT = Path(__file__).resolve().parent.parent.parent
BEGIN = re.compile(r"^(?P<indent>[ \t]*)### BEGIN SOLUTION(?:\s+hint:\s*(?P<hint>.*?))?\s*$")
END = re.compile(r"^[ \t]*### END SOLUTION\s*$")
HINT = re.compile(r"^[ \t]*### HINT:\s*(?P<text>.*?)\s*$")
CALLS_CHECK = re.compile(r"(?<![\w.])(check|summary)\(")
_DEF = re.compile(r"^(?P<indent>[ \t]*)(?:async\s+)?(?:def|class)\s+(?P<name>\w+)")


def solution_notebooks(root: Path = ROOT) -> list[Path]:
    """All solution notebooks, ``ch*/solutions/*.ipynb``, sorted."""
    return sorted(p for p in root.glob("ch*/solutions/*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def exercise_path(solution: Path) -> Path:
    """Where the learner copy of ``solution`` lives: the chapter folder, same file name."""
    return solution.parent.parent / solution.name


def assignment_id(solution: Path) -> str:
    """The assignment id of an exercise: ``<chapter folder>/<notebook stem>``, e.g.
    ``ch01_tokenization/exercise_bpe`` (the same for the solution and the learner copy)."""
    solution = Path(solution)
    chapter = solution.parent.parent if solution.parent.name == "solutions" else solution.parent
    return f"{chapter.name}/{solution.stem}"


def cell_id(solution: Path, index: int) -> str:
    """The learner copy's id of cell ``index``: unique to the assignment, e.g. ``bpe-017``."""
    return f"{Path(solution).stem.removeprefix('exercise_')}-{index:03d}"


def cell_kind(source: str, has_region: bool) -> str:
    """``answer`` (has a solution region), ``check`` (calls check/summary) or ``given``."""
    if has_region:
        return "answer"
    return "check" if CALLS_CHECK.search(source) else "given"


def _topic(lines: list[str], lineno: int, indent: str) -> str:
    """The function or method enclosing line ``lineno`` (0-based), e.g. ``GPTDataset.__len__``."""
    names, level = [], len(indent)
    for line in reversed(lines[:lineno]):
        m = _DEF.match(line)
        if m and len(m.group("indent")) < level:
            names.append(m.group("name"))
            level = len(m.group("indent"))
            if level == 0:
                break
    return ".".join(reversed(names)) or "this cell"


def solution_regions(source: str, where: str = "") -> list[dict]:
    """``[{topic, concept, hints, code}]`` for each solution region of ``source``."""
    regions, cur = [], None
    lines = source.splitlines()
    for lineno, line in enumerate(lines):
        m = BEGIN.match(line)
        if m:
            if cur is not None:
                raise ValueError(f"{where}: nested BEGIN SOLUTION at line {lineno + 1}")
            cur = dict(topic=_topic(lines, lineno, m.group("indent")), concept=(m.group("hint") or "").strip(),
                       hints=[], code=[])
            continue
        if END.match(line):
            if cur is None:
                raise ValueError(f"{where}: END SOLUTION without BEGIN at line {lineno + 1}")
            regions.append(cur)
            cur = None
            continue
        if cur is not None:
            h = HINT.match(line)
            if h:
                cur["hints"].append(h.group("text"))
            else:
                cur["code"].append(line)
    if cur is not None:
        raise ValueError(f"{where}: BEGIN SOLUTION is never closed")
    return regions


def strip_solutions(source: str, where: str = "") -> str:
    """Replace every ``### BEGIN SOLUTION`` ... ``### END SOLUTION`` region with a stub.

    Raises:
        ValueError: on an unterminated or nested region.
    """
    solution_regions(source, where)  # validates the markers
    out: list[str] = []
    inside = False
    lines = source.splitlines()
    for lineno, line in enumerate(lines):
        m = BEGIN.match(line)
        if m:
            inside = True
            topic = _topic(lines, lineno, m.group("indent"))
            concept = (m.group("hint") or "").strip()
            msg = f"Exercise ({topic}): replace this line with your code." + (f" Concept: {concept}." if concept else "")
            if any(HINT.match(x) for x in lines[lineno + 1:]):
                msg += f" Stuck? run hint({topic!r}) for a hint, again for the next."
            out.append(f"{m.group('indent')}raise NotImplementedError({msg!r})")
            continue
        if END.match(line):
            inside = False
            continue
        if not inside:
            out.append(line)
    return "\n".join(out)


def make_exercise(solution: Path) -> nbformat.NotebookNode:
    """Build the learner notebook for ``solution`` (does not write it).

    Raises:
        ValueError: if the notebook has no solution region at all (nothing to exercise).
    """
    from shared.course.notebooks import colab_url

    nb = nbformat.read(solution, as_version=4)
    sol_url, ex_url = colab_url(solution), colab_url(exercise_path(solution))
    n_regions = 0
    hints: dict[str, list[str]] = {}
    for i, cell in enumerate(nb.cells):
        cell["id"] = cell_id(solution, i)  # deterministic: the generated file is byte-stable
        if cell.cell_type == "code":
            regions = solution_regions(cell.source, where=f"{solution.name} cell {i}")
            n_regions += len(regions)
            for r in regions:
                if r["hints"]:
                    hints.setdefault(r["topic"], []).extend(r["hints"])
            kind = cell_kind(cell.source, bool(regions))
            cell.source = strip_solutions(cell.source, where=f"{solution.name} cell {i}")
            cell.outputs = []
            cell.execution_count = None
            for k in ("execution", "editable", "deletable", "course"):
                cell.metadata.pop(k, None)
            cell.metadata["course"] = {"kind": kind}
            if kind == "check":
                cell.metadata["editable"] = False
                cell.metadata["deletable"] = False
        elif cell.cell_type == "markdown":
            cell.source = "\n".join(ln for ln in cell.source.splitlines() if "SOLUTION-ONLY" not in ln)
            # The solution's own Colab badge must point to the learner copy in the learner copy.
            cell.source = cell.source.replace(sol_url, ex_url)
    if n_regions == 0:
        raise ValueError(f"{solution}: no '### BEGIN SOLUTION' region found")
    nb.metadata.pop("widgets", None)
    nb.metadata["course"] = {"assignment": assignment_id(solution), "role": "exercise", "hints": hints}
    return nb


def render(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


def stamp_solution(solution: Path) -> bool:
    """Give ``solution`` its ``course`` metadata (assignment id, role) if missing; True if written."""
    nb = nbformat.read(solution, as_version=4)
    want = {"assignment": assignment_id(solution), "role": "solution"}
    if nb.metadata.get("course") == want:
        return False
    nb.metadata["course"] = want
    solution.write_text(nbformat.writes(nb) + "\n", encoding="utf-8")
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m shared.exercises", description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only verify; exit 1 if a copy is stale")
    args = ap.parse_args(argv)
    stale = []
    for sol in solution_notebooks():
        text = render(make_exercise(sol))
        dest = exercise_path(sol)
        if args.check:
            if not dest.exists() or dest.read_text(encoding="utf-8") != text:
                stale.append(dest)
            if nbformat.read(sol, as_version=4).metadata.get("course", {}).get("role") != "solution":
                stale.append(sol)
        else:
            dest.write_text(text, encoding="utf-8")
            if stamp_solution(sol):
                print(f"stamped {sol.relative_to(ROOT)} (course metadata)")
            print(f"wrote {dest.relative_to(ROOT)}")
    if stale:
        print("stale exercise notebooks (run `python -m shared.exercises`):", *stale, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
