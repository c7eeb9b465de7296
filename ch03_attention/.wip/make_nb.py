"""Builds ch03_attention/03b_efficient_attention.ipynb (source of the notebook's cells)."""
import re, sys
from pathlib import Path
import nbformat
from shared.notebooks import setup_cell, colab_badge, shared_source

ROOT = Path("/work/wt/i15-attn")
NB = Path("/tmp/i15/aside/03b_wip.ipynb")
cells = []
def md(s): cells.append(nbformat.v4.new_markdown_cell(s.strip("\n")))
def code(s):
    s = s.strip("\n")
    m = re.match(r"# shared: (\S+)$", s)
    if m:
        s = f"# shared: {m.group(1)}\n" + shared_source(m.group(1))
    cells.append(nbformat.v4.new_code_cell(s))

exec(open("/tmp/i15/nb_cells.py").read())

nb = nbformat.v4.new_notebook()
nb.cells = cells
nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
               "language_info": {"name": "python"}}
if NB.exists() and "--fresh" not in sys.argv:
    # keep outputs of cells whose source did not change
    old = nbformat.read(NB, as_version=4)
    outs = {c.source: c for c in old.cells if c.cell_type == "code"}
    for c in nb.cells:
        if c.cell_type == "code" and c.source in outs:
            c.outputs = outs[c.source].outputs
            c.execution_count = outs[c.source].execution_count
nbformat.write(nb, NB)
print("wrote", NB, len(cells), "cells")
