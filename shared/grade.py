"""Autograder for instructors: ``python -m shared.grade NOTEBOOK... [--json out.json]``.

Each learner notebook is executed top to bottom in a fresh kernel (in its own folder, under
the smoke profile unless ``LLM_PROFILE`` says otherwise). Every ``check("name", ...)`` in it
is reported as PASS, FAIL (with the reason) or NOT RUN (an earlier cell crashed or timed
out), with a score per notebook. A cell that runs longer than ``--cell-timeout`` seconds is
interrupted and reported; the notebook as a whole is capped by ``--timeout``.

Exit status: 0 only when every check in every notebook passed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError

__all__ = ["grade_notebook", "NotebookReport", "main"]

_CHECK_NAME = re.compile(r"""\bcheck\(\s*(?P<q>["'])(?P<name>.+?)(?P=q)""")


@dataclass
class CheckResult:
    name: str
    status: str  # "pass" | "fail" | "not run"
    message: str = ""


@dataclass
class NotebookReport:
    notebook: str
    checks: list[CheckResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # crashes and timeouts, one line each
    seconds: float = 0.0

    @property
    def passed(self) -> int:
        return sum(c.status == "pass" for c in self.checks)

    @property
    def total(self) -> int:
        return len(self.checks)

    @property
    def ok(self) -> bool:
        return self.total > 0 and self.passed == self.total

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(passed=self.passed, total=self.total, score=self.passed / self.total if self.total else 0.0)
        return d


def expected_checks(nb: nbformat.NotebookNode) -> list[str]:
    """The check names declared in the notebook's code, in order of appearance."""
    names: list[str] = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            for m in _CHECK_NAME.finditer(cell.source):
                if m.group("name") not in names:
                    names.append(m.group("name"))
    return names


def grade_notebook(path: str | Path, cell_timeout: float = 300, timeout: float = 1200) -> NotebookReport:
    """Execute one notebook and collect its check results (never raises for learner errors)."""
    path = Path(path)
    report = NotebookReport(notebook=str(path))
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as e:  # unreadable file: report, don't crash the whole grading run
        report.errors.append(f"cannot read notebook: {type(e).__name__}: {e}")
        return report
    declared = expected_checks(nb)
    with tempfile.TemporaryDirectory() as tmp:
        results_file = Path(tmp) / "checks.jsonl"
        # The kernel gets its own environment: where to record checks, and the smoke profile
        # unless the caller chose one. Our own os.environ is left untouched.
        env = {**os.environ, "COURSE_CHECKS_FILE": str(results_file),
               "LLM_PROFILE": os.environ.get("LLM_PROFILE", "smoke")}
        start = time.monotonic()
        client = NotebookClient(
            nb, timeout=cell_timeout, kernel_name="python3", allow_errors=True,
            resources={"metadata": {"path": str(path.parent.resolve())}},
        )
        try:
            with client.setup_kernel(env=env):
                for index, cell in enumerate(nb.cells):
                    if time.monotonic() - start > timeout:
                        report.errors.append(f"notebook time limit of {timeout:.0f}s reached before cell {index}")
                        break
                    client.execute_cell(cell, index)
                    for out in cell.get("outputs", []):
                        if out.get("output_type") == "error":
                            report.errors.append(f"cell {index} raised {out.get('ename')}: {out.get('evalue')}")
        except CellTimeoutError:
            report.errors.append(f"a cell ran longer than {cell_timeout:.0f}s and was stopped (infinite loop?)")
        except DeadKernelError as e:
            report.errors.append(f"the kernel died: {e}")
        except Exception as e:
            report.errors.append(f"execution failed: {type(e).__name__}: {e}")
        report.seconds = round(time.monotonic() - start, 1)
        recorded: dict[str, tuple[bool, str]] = {}
        if results_file.exists():
            for line in results_file.read_text(encoding="utf-8").splitlines():
                r = json.loads(line)
                recorded[r["name"]] = (r["passed"], r["message"])
    for name in declared + [n for n in recorded if n not in declared]:
        if name in recorded:
            ok, msg = recorded[name]
            report.checks.append(CheckResult(name, "pass" if ok else "fail", msg))
        else:
            report.checks.append(CheckResult(name, "not run", "an earlier cell crashed or timed out"))
    if not declared and not recorded:
        report.errors.append("no check(...) calls found in this notebook")
    return report


def format_report(r: NotebookReport) -> str:
    lines = [f"== {r.notebook}: {r.passed}/{r.total} checks passed ({r.seconds:.0f}s)"]
    for c in r.checks:
        mark = {"pass": "PASS   ", "fail": "FAIL   ", "not run": "NOT RUN"}[c.status]
        lines.append(f"  {mark} {c.name}" + (f" — {c.message}" if c.message and c.status != "pass" else ""))
    lines += [f"  ERROR   {e}" for e in r.errors[:10]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m shared.grade", description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="+", type=Path, help="learner notebooks to grade")
    ap.add_argument("--json", type=Path, help="write machine-readable results to this file")
    ap.add_argument("--cell-timeout", type=float, default=300, help="seconds per cell (default 300)")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per notebook (default 1200)")
    args = ap.parse_args(argv)
    reports = []
    for nb in args.notebooks:
        r = grade_notebook(nb, cell_timeout=args.cell_timeout, timeout=args.timeout)
        print(format_report(r), flush=True)
        reports.append(r)
    passed = sum(r.passed for r in reports)
    total = sum(r.total for r in reports)
    print(f"\nTOTAL: {passed}/{total} checks passed in {len(reports)} notebook(s)")
    if args.json:
        args.json.write_text(json.dumps({"passed": passed, "total": total,
                                         "notebooks": [r.to_dict() for r in reports]}, indent=2))
    return 0 if reports and all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
