"""Autograder for instructors: ``python -m shared.grade SUBMISSION... --out GRADES [--jobs N]``.

What it does with each submitted notebook:

1. **Identify it.** The notebook's metadata names its assignment (``course.assignment``, written
   by ``python -m shared.exercises``). A solution notebook, a notebook whose answers are the
   published solution, a notebook of another assignment (``--assignment`` given, or a file
   renamed to another exercise's name) and a notebook with no cell of the assignment are
   refused, with the reason.
2. **Take the instructor's cells.** The course's own copy of every ``given`` and ``check`` cell
   replaces the student's (matched by cell id, then by content). A deleted, edited or added
   check cell is reported as tampering; it changes nothing, since only the course's checks
   run and only the check names the course declares count.
3. **Run the checks in a sandbox** (:mod:`shared.course.harness`): a fresh process with CPU,
   memory, file-size and process limits, started from a private, read-only copy of ``shared/``.
   Where Linux namespaces are available (``unshare``), it has no network, sees no other
   process (it cannot signal the grader), the whole file system is read-only, and the
   course's solutions, tests and git history are hidden; elsewhere a warning is printed.
   The student's cells are reduced to their definitions (imports, functions, classes,
   assignments), so top-level code (``shared.checks.check = ...``, ``exec(...)``,
   ``os._exit(0)``) never runs at grading time. Results come back over a pipe with a
   one-time key; the grader, not the notebook, turns them into a score, and a change to
   the check machinery or to torch's comparison functions marks every later result untrusted.
   Check parameters marked :func:`shared.checks.hidden` are drawn at random (``--seed``).
4. **Write results as each notebook finishes** (so a crash loses nothing already graded):
   ``GRADES/results/<student>.json``, ``GRADES/feedback/<student>.md`` (each check's message,
   what was refused or tampered with), and ``GRADES/gradebook.csv`` (one row per student, one
   column per check, rewritten atomically after each notebook).

Trust model, stated plainly: the student's functions must run to be tested, and they run in
the checking process. Code that deliberately reads the grader's memory or frames could still
lie about a result; the grader flags such code (frames, ``gc``, ``ctypes``, ``/proc``,
``sys.modules``, ``os._exit`` ...) for review in the feedback and the gradebook.

``python -m shared.grade release OUTDIR`` writes the student folder: the course without
solutions, tests or mutant libraries.

Exit status: 0 only when every check of every notebook passed.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import re
import resource
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

from shared.course.exercises import ROOT, assignment_id, make_exercise, solution_notebooks

__all__ = ["grade_notebook", "grade_many", "NotebookReport", "CheckResult", "expected_checks",
           "assignments", "release", "main"]

_CHECK_NAME = re.compile(r"""(?<![\w.])check\(\s*(?P<q>["'])(?P<name>.+?)(?P=q)""")
HARNESS = Path(__file__).with_name("harness.py")

#: Constructs that have no business in an answer and could be used to subvert grading.
SUSPICIOUS = [
    (re.compile(r"\bsys\.modules\b"), "touches sys.modules"),
    (re.compile(r"shared\.checks(?!\s+import)|\bchecks\._"), "touches the check machinery (shared.checks)"),
    (re.compile(r"\b_exit\b|\bos\.kill\b|\bsignal\.|\bkillpg\b"), "exits or sends signals (os._exit, os.kill, signal)"),
    (re.compile(r"\bgc\.get_|_getframe|currentframe|\bf_back\b|\bf_globals\b|\bf_locals\b"), "inspects frames or the heap"),
    (re.compile(r"__code__|__closure__|__globals__|__builtins__|\bbuiltins\b"), "rewrites code objects or builtins"),
    (re.compile(r"\bctypes\b|/proc/|/dev/mem"), "uses ctypes or /proc"),
    (re.compile(r"(?<![\w.])(exec|eval|compile)\(|__import__\("), "runs code from strings (exec/eval/compile)"),
    (re.compile(r"solutions[/\\]|\.ipynb['\"]"), "opens notebooks or the solutions folder"),
    (re.compile(r"\bsubprocess\b|\bos\.system\b|\bos\.popen\b|\bsocket\b|urllib|requests\."), "starts processes or uses the network"),
    (re.compile(r"\bsetattr\((torch|math|np|numpy|builtins|sys|os)\b|\b(torch|math)\.\w+\s*=[^=]"), "patches torch/math"),
]


@dataclass
class CheckResult:
    name: str
    status: str  # "pass" | "fail" | "not run"
    message: str = ""


@dataclass
class NotebookReport:
    notebook: str
    student: str = ""
    assignment: str = ""
    checks: list[CheckResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # crashes, timeouts, refusals: one line each
    tamper: list[str] = field(default_factory=list)  # deleted/edited/added check cells, runtime patching
    review: list[str] = field(default_factory=list)  # suspicious code a person should look at
    notes: list[str] = field(default_factory=list)   # harmless: edited given cells, skipped top-level code
    refused: str = ""
    seconds: float = 0.0
    output: str = ""

    @property
    def passed(self) -> int:
        return sum(c.status == "pass" for c in self.checks)

    @property
    def total(self) -> int:
        return len(self.checks)

    @property
    def ok(self) -> bool:
        return not self.refused and self.total > 0 and self.passed == self.total

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(passed=self.passed, total=self.total, score=self.passed / self.total if self.total else 0.0)
        return d


# ----------------------------------------------------------------------------------------------
# The course side: assignments and their locked cells


def expected_checks(nb: nbformat.NotebookNode) -> list[str]:
    """The check names declared in the notebook's code, in order of appearance."""
    names: list[str] = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            for m in _CHECK_NAME.finditer(cell.source):
                if m.group("name") not in names:
                    names.append(m.group("name"))
    return names


@dataclass
class Assignment:
    id: str
    solution: Path
    learner: nbformat.NotebookNode  # the course's copy, generated fresh from the solution
    kinds: list[str]                # per cell: answer/given/check, "" for markdown
    answers: dict[int, str]         # cell index -> the solution's full cell source

    @property
    def filename(self) -> str:
        return self.solution.name


@functools.lru_cache(maxsize=None)
def assignments(root: str = str(ROOT)) -> dict[str, Assignment]:
    """Every exercise of the course at ``root``, by assignment id."""
    out = {}
    for sol in solution_notebooks(Path(root)):
        learner = make_exercise(sol)
        solution = nbformat.read(sol, as_version=4)
        kinds = [c.metadata.get("course", {}).get("kind", "") if c.cell_type == "code" else "" for c in learner.cells]
        answers = {i: solution.cells[i].source for i, k in enumerate(kinds) if k == "answer"}
        out[assignment_id(sol)] = Assignment(assignment_id(sol), sol, learner, kinds, answers)
    return out


def _norm(src: str) -> str:
    return "\n".join(line.rstrip() for line in src.strip().splitlines())


def _first_line(src: str) -> str:
    return next((ln.strip() for ln in src.splitlines() if ln.strip() and not ln.strip().startswith("#")), "")


def plan(nb: nbformat.NotebookNode, a: Assignment, report: NotebookReport) -> list[dict]:
    """The cells to run: the course's given/check cells, the student's answers and added cells."""
    course = a.learner.cells
    by_id = {c.get("id"): i for i, c in enumerate(course) if c.cell_type == "code"}
    by_src = {_norm(c.source): i for i, c in enumerate(course) if c.cell_type == "code" and a.kinds[i] != "answer"}
    by_first = {_first_line(c.source): i for i, c in enumerate(course) if a.kinds[i] == "answer"}
    matched: dict[int, str] = {}
    extras: dict[int, list[str]] = {}
    anchor = -1
    for j, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        src = cell.source if isinstance(cell.source, str) else "".join(cell.source)
        i = by_id.get(cell.get("id"))
        if i is None or i in matched:
            i = by_src.get(_norm(src))
            if i is None and _first_line(src) in by_first and by_first[_first_line(src)] not in matched:
                i = by_first[_first_line(src)]
        if i is not None and i not in matched:
            matched[i] = src
            anchor = i
            continue
        if _CHECK_NAME.search(src) or "summary()" in src:
            report.tamper.append(f"added a cell that calls check()/summary() (student cell {j}): "
                                 "ignored, only the course's checks count")
        if src.strip():
            extras.setdefault(anchor, []).append(src)
    cells = [dict(index=-1, kind="added", origin="student", source=s) for s in extras.get(-1, [])]
    for i, c in enumerate(course):
        kind = a.kinds[i]
        if not kind:
            continue
        names = ", ".join(repr(m.group("name")) for m in _CHECK_NAME.finditer(c.source))
        if kind == "answer":
            if i in matched:
                cells.append(dict(index=i, kind="answer", origin="student", source=matched[i]))
            else:
                report.notes.append(f"answer cell {i} is missing: the unsolved stub was used")
                cells.append(dict(index=i, kind="answer", origin="course", source=c.source))
        else:
            if kind == "check" and i not in matched:
                report.tamper.append(f"deleted check cell {i} ({names or 'summary'}): the course's copy was run")
            elif kind == "check" and _norm(matched[i]) != _norm(c.source):
                report.tamper.append(f"edited check cell {i} ({names or 'summary'}): the course's copy was run")
            elif kind == "given" and i in matched and _norm(matched[i]) != _norm(c.source):
                report.notes.append(f"given cell {i} was edited: the course's copy was run")
            cells.append(dict(index=i, kind=kind, origin="course", source=c.source))
        cells += [dict(index=i, kind="added", origin="student", source=s) for s in extras.get(i, [])]
    report.notes.append(f"{len(matched)} of {sum(1 for k in a.kinds if k)} course code cells found in the notebook")
    if not any(a.kinds[i] == "answer" or _CHECK_NAME.search(course[i].source) for i in matched):
        report.refused = (f"no cell of this notebook belongs to {a.id}: is it another assignment's notebook "
                          "(renamed)? Submit the notebook made from the course's exercise copy")
    return cells


def identify(nb: nbformat.NotebookNode, path: Path, expected: str | None,
             course: dict[str, Assignment]) -> tuple[Assignment | None, str]:
    """(assignment, refusal reason): which assignment ``nb`` is, or why it is refused."""
    meta = nb.metadata.get("course", {}) if isinstance(nb.metadata.get("course"), dict) else {}
    if meta.get("role") == "solution":
        return None, ("this is the course's solution notebook, not a submission (maintainers testing a variant: "
                      "--allow-solution, or python -m shared.course.mutants)")
    claimed = meta.get("assignment")
    by_name = [aid for aid, a in course.items() if a.filename == path.name]
    if expected is not None and expected not in course:
        return None, f"unknown assignment {expected!r}; the course has {sorted(course)}"
    if claimed and claimed not in course:
        return None, f"the notebook says it is assignment {claimed!r}, which this course does not have"
    if expected and claimed and claimed != expected:
        return None, f"this notebook is assignment {claimed!r}, not {expected!r}"
    if claimed and by_name and claimed not in by_name:
        return None, (f"the file is named {path.name} ({by_name[0]}) but the notebook is {claimed!r}: "
                      "renamed from another exercise?")
    aid = expected or claimed or (by_name[0] if len(by_name) == 1 else None)
    if aid is None:
        return None, ("cannot tell which assignment this is: no course.assignment in its metadata; "
                      "pass --assignment ID (one of " + ", ".join(sorted(course)) + ")")
    return course[aid], ""


# ----------------------------------------------------------------------------------------------
# The sandbox


@functools.lru_cache(maxsize=1)
def namespaces_available() -> bool:
    """True if ``unshare`` can give a process its own user, mount, pid and network namespaces."""
    if sys.platform != "linux" or not shutil.which("unshare"):
        return False
    try:
        r = subprocess.run(["unshare", "-r", "-n", "-p", "-f", "-m", "--kill-child", "--mount-proc", "sh", "-c",
                            "mount -t tmpfs none /mnt 2>/dev/null || true; exec unshare -U -m -r true"],
                           capture_output=True, timeout=20)
        return r.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


_warned = threading.Event()

_SANDBOX_SH = r"""
set -e
# Everything read-only: the course, the grades, the Python install (the student cannot change
# what the next notebook is graded with).
for m in $(awk '{print $2}' /proc/self/mounts | sort -u); do
  case "$m" in /proc*|/sys*|/dev*) ;; *) mount -o remount,bind,ro "$m" 2>/dev/null || true ;; esac
done
mount -o remount,bind,ro / 2>/dev/null || true
for d in $SB_HIDE; do [ -d "$d" ] && mount -t tmpfs -o size=4k,mode=555 none "$d"; done
mount -t tmpfs -o size=${SB_WORK_MB}m,mode=1777 none "$SB_WORK"
# A nested user namespace locks the mounts above: they cannot be undone from inside.
exec unshare -U -m -r "$@"
"""


def _hidden_paths(root: Path) -> list[str]:
    hide = [p for p in root.glob("ch*/solutions") if p.is_dir()]
    hide += [p for p in (root / "tests", root / ".git") if p.is_dir()]
    try:
        common = subprocess.run(["git", "-C", str(root), "rev-parse", "--git-common-dir"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
        if common:
            hide.append((root / common).resolve())
    except (OSError, subprocess.SubprocessError):
        pass
    return sorted({str(p) for p in hide if " " not in str(p)})


def _limits(cpu_s: int, memory_mb: int, nproc: int):
    def apply():
        os.setsid()
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 5))
        if memory_mb:
            resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 20, 256 << 20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if nproc:
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    return apply


def _tasks_of_user() -> int:
    uid, n = os.getuid(), 0
    for d in Path("/proc").glob("[0-9]*"):
        try:
            st = (d / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in st.splitlines() if ":" in line)
        if int(fields.get("Uid", "-1").split()[0]) == uid:
            n += int(fields.get("Threads", "1").strip())
    return n


@dataclass
class Limits:
    cell_timeout: float = 120      # seconds per given cell (a "try it" cell stuck in a loop)
    check_timeout: float = 60      # seconds per check
    timeout: float = 600           # seconds per notebook (wall clock)
    memory_mb: int = 6144          # address space of the checking process
    nproc: int = 256               # extra processes/threads it may start


def run_sandboxed(cells: list[dict], limits: Limits, seed: int | None, course_root: Path,
                  report: NotebookReport, batch: list[list[dict]] | None = None) -> list[dict]:
    """Run ``cells`` in the sandbox; return the events it sent (stops at the wall-clock limit).

    ``batch`` (trusted variants only, e.g. the mutant suite) runs several cell lists in one
    sandbox, each in a process forked after the imports; events then carry their ``job`` index.
    """
    isolate = namespaces_available()
    if not isolate and not _warned.is_set():
        _warned.set()
        print("WARNING: Linux namespaces (unshare) are not available: the checking process is resource-"
              "limited and gets a private copy of shared/, but it can use the network and see the course "
              "tree. Grade untrusted notebooks on Linux with unprivileged user namespaces.", file=sys.stderr)
    if not isolate:
        report.notes.append("graded without namespace isolation (no unshare)")
    base = Path(tempfile.mkdtemp(prefix="grade-"))
    try:
        shutil.copytree(course_root / "shared", base / "shared",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        work = base / "work"
        work.mkdir()
        job = base / "job.json"
        key = secrets.token_hex(16)
        job.write_text(json.dumps({"cells": cells, "jobs": batch, "sandbox": str(base), "seed": seed,
                                   "cell_timeout": limits.cell_timeout, "check_timeout": limits.check_timeout}))
        for p in sorted(base.rglob("*"), reverse=True):
            if p != work:
                p.chmod(0o555 if p.is_dir() else 0o444)
        r, w = os.pipe()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work), "TMPDIR": str(work),
               "MPLCONFIGDIR": str(work), "MPLBACKEND": "Agg", "LLM_PROFILE": os.environ.get("LLM_PROFILE", "smoke"),
               "LLM_DEVICE": os.environ.get("LLM_DEVICE", "cpu"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1",
               "GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=4294967295"}
        cmd = [sys.executable, str(base / "shared" / "course" / "harness.py"), str(job), str(w)]
        if isolate:
            hide = " ".join(_hidden_paths(course_root))
            env.update(SB_HIDE=hide, SB_WORK=str(work), SB_WORK_MB="512")
            cmd = ["unshare", "-r", "-n", "-p", "-f", "-m", "--kill-child", "--mount-proc",
                   "sh", "-c", _SANDBOX_SH, "sandbox"] + cmd
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                pass_fds=(w,), env=env, cwd=str(work),
                                preexec_fn=_limits(int(limits.timeout) + 10, limits.memory_mb,
                                                   _tasks_of_user() + limits.nproc))
        os.close(w)
        proc.stdin.write((key + "\n").encode())
        proc.stdin.close()
        events, buf, log = [], b"", bytearray()
        sel = selectors.DefaultSelector()
        sel.register(r, selectors.EVENT_READ, "events")
        sel.register(proc.stdout, selectors.EVENT_READ, "log")
        deadline = time.monotonic() + limits.timeout * (len(batch) if batch else 1)
        open_streams = 2
        while open_streams:
            left = deadline - time.monotonic()
            if left <= 0:
                report.errors.append(f"the notebook's checks ran longer than {limits.timeout:.0f}s and were stopped")
                break
            for sk, _ in sel.select(timeout=min(left, 1.0)):
                data = os.read(sk.fd, 65536) if sk.data == "events" else proc.stdout.read1(65536)
                if not data:
                    sel.unregister(sk.fileobj)
                    open_streams -= 1
                    continue
                if sk.data == "log":
                    log += data
                    del log[:-20000]
                    continue
                buf += data
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    try:
                        ev = json.loads(line)
                    except ValueError:
                        report.tamper.append("the result channel carried a malformed line")
                        continue
                    if not isinstance(ev, dict) or ev.get("k") != key:
                        report.tamper.append("the result channel carried a line without the grader's key")
                        continue
                    if not events and job.exists():
                        try:
                            os.chmod(base, 0o755)
                            job.unlink()  # the other sandboxes must not read this student's code
                        except OSError:
                            pass
                    events.append(ev)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
        os.close(r)
        report.output = log.decode("utf-8", "replace")[-4000:]
        if not batch and not any(e.get("event") == "done" for e in events):
            sig = -proc.returncode if proc.returncode < 0 else None
            why = {signal.SIGXCPU: "CPU-time limit", signal.SIGKILL: "killed (time or memory limit?)"}.get(sig, "")
            report.errors.append(f"the checking process ended early (exit status {proc.returncode}"
                                 f"{', ' + why if why else ''}); last output: {report.output[-300:]!r}")
        return events
    finally:
        for p in [base, *base.rglob("*")]:
            try:
                p.chmod(0o755 if p.is_dir() else 0o644)
            except OSError:
                pass
        shutil.rmtree(base, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Grading


def student_name(path: Path) -> str:
    """A notebook's student: its parent folder when the file keeps the exercise's name, else its stem."""
    path = Path(path)
    course_names = {a.filename for a in assignments().values()}
    return path.parent.name if path.name in course_names and path.parent.name else path.stem


def _prepare(path: str | Path, *, assignment: str | None = None, limits: Limits | None = None,
                   seed: int | None = None, allow_solution: bool = False, course_root: Path = ROOT,
                   student: str | None = None, cell_timeout: float | None = None,
                   timeout: float | None = None, nb: nbformat.NotebookNode | None = None) -> tuple:
    """(report, cells, declared, t0, limits): everything before the sandbox; cells is None if refused.

    Grade one notebook (never raises for a learner's error; see the module docstring).

    Args:
        path: the submitted notebook.
        assignment: the assignment id it must be (default: what its metadata says).
        seed: draws the hidden check parameters; None keeps the notebook's visible defaults.
        allow_solution: grade even a notebook identical to the published solution (tests).
        nb: the notebook itself, when it is not read from ``path``.
    """
    path = Path(path)
    limits = limits or Limits()
    if cell_timeout is not None:
        limits.cell_timeout = limits.check_timeout = cell_timeout
    if timeout is not None:
        limits.timeout = timeout
    report = NotebookReport(notebook=str(path), student=student or student_name(path))
    t0 = time.monotonic()
    try:
        nb = nb if nb is not None else nbformat.read(path, as_version=4)
    except Exception as e:  # unreadable file: report, don't crash the whole grading run
        report.refused = f"cannot read notebook: {type(e).__name__}: {e}"
        report.errors.append(report.refused)
        return report, None, None, t0, limits
    course = assignments(str(course_root))
    if allow_solution and nb.metadata.get("course", {}).get("role") == "solution":
        nb.metadata["course"] = {**nb.metadata["course"], "role": "exercise"}
    a, refused = identify(nb, path, assignment, course)
    if a is None:
        report.refused = refused
        report.errors.append(refused)
        return report, None, None, t0, limits
    report.assignment = a.id
    declared = expected_checks(a.learner)
    cells = plan(nb, a, report)
    student_src = [c["source"] for c in cells if c["origin"] == "student"]
    answers = [c for c in cells if c["kind"] == "answer"]
    if not allow_solution and answers and all(c["origin"] == "student" and _norm(c["source"]) == _norm(a.answers[c["index"]])
                                              for c in answers):
        report.refused = "the answers are identical to the published solution notebook"
    for pattern, why in SUSPICIOUS:
        hits = sorted({m.group(0) for s in student_src for m in pattern.finditer(s)})
        if hits:
            report.review.append(f"{why}: {', '.join(hits[:3])}")
    if report.refused:
        report.errors.append(report.refused)
        report.checks = [CheckResult(n, "not run", "refused: " + report.refused) for n in declared]
        report.seconds = round(time.monotonic() - t0, 1)
        return report, None, None, t0, limits
    return report, cells, declared, t0, limits


def grade_notebook(path: str | Path, *, seed: int | None = None, course_root: Path = ROOT, **kw) -> NotebookReport:
    """Grade one notebook (never raises for a learner's error; see the module docstring).

    Keyword arguments: ``assignment`` (the id it must be; default: its metadata), ``limits``,
    ``seed`` (draws the hidden check parameters; None keeps the visible defaults), ``allow_solution``
    (grade even the published solution: tests), ``student``, ``nb`` (the notebook itself, when it
    is not read from ``path``), ``cell_timeout``, ``timeout``.
    """
    report, cells, declared, t0, limits = _prepare(path, seed=seed, course_root=course_root, **kw)
    if cells is None:
        return report
    events = run_sandboxed(cells, limits, seed, course_root, report)
    return _finish(report, cells, declared, events, t0)


def grade_batch(items: list[dict], *, seed: int | None = None, course_root: Path = ROOT,
                limits: Limits | None = None) -> list[NotebookReport]:
    """Grade several *trusted* notebooks in one sandbox (each in a process forked after the imports).

    For the course's own variants (the mutant suite), which need no isolation from each other:
    the same plan, checks and scoring as :func:`grade_notebook`, without paying for a fresh
    Python and torch per notebook. ``items`` are keyword dicts for :func:`grade_notebook`.
    Never use it for students' notebooks.
    """
    prepared = [_prepare(seed=seed, course_root=course_root, limits=limits, **it) for it in items]
    todo = [p for p in prepared if p[1] is not None]
    if todo:
        shared_report = NotebookReport(notebook="batch")
        events = run_sandboxed([], todo[0][4], seed, course_root, shared_report, batch=[p[1] for p in todo])
        by_job: dict[int, list[dict]] = {}
        for ev in events:
            by_job.setdefault(ev.get("job", 0), []).append(ev)
        for j, (report, cells, declared, t0, _) in enumerate(todo):
            report.errors += shared_report.errors
            _finish(report, cells, declared, by_job.get(j, []), t0)
            report.seconds = round(report.seconds / len(todo), 1)
    return [p[0] for p in prepared]


def _finish(report: NotebookReport, cells: list[dict], declared: list[str], events: list[dict],
            t0: float) -> NotebookReport:
    """Turn the sandbox's events into the report's check results (the grader decides, not the notebook)."""
    if events and not any(e.get("event") == "done" for e in events) and not any(
            "ended early" in e for e in report.errors):
        report.errors.append("the checking process ended early (a crash, a time or memory limit, or os._exit?)")
    check_cells = {}
    for c in cells:
        if c["kind"] == "check":
            for m in _CHECK_NAME.finditer(c["source"]):
                check_cells.setdefault(m.group("name"), c["index"])
    results: dict[str, CheckResult] = {}
    current, untrusted_from = None, None
    dropped = 0
    for ev in events:
        kind = ev.get("event")
        if kind == "cell":
            current = ev.get("cell")
        elif kind == "tamper":
            report.tamper.append(f"while running cell {ev.get('cell')}: " + "; ".join(ev.get("what", [])))
            if untrusted_from is None:
                untrusted_from = ev.get("cell")
        elif kind == "error":
            report.errors.append(f"cell {ev.get('cell')}: {ev.get('message')}")
        elif kind == "dropped":
            dropped += len(ev.get("statements", []))
            shown = "; ".join(ev.get("statements", [])[:3])
            report.notes.append(f"cell {ev.get('cell')}: not run at grading (top-level code): {shown}")
        elif kind == "check":
            name = ev.get("name")
            if name not in declared:
                report.tamper.append(f"a result for {name!r}, which is not one of this assignment's checks (ignored)")
            elif check_cells.get(name) != current:
                report.tamper.append(f"a result for {name!r} arrived while another cell was running (ignored)")
            elif name not in results:
                results[name] = CheckResult(name, "pass" if ev.get("passed") is True else "fail", str(ev.get("message", "")))
        elif kind == "output" and ev.get("text"):
            report.output = (report.output + f"\n[cell {ev.get('cell')}]\n" + ev["text"])[-8000:]
    if dropped:
        report.notes.append(f"{dropped} top-level statement(s) of the student's cells were not run at grading "
                            "(only definitions are: imports, def, class, assignments)")
    for name in declared:
        r = results.get(name)
        if r is not None and untrusted_from is not None and check_cells.get(name, -1) >= untrusted_from:
            r = CheckResult(name, "fail", "result not trusted: the check machinery was tampered with (see tampering)")
        report.checks.append(r or CheckResult(name, "not run", "the checking process stopped before this check"
                                              " (a crash, a time or memory limit, or os._exit?)"))
    report.seconds = round(time.monotonic() - t0, 1)
    return report


# ----------------------------------------------------------------------------------------------
# Output: console, JSON, feedback, gradebook


def format_report(r: NotebookReport) -> str:
    head = f"== {r.student} ({r.assignment or '?'}): "
    lines = [head + (f"REFUSED: {r.refused}" if r.refused else f"{r.passed}/{r.total} checks passed ({r.seconds:.0f}s)")]
    for c in r.checks if not r.refused else []:
        mark = {"pass": "PASS   ", "fail": "FAIL   ", "not run": "NOT RUN"}[c.status]
        lines.append(f"  {mark} {c.name}" + (f" — {c.message}" if c.message and c.status != "pass" else ""))
    lines += [f"  TAMPER  {t}" for t in r.tamper[:10]]
    lines += [f"  REVIEW  {t}" for t in r.review[:10]]
    lines += [f"  ERROR   {e}" for e in r.errors[:10] if e != r.refused]
    return "\n".join(lines)


def feedback_markdown(r: NotebookReport) -> str:
    out = [f"# Feedback: {r.assignment or r.notebook}", "", f"Student: **{r.student}**  ", f"Notebook: `{Path(r.notebook).name}`", ""]
    if r.refused:
        out += [f"**Not graded:** {r.refused}.", ""]
    else:
        out += [f"**Score: {r.passed}/{r.total} checks passed.**", "", "| check | result | what to fix |", "|---|---|---|"]
        for c in r.checks:
            msg = c.message.replace("|", "\\|").replace("\n", " ")
            out.append(f"| {c.name} | {'✅ pass' if c.status == 'pass' else ('❌ fail' if c.status == 'fail' else '⏸ not run')} | {msg} |")
        out.append("")
    for title, items in (("Tampering (reported to your instructor)", r.tamper), ("Flagged for review", r.review),
                         ("Errors", [e for e in r.errors if e != r.refused]), ("Notes", r.notes)):
        if items:
            out += [f"## {title}", ""] + [f"* {x}" for x in items] + [""]
    return "\n".join(out)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_gradebook(path: Path, reports: list[NotebookReport]) -> None:
    """One row per student, one column per (assignment, check), then scores and flags."""
    columns: list[tuple[str, str]] = []
    for aid in sorted({r.assignment for r in reports if r.assignment}):
        names = expected_checks(assignments()[aid].learner) if aid in assignments() else []
        columns += [(aid, n) for n in names]
    rows: dict[str, dict] = {}
    for r in sorted(reports, key=lambda r: (r.student, r.assignment)):
        row = rows.setdefault(r.student, {"student": r.student, "passed": 0, "total": 0, "refused": "", "tamper": "", "review": ""})
        status = {c.name: c.status for c in r.checks}
        for aid, n in columns:
            if aid == r.assignment:
                row[f"{aid}: {n}"] = {"pass": 1, "fail": 0}.get(status.get(n, ""), "") if not r.refused else 0
        row["passed"] += r.passed if not r.refused else 0
        row["total"] += len(expected_checks(assignments()[r.assignment].learner)) if r.assignment in assignments() else r.total
        for k, v in (("refused", r.refused), ("tamper", "; ".join(r.tamper)), ("review", "; ".join(r.review))):
            if v:
                row[k] = (row[k] + " | " if row[k] else "") + v
    header = ["student"] + [f"{a}: {n}" for a, n in columns] + ["passed", "total", "score", "refused", "tamper", "review"]
    lines = []
    for row in rows.values():
        row["score"] = f"{row['passed'] / row['total']:.3f}" if row["total"] else "0.000"
        lines.append(row)
    import io
    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=header, extrasaction="ignore")
    wr.writeheader()
    wr.writerows(lines)
    _atomic_write(path, buf.getvalue())


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name) or "notebook"


def grade_many(paths: list[Path], *, out: Path | None = None, jobs: int = 1, quiet: bool = False,
               **kw) -> list[NotebookReport]:
    """Grade ``paths`` with ``jobs`` sandboxes at a time, writing each result as it finishes."""
    reports: list[NotebookReport] = []
    lock = threading.Lock()
    names = [student_name(p) for p in paths]
    dup = {n for n in names if names.count(n) > 1}

    def one(i: int, p: Path) -> NotebookReport:
        student = names[i] if names[i] not in dup else f"{names[i]}-{i}"
        return grade_notebook(p, student=student, **kw)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [pool.submit(one, i, p) for i, p in enumerate(paths)]
        for fut in as_completed(futures):
            r = fut.result()
            with lock:
                reports.append(r)
                if not quiet:
                    print(format_report(r), flush=True)
                if out is not None:
                    stem = _safe(r.student) + (f"__{_safe(r.assignment.split('/')[-1])}" if r.assignment else "")
                    _atomic_write(out / "results" / f"{stem}.json", json.dumps(r.to_dict(), indent=2))
                    _atomic_write(out / "feedback" / f"{stem}.md", feedback_markdown(r))
                    write_gradebook(out / "gradebook.csv", reports)
    order = {str(p): i for i, p in enumerate(paths)}
    return sorted(reports, key=lambda r: order.get(r.notebook, 0))


# ----------------------------------------------------------------------------------------------
# Release: the student folder


def release(dest: Path, root: Path = ROOT) -> list[str]:
    """Copy the course to ``dest`` without solutions, tests, mutant libraries or CI files.

    Raises:
        ValueError: if ``dest`` exists and is not empty, or is inside the course.
    """
    dest = Path(dest).resolve()
    if dest.exists() and any(dest.iterdir()):
        raise ValueError(f"{dest} exists and is not empty: choose a new folder (nothing is overwritten)")
    if dest == root or root in dest.parents:
        raise ValueError(f"{dest} is inside the course tree; choose a folder outside it")
    try:
        files = subprocess.run(["git", "-C", str(root), "ls-files", "-z"], capture_output=True, check=True,
                               timeout=30).stdout.decode().split("\0")
    except (OSError, subprocess.SubprocessError):
        files = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()]
    skip = re.compile(r"(^|/)(solutions|tests|\.ci|\.git|__pycache__|\.ipynb_checkpoints)(/|$)|^shared/course/(grade|harness)\.py$")
    copied = []
    for rel in sorted(f for f in files if f and not skip.search(f)):
        src = root / rel
        if not src.is_file():
            continue
        if src.suffix == ".ipynb":
            meta = json.loads(src.read_text(encoding="utf-8")).get("metadata", {}).get("course", {})
            if meta.get("role") == "solution":
                continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)
        copied.append(rel)
    return copied


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["release"]:
        ap = argparse.ArgumentParser(prog="python -m shared.grade release",
                                     description="write the student folder: the course without solutions or tests")
        ap.add_argument("outdir", type=Path)
        args = ap.parse_args(argv[1:])
        try:
            files = release(args.outdir)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"wrote {len(files)} files to {args.outdir} (no solutions, tests or grader internals)")
        return 0
    ap = argparse.ArgumentParser(prog="python -m shared.grade", description=__doc__.splitlines()[0],
                                 epilog="Also: python -m shared.grade release OUTDIR")
    ap.add_argument("notebooks", nargs="+", type=Path, help="submitted notebooks (or folders: every *.ipynb inside)")
    ap.add_argument("--out", type=Path, help="write results/, feedback/ and gradebook.csv here")
    ap.add_argument("--json", type=Path, help="also write all results to this one JSON file")
    ap.add_argument("--assignment", help="the assignment every notebook must be, e.g. ch01_tokenization/exercise_bpe")
    ap.add_argument("--jobs", type=int, default=1, help="notebooks graded at the same time (default 1)")
    ap.add_argument("--seed", type=int, default=None,
                    help="seed for the hidden check parameters (default: a fresh random seed, printed)")
    ap.add_argument("--visible", action="store_true", help="use the checks' visible defaults, not hidden parameters")
    ap.add_argument("--cell-timeout", type=float, default=120, help="seconds per check and per given cell (default 120)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per notebook (default 600)")
    ap.add_argument("--memory-mb", type=int, default=6144, help="address-space limit of a checking process (default 6144)")
    ap.add_argument("--allow-solution", action="store_true",
                    help="grade solution notebooks too (maintainers testing a mutant; never for a class)")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error("--jobs must be >= 1")
    paths: list[Path] = []
    for p in args.notebooks:
        if p.is_dir():
            paths += sorted(q for q in p.rglob("*.ipynb") if ".ipynb_checkpoints" not in q.parts)
        else:
            paths.append(p)
    if not paths:
        ap.error("no notebooks found")
    seed = None if args.visible else (args.seed if args.seed is not None else secrets.randbelow(2**31))
    if seed is not None:
        print(f"hidden check parameters drawn with --seed {seed}")
    limits = Limits(cell_timeout=args.cell_timeout, check_timeout=args.cell_timeout, timeout=args.timeout,
                    memory_mb=args.memory_mb)
    t0 = time.monotonic()
    reports = grade_many(paths, out=args.out, jobs=args.jobs, assignment=args.assignment, limits=limits, seed=seed,
                         allow_solution=args.allow_solution)
    passed = sum(r.passed for r in reports)
    total = sum(r.total for r in reports)
    print(f"\nTOTAL: {passed}/{total} checks passed in {len(reports)} notebook(s), {time.monotonic() - t0:.0f}s"
          + (f"; gradebook: {args.out / 'gradebook.csv'}" if args.out else ""))
    if args.json:
        args.json.write_text(json.dumps({"passed": passed, "total": total, "seed": seed,
                                         "notebooks": [r.to_dict() for r in reports]}, indent=2))
    return 0 if reports and all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
