"""Run an exercise's mutant library through the real grader.

A mutant library ``tests/mutants/<exercise_stem>.py`` defines::

    SOLUTION = "ch04_gpt/solutions/exercise_rope.ipynb"   # from the repository root
    MUTANTS = {"name": dict(code="def f(...): ...", expect="substring of a failure message"), ...}
    ALTERNATIVES = {"name": "def f(...): ...", ...}          # other correct solutions

Each variant is the solution notebook with one extra code cell (``code``) inserted
immediately before the first code cell that calls ``check(...)``. It is graded exactly as a
student's notebook is (:func:`shared.course.grade.grade_notebook`, visible parameters), and

* a mutant must fail at least one check whose message contains ``expect`` (case-insensitive);
* an alternative must pass every check.

Usage::

    python -m shared.course.mutants tests/mutants/exercise_bpe.py [--jobs 2]
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nbformat

from shared.course.exercises import ROOT, cell_id
from shared.course.grade import NotebookReport, grade_batch, grade_notebook

__all__ = ["load_library", "variant_notebook", "run_variant", "run_variants", "Variant", "main"]

_CALLS_CHECK = re.compile(r"(?<![\w.])check\(")


@dataclass
class Variant:
    library: str
    kind: str        # "mutant" | "alternative"
    name: str
    code: str
    expect: str = ""


def load_library(path: Path) -> tuple[Path, list[Variant]]:
    """(solution path, variants) of one mutant library file.

    Raises:
        ValueError: if the file lacks SOLUTION, MUTANTS or ALTERNATIVES, or a mutant lacks code/expect.
    """
    path = Path(path)
    spec = importlib.util.spec_from_file_location(f"_mutants_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for attr in ("SOLUTION", "MUTANTS", "ALTERNATIVES"):
        if not hasattr(mod, attr):
            raise ValueError(f"{path}: missing {attr}")
    variants = []
    for name, m in mod.MUTANTS.items():
        if not isinstance(m, dict) or not m.get("code") or not m.get("expect"):
            raise ValueError(f"{path}: mutant {name!r} needs dict(code=..., expect=...)")
        variants.append(Variant(path.stem, "mutant", name, m["code"], m["expect"]))
    for name, code in mod.ALTERNATIVES.items():
        variants.append(Variant(path.stem, "alternative", name, code))
    return ROOT / mod.SOLUTION, variants


def variant_notebook(solution: Path, code: str) -> nbformat.NotebookNode:
    """The solution notebook with ``code`` as a new cell before the first cell that calls check()."""
    nb = nbformat.read(solution, as_version=4)
    for i, cell in enumerate(nb.cells):
        cell["id"] = cell_id(solution, i)  # the learner copy's ids, as a student's notebook has
    first = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and _CALLS_CHECK.search(c.source))
    extra = nbformat.v4.new_code_cell(code)
    extra["id"] = "student-variant"
    nb.cells.insert(first, extra)
    nb.metadata.setdefault("course", {})["role"] = "exercise"
    return nb


def run_variant(solution: Path, v: Variant, **kw) -> tuple[bool, str, NotebookReport]:
    """Grade one variant in its own sandbox; return (as expected?, explanation, report)."""
    nb = variant_notebook(solution, v.code)
    r = grade_notebook(solution, nb=copy.deepcopy(nb), allow_solution=True, student=f"{v.library}:{v.name}", **kw)
    return judge(v, r)


def run_variants(pairs: list[tuple[Path, Variant]], jobs: int = 2) -> list[tuple[bool, str, NotebookReport]]:
    """Grade many variants: ``jobs`` sandboxes at a time, each running a share of the variants in
    processes forked after the imports (:func:`shared.course.grade.grade_batch`). Same order as ``pairs``."""
    chunks = [list(range(i, len(pairs), jobs)) for i in range(jobs)]

    def run(idx: list[int]):
        items = [dict(path=pairs[i][0], nb=variant_notebook(*[pairs[i][0], pairs[i][1].code]), allow_solution=True,
                      student=f"{pairs[i][1].library}:{pairs[i][1].name}") for i in idx]
        return list(zip(idx, grade_batch(items))) if items else []

    out: dict[int, tuple] = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for done in pool.map(run, chunks):
            for i, r in done:
                out[i] = judge(pairs[i][1], r)
    return [out[i] for i in range(len(pairs))]


def judge(v: Variant, r: NotebookReport) -> tuple[bool, str, NotebookReport]:
    """Did variant ``v`` do what its library says (a mutant fails naming ``expect``; an alternative passes)?"""
    failed = [c for c in r.checks if c.status != "pass"]
    if r.refused:
        return False, f"refused: {r.refused}", r
    if v.kind == "alternative":
        ok = not failed and r.total > 0
        why = "passes every check" if ok else "; ".join(f"{c.name}: {c.status} {c.message[:200]}" for c in failed)
        return ok, why, r
    hit = [c for c in failed if v.expect.lower() in c.message.lower()]
    if hit:
        return True, f"fails {hit[0].name!r}: {hit[0].message[:160]}", r
    if not failed:
        return False, "passes every check (the checks miss this mistake)", r
    return False, (f"fails, but no message contains {v.expect!r}: "
                   + "; ".join(f"{c.name}: {c.message[:160]}" for c in failed)), r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m shared.course.mutants", description=__doc__.splitlines()[0])
    ap.add_argument("libraries", nargs="+", type=Path)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    jobs = [(sol, v) for lib in args.libraries for sol, vs in [load_library(lib)] for v in vs]
    t0 = time.monotonic()
    bad = 0
    for (sol, v), (ok, why, r) in zip(jobs, run_variants(jobs, args.jobs)):
        bad += not ok
        print(f"{'ok ' if ok else 'BAD'} {v.library} {v.kind:11} {v.name}: {why}", flush=True)
    print(f"\n{len(jobs) - bad}/{len(jobs)} variants as expected in {time.monotonic() - t0:.0f}s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
