"""A virtual accelerator on the CPU: find the device-placement bugs a GPU would raise, without one.

On a CUDA GPU, an op whose inputs sit on different devices raises ``RuntimeError: Expected all
tensors to be on the same device``, and ``.numpy()`` of a GPU tensor raises too. On a CPU-only
machine such code runs, so the bug hides until a learner opens the notebook on Colab. This module
makes the device ``cpu:0`` stand in for the accelerator: tensors created on it or moved to it
(``x.to(DEVICE)``, ``model.to(DEVICE)``, ``torch.zeros(..., device=DEVICE)``) are *placed*, results
of ops on placed tensors are placed, a placed tensor reports ``.device == cpu:0`` (so
``device=x.device`` propagates), and every op that mixes placed and unplaced tensors (except
0-dimensional ones, indexing and ``copy_``, which CUDA allows) is recorded.

::

    with VirtualDevice() as vd:                        # in a process run with LLM_DEVICE=cpu:0
        model = GPTModel(cfg).to(vd.device)
        model(torch.randint(0, V, (2, 8)))             # recorded: the ids are on the "CPU"
    print(vd.problems)

It follows tensors by identity, so it can miss a bug (a ``.to`` that returns the same object on
a CPU is treated as keeping the tensor where it was), but each problem it reports is an op that
would fail on a GPU. From the command line it runs notebooks under the smoke profile::

    python -m shared.course.virtual_device ch07_finetuning/07a_classification.ipynb ...
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
import weakref
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

__all__ = ["VirtualDevice", "main"]

VIRTUAL = torch.device("cpu", 0)
_DEVICE_DESCR = torch._C.TensorBase.__dict__["device"]
_DEVICE_GET = _DEVICE_DESCR.__get__
#: Ops that may mix devices on CUDA too, or that only read metadata.
_NO_CHECK = {"__getitem__", "__setitem__", "copy_", "index_put_", "index_put", "__repr__", "__format__",
             "__str__", "tolist", "item", "numel", "size", "dim", "__len__", "__bool__", "__iter__",
             "__contains__", "__hash__", "__eq__", "__ne__", "__reduce_ex__", "__deepcopy__", "clone",
             "detach", "requires_grad_", "is_floating_point", "__get__", "__set__", "data", "device", "shape",
             "dtype", "_has_compatible_shallow_copy_type", "_is_view", "is_contiguous", "to", "cpu", "cuda"}


def _is_virtual(d) -> bool:
    try:
        d = torch.device(d)
    except (RuntimeError, TypeError):
        return False
    return d.type == "cpu" and d.index == 0


class _Mode(TorchFunctionMode):
    def __init__(self, vd: VirtualDevice):
        super().__init__()
        self.vd = vd

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        vd = self.vd
        if getattr(func, "__self__", None) is _DEVICE_DESCR:  # x.device
            return VIRTUAL if vd.placed(args[0]) else func(*args, **kwargs)
        name = getattr(func, "__name__", str(func))
        ins = [a for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        placed_in = any(vd.placed(t) for t in ins)
        if placed_in and name not in _NO_CHECK:
            stray = [tuple(t.shape) for t in ins if not vd.placed(t) and t.dim() > 0]
            if stray:
                vd._record(f"{name}() mixes accelerator tensors with CPU tensors of shape {stray[:3]}")
        if name == "numpy" and ins and vd.placed(ins[0]):
            vd._record(".numpy() of an accelerator tensor (call .cpu() first)")
        out = func(*args, **kwargs)
        target = None
        if name == "to":
            target = vd._target(args[1:], kwargs) or ("placed" if placed_in else None)
            if target == "cpu" and args and out is args[0]:
                target = None  # on an accelerator this is a copy; the original stays where it was
        elif name == "cpu":
            target = "cpu"
        elif kwargs.get("device") is not None:
            target = "placed" if _is_virtual(kwargs["device"]) else "cpu"
        elif placed_in and name not in ("numpy", "tolist", "item"):
            target = "placed"
        if target is not None:
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    vd._place(t) if target == "placed" else vd._unplace(t)
        return out


class VirtualDevice:
    """Context manager: track placement on the virtual device ``cpu:0`` and record mixing.

    Attributes:
        device: ``torch.device("cpu", 0)``, to use as the accelerator.
        problems: one message per op that would fail on a GPU, with where it was called.
    """

    def __init__(self):
        self.device = VIRTUAL
        self.problems: list[str] = []
        self._ids: set[int] = set()
        self._saved: dict = {}
        self._mode = _Mode(self)

    # -- bookkeeping
    def placed(self, t: torch.Tensor) -> bool:
        return id(t) in self._ids

    def _place(self, t: torch.Tensor) -> None:
        if id(t) not in self._ids:
            self._ids.add(id(t))
            try:
                weakref.finalize(t, self._ids.discard, id(t))
            except TypeError:
                pass

    def _unplace(self, t: torch.Tensor) -> None:
        self._ids.discard(id(t))

    def _target(self, args, kwargs) -> str | None:
        for c in list(args) + [kwargs.get("device")]:
            if isinstance(c, (str, torch.device)):
                try:
                    torch.device(c)
                except (RuntimeError, TypeError):
                    continue
                return "placed" if _is_virtual(c) else "cpu"
            if isinstance(c, torch.Tensor):
                return "placed" if self.placed(c) else "cpu"
        return None

    def _record(self, msg: str) -> None:
        frames = [f for f in traceback.extract_stack()[:-3] if "torch" not in Path(f.filename).parts
                  and "virtual_device" not in f.filename]
        cell = [f for f in frames if "ipykernel" in f.filename or f.filename.startswith("<ipython")]
        shown = (cell[-1:] if cell else []) + [f for f in frames[-1:] if not cell or f is not cell[-1]]
        where = " -> ".join(f"{'notebook cell' if f in cell else Path(f.filename).name} line {f.lineno}: "
                            f"{(f.line or '').strip()[:90]}" for f in shown)
        self.problems.append(f"{msg} at {where}")

    # -- patches
    def __enter__(self) -> VirtualDevice:
        vd = self
        P, M = torch.nn.Parameter, torch.nn.Module
        self._saved = {"to": M.to, "cpu": M.cpu, "pnew": P.__new__, "pcopy": P.__deepcopy__,
                       "pdev": P.__dict__.get("device")}

        def module_to(module, *args, **kwargs):
            out = vd._saved["to"](module, *args, **kwargs)
            target = vd._target(args, kwargs)
            if target is not None:
                for t in list(module.parameters()) + list(module.buffers()):
                    vd._place(t) if target == "placed" else vd._unplace(t)
            return out

        def module_cpu(module):
            out = vd._saved["cpu"](module)
            for t in list(module.parameters()) + list(module.buffers()):
                vd._unplace(t)
            return out

        def param_new(cls, data=None, requires_grad=True):
            out = vd._saved["pnew"](cls, data, requires_grad)
            if data is not None and vd.placed(data):
                vd._place(out)
            return out

        def param_deepcopy(param, memo):
            out = vd._saved["pcopy"](param, memo)
            if vd.placed(param):
                vd._place(out)
            return out

        M.to, M.cpu = module_to, module_cpu
        P.__new__, P.__deepcopy__ = param_new, param_deepcopy
        # Parameters bypass __torch_function__, so they get the virtual device directly.
        P.device = property(lambda p: VIRTUAL if vd.placed(p) else _DEVICE_GET(p))
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
        P, M = torch.nn.Parameter, torch.nn.Module
        M.to, M.cpu = self._saved["to"], self._saved["cpu"]
        P.__new__, P.__deepcopy__ = self._saved["pnew"], self._saved["pcopy"]
        if self._saved["pdev"] is None:
            del P.device
        else:
            P.device = self._saved["pdev"]


# ----------------------------------------------------------------------------- notebooks

_ENTER = "from shared.course.virtual_device import VirtualDevice as _VD\n_vd = _VD().__enter__()"
_REPORT = "import json as _json\nprint('VIRTUAL_DEVICE' + _json.dumps(sorted(set(_vd.problems))))"


def check_notebook(path: Path, timeout: int = 1200) -> tuple[list[str], list[str]]:
    """Run ``path`` under the smoke profile on the virtual device: ``(problems, cell errors)``."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    nb.cells = nb.cells[:1] + [nbformat.v4.new_code_cell(_ENTER)] + nb.cells[1:] + [nbformat.v4.new_code_cell(_REPORT)]
    env = {**os.environ, "LLM_PROFILE": "smoke", "LLM_DEVICE": "cpu:0", "MPLBACKEND": "Agg"}
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute(env=env)
    errors = [f"{o.get('ename')}: {str(o.get('evalue'))[:200]}" for c in nb.cells if c.cell_type == "code"
              for o in c.get("outputs", []) if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in nb.cells[-1].get("outputs", []) if o.get("output_type") == "stream")
    problems = json.loads(text.split("VIRTUAL_DEVICE", 1)[1]) if "VIRTUAL_DEVICE" in text else []
    return problems, errors


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m shared.course.virtual_device",
                                 description="Run notebooks on a virtual accelerator; report device mixing.")
    ap.add_argument("notebooks", nargs="+", type=Path)
    args = ap.parse_args(argv)
    bad = 0
    for path in args.notebooks:
        if not path.is_file():
            ap.error(f"{path}: no such notebook")
        problems, errors = check_notebook(path.resolve())
        bad += len(problems) + len(errors)
        print(f"{path}: {len(problems)} device problem(s), {len(errors)} cell error(s)")
        for line in problems + errors:
            print("   ", line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
