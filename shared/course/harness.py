"""The grader's check phase, run inside the sandbox (``python harness.py JOB FD``).

Started by :mod:`shared.course.grade` in a fresh, resource-limited process, with only a
solution-free, read-only copy of ``shared/`` on its path. It

1. reads a one-time key from stdin, then imports the check machinery (``shared.checks``)
   and torch **before** any student code, keeping references to the originals;
2. runs the cells of the job in one namespace, in the course's order: the course's own
   ``given`` and ``check`` cells verbatim, and the student's ``answer`` (and added) cells
   reduced to their *definitions* (imports, ``def``, ``class``, assignments to plain names):
   top-level statements such as ``shared.checks.check = ...``, ``exec(...)``, ``os._exit()``
   or a forged print are dropped, and reported;
3. before each check cell restores ``shared.checks`` and verifies that the check machinery,
   a few builtins and torch's comparison functions are the originals; a change is reported
   as tampering and every later result is marked untrusted;
4. streams events (cell started, each check's start and result, errors, tampering, done)
   as JSON lines, each carrying the key, to a pipe the grader reads. Nothing is written
   to a file, and the grader, not this process, decides the score.
"""

from __future__ import annotations

import ast
import builtins
import io
import json
import math
import os
import random
import signal
import sys
import traceback

KEEP = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def definitions_only(tree: ast.Module) -> tuple[ast.Module, list[str]]:
    """Keep the top-level definitions of a student cell; return the new tree and what was dropped."""
    kept, dropped = [], []
    for node in tree.body:
        ok = isinstance(node, KEEP)
        if isinstance(node, ast.Assign):
            ok = all(isinstance(t, (ast.Name, ast.Tuple)) and all(
                isinstance(e, ast.Name) for e in (t.elts if isinstance(t, ast.Tuple) else [t])) for t in node.targets)
        elif isinstance(node, ast.AnnAssign):
            ok = isinstance(node.target, ast.Name)
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            ok = True  # a docstring or a bare string
        (kept if ok else dropped).append(node)
    return ast.Module(body=kept, type_ignores=[]), [_segment(n) for n in dropped]


def _segment(node: ast.AST) -> str:
    try:
        text = ast.unparse(node)
    except Exception:  # pragma: no cover
        text = type(node).__name__
    return (text.splitlines() or [""])[0][:80]


def _transform(source: str) -> str:
    """IPython syntax (``%magic``, ``!cmd``) to plain Python, when IPython is installed."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager
    except ImportError:  # pragma: no cover
        return source
    return TransformerManager().transform_cell(source)


def main() -> int:
    job_path, fd = sys.argv[1], int(sys.argv[2])
    key = sys.stdin.readline().strip()
    sys.stdin.close()
    out = os.fdopen(fd, "w", buffering=1, encoding="utf-8")
    real_stdout = sys.stdout

    job_index = [0]

    def send(event: str, **data) -> None:
        out.write(json.dumps({"k": key, "job": job_index[0], "event": event, **data}) + "\n")
        out.flush()

    with open(job_path, encoding="utf-8") as f:
        job = json.load(f)
    sys.path.insert(0, job["sandbox"])

    import numpy  # noqa: F401  (imported before student code, so the originals are known)
    import torch
    import torch.testing

    import shared
    import shared.checks as C

    C._sink = lambda rec: send("check", **rec) if "passed" in rec else None
    C._time_limit = job.get("check_timeout") or None
    C._rng = random.Random(job["seed"]) if job.get("seed") is not None else None
    orig = dict(check=C.check, check_code=C.check.__code__, summary=C.summary, record=C._record,
                record_code=C._record.__code__, sink=C._sink)
    watched = {
        "builtins.AssertionError": (builtins, "AssertionError"), "builtins.isinstance": (builtins, "isinstance"),
        "builtins.print": (builtins, "print"), "builtins.len": (builtins, "len"),
        "builtins.BaseException": (builtins, "BaseException"), "builtins.Exception": (builtins, "Exception"),
        "torch.equal": (torch, "equal"), "torch.allclose": (torch, "allclose"),
        "torch.testing.assert_close": (torch.testing, "assert_close"), "math.isclose": (math, "isclose"),
        "torch.Tensor.__eq__": (torch.Tensor, "__eq__"), "os._exit": (os, "_exit"),
    }
    originals = {name: getattr(obj, attr) for name, (obj, attr) in watched.items()}
    originals_code = {name: getattr(v, "__code__", None) for name, v in originals.items()}

    def integrity() -> list[str]:
        bad = []
        if sys.modules.get("shared.checks") is not C or getattr(shared, "checks", C) is not C:
            bad.append("sys.modules['shared.checks'] was replaced")
            sys.modules["shared.checks"], shared.checks = C, C
        for attr in ("check", "summary"):
            if getattr(C, attr) is not orig[attr]:
                bad.append(f"shared.checks.{attr} was replaced")
                setattr(C, attr, orig[attr])
        if C._record is not orig["record"]:
            bad.append("shared.checks._record was replaced")
            C._record = orig["record"]
        if C._sink is not orig["sink"]:
            bad.append("the grader's result channel was replaced")
            C._sink = orig["sink"]
        if orig["check"].__code__ is not orig["check_code"] or orig["record"].__code__ is not orig["record_code"]:
            bad.append("the code of shared.checks.check was modified")
        for name, (obj, attr) in watched.items():
            now = getattr(obj, attr, None)
            if now is not originals[name] or getattr(now, "__code__", None) is not originals_code[name]:
                bad.append(f"{name} was replaced")
        return bad

    cell_timeout = job.get("cell_timeout") or 0

    def on_alarm(signum, frame):
        raise C.CheckTimeout

    def run_job(cells) -> None:
        namespace: dict = {"__name__": "__main__", "__builtins__": builtins}
        tampered = False
        for cell in cells:
            index, kind, origin, source = cell["index"], cell["kind"], cell["origin"], cell["source"]
            if kind == "check":
                bad = integrity()
                if bad and not tampered:
                    tampered = True
                if bad:
                    send("tamper", cell=index, what=bad)
            send("cell", cell=index, kind=kind, origin=origin, untrusted=tampered)
            if origin == "student":
                try:
                    tree = ast.parse(_transform(source))
                except SyntaxError as e:
                    send("error", cell=index, message=f"SyntaxError: {e.msg} (line {e.lineno})")
                    continue
                tree, dropped = definitions_only(tree)
                if dropped:
                    send("dropped", cell=index, statements=dropped)
            else:
                try:
                    tree = ast.parse(source)
                except SyntaxError as e:  # pragma: no cover - course cells are tested
                    send("error", cell=index, message=f"SyntaxError in a course cell: {e}")
                    continue
            buf = io.StringIO()
            sys.stdout = buf
            timed = kind != "check" and cell_timeout > 0
            if timed:
                signal.signal(signal.SIGALRM, on_alarm)
                signal.setitimer(signal.ITIMER_REAL, cell_timeout)
            try:
                exec(compile(tree, f"<cell {index}>", "exec"), namespace)
            except C.CheckTimeout:
                send("error", cell=index, message=f"the cell ran longer than {cell_timeout:g}s and was stopped")
            except BaseException as e:  # noqa: BLE001 - a student's SystemExit is an error, not an exit
                if not (kind == "check" and isinstance(e, AssertionError) and "failed checks" in str(e)):
                    tb = traceback.extract_tb(e.__traceback__)
                    where = f" (line {tb[-1].lineno} of {tb[-1].filename})" if tb else ""
                    send("error", cell=index, message=f"{type(e).__name__}: {e}"[:500] + where)
            finally:
                if timed:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                sys.stdout = real_stdout
            if kind == "check" or origin == "student":
                bad = integrity()
                if bad:
                    tampered = True
                    send("tamper", cell=index, what=bad)
            send("output", cell=index, text=buf.getvalue()[-4000:])
        send("done", untrusted=tampered)

    jobs = job.get("jobs") or [job["cells"]]
    if len(jobs) == 1:
        run_job(jobs[0])
    else:
        # A batch of trusted variants (the mutant suite): fork after the imports, one job at a
        # time, so each starts from the same clean state without paying for torch again.
        for j, cells in enumerate(jobs):
            job_index[0] = j
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                try:
                    run_job(cells)
                finally:
                    out.flush()
                    os._exit(0)
            _, status = os.waitpid(pid, 0)
            send("job_end", status=status)
    send("all_done")
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
