"""Weight quantization from scratch (Chapter 6b): int8/int4, per tensor, per channel, per group.

A float weight ``w`` is stored as small integers ``q`` and a float ``scale`` per group of
elements, and read back as ``w_hat = scale * (q - zero_point)``.

* **Absmax (symmetric)**, ``b`` bits: ``qmax = 2^(b-1) - 1``, ``scale = max|w| / qmax``,
  ``q = round(w / scale)`` in ``[-qmax, qmax]``, ``zero_point = 0``.
* **Zero-point (asymmetric)**: the range ``[min(w, 0), max(w, 0)]`` maps onto ``[0, 2^b - 1]``:
  ``scale = (max - min) / (2^b - 1)``, ``zero_point = round(-min / scale)``,
  ``q = clamp(round(w / scale) + zero_point, 0, 2^b - 1)``. Zero stays exactly representable.

In both schemes ``|w - w_hat| <= scale / 2`` for every element (rounding to the nearest
integer; clamping only touches values within half a step of the range's ends). The
*granularity* decides how many elements share one scale, and so how far an outlier inflates
the step of its neighbours: one per tensor, one per output channel (row), or one per group of
``group_size`` consecutive input elements of a row (GPTQ/AWQ/llama.cpp use 32-128).

Storage: int8 as ``int8`` (symmetric) or ``uint8`` (asymmetric); int4 **packed two per byte**
(the low nibble holds the even column, the high nibble the odd one; symmetric values are
stored offset by 8); 2 and 3 bits one per byte (the maths is the same, packing is not taught).

The GGUF block formats of llama.cpp (``ggml-quants.c``) are encoded and decoded too:
``Q8_0`` (32 values, one fp16 absmax scale) and ``Q4_1`` (32 values, fp16 scale ``d`` and
minimum ``m``, ``w_hat = d * q + m``, ``q`` in 0..15). The tests check both, byte for byte,
against the ``gguf`` library.

References: Jacob et al. (2018), "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", eq. 1-2; Dettmers et al. (2022), "LLM.int8()", section 3;
Frantar et al. (2023), GPTQ (group-wise scales); llama.cpp ``ggml-quants.c``.

Example::

    >>> w = torch.randn(64, 128)
    >>> qt = quantize(w, bits=4, group_size=32)
    >>> bool(((w - dequantize(qt)).abs() <= qt.scale.repeat_interleave(32, 1) / 2 + 1e-6).all())
    True
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["QuantizedTensor", "quantize", "dequantize", "QuantLinear", "quantize_model", "model_bytes",
           "int_mm_available", "gguf_quantize", "gguf_dequantize", "GGUF_BLOCK", "PeakMemory"]

BITS = (2, 3, 4, 8)


@dataclass
class QuantizedTensor:
    """Integers plus scales. ``dequantize()`` gives back a float tensor of ``shape``.

    Attributes:
        data: ``int8``/``uint8`` integers ``[rows, cols]`` (int4: ``uint8 [rows, cols // 2]``, packed).
        scale: float32 ``[rows, n_groups]`` (per tensor: ``[1, 1]``).
        zero_point: ``uint8 [rows, n_groups]`` for the asymmetric scheme, else None.
        bits, group_size, symmetric: how it was made (``group_size``: an int, ``None`` = per
            channel, ``"tensor"`` = one scale for all).
        shape: the original shape (``rows`` is the product of all but the last dimension).
    """

    data: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor | None
    bits: int
    group_size: int | str | None
    symmetric: bool
    shape: torch.Size

    @property
    def packed(self) -> bool:
        return self.bits == 4

    def int_values(self) -> torch.Tensor:
        """The integers ``q`` unpacked, ``int16 [rows, cols]`` (symmetric: signed)."""
        q = unpack_int4(self.data) if self.packed else self.data.to(torch.int16)
        if self.packed and self.symmetric:
            q = q - 8
        return q

    def nbytes(self) -> int:
        """Bytes of the integers, scales and zero points."""
        n = self.data.numel() * self.data.element_size() + self.scale.numel() * self.scale.element_size()
        return n + (0 if self.zero_point is None else self.zero_point.numel() * self.zero_point.element_size())

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self, dtype)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """``uint8 [rows, cols]`` values in 0..15 -> ``uint8 [rows, cols // 2]``: even column in the low nibble."""
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: ``uint8 [rows, n]`` -> ``int16 [rows, 2n]`` in 0..15."""
    lo, hi = (packed & 0x0F).to(torch.int16), (packed >> 4).to(torch.int16)
    return torch.stack([lo, hi], dim=-1).reshape(packed.size(0), -1)


def _check_args(w, bits, group_size, symmetric) -> None:
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        raise ValueError(f"w must be a floating-point tensor, got {type(w).__name__}"
                         + (f" of dtype {w.dtype}" if isinstance(w, torch.Tensor) else ""))
    if w.dim() < 1 or w.numel() == 0:
        raise ValueError(f"w must have at least one element and one dimension, got shape {tuple(w.shape)}")
    if not torch.isfinite(w).all():
        raise ValueError("w contains NaN or inf; quantization needs finite values")
    if bits not in BITS or isinstance(bits, bool):
        raise ValueError(f"bits must be one of {BITS}, got {bits!r}")
    if not isinstance(symmetric, bool):
        raise ValueError(f"symmetric must be True or False, got {symmetric!r}")
    cols = w.shape[-1]
    if group_size is not None and group_size != "tensor":
        if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1:
            raise ValueError(f"group_size must be a positive int, None (per channel) or 'tensor', got {group_size!r}")
        if cols % group_size != 0:
            raise ValueError(f"group_size={group_size} does not divide the row length {cols} "
                             f"(w.shape[-1]); choose a divisor of {cols}")
    if bits == 4 and cols % 2 != 0:
        raise ValueError(f"int4 packs two values per byte, so the row length must be even, got {cols}")


def quantize(w: torch.Tensor, bits: int = 8, group_size: int | str | None = None,
             symmetric: bool = True) -> QuantizedTensor:
    """Quantize ``w: [..., cols]`` (viewed as ``[rows, cols]``) to ``bits`` bits.

    Args:
        w: float tensor; each row (last dimension) is an output channel's input weights.
        bits: 2, 3, 4 or 8.
        group_size: elements sharing one scale, taken along the last dimension; ``None`` =
            one scale per row (per output channel), ``"tensor"`` = one scale for the whole tensor.
        symmetric: absmax (True) or zero-point (False) scheme; see the module docstring.

    Returns:
        a :class:`QuantizedTensor` whose :func:`dequantize` is within ``scale / 2`` of ``w``.

    Raises:
        ValueError: for bits not in {2, 3, 4, 8}, a group size that does not divide the row,
            a non-float or non-finite ``w``, or an odd row length with int4.
    """
    _check_args(w, bits, group_size, symmetric)
    shape = w.shape
    x = w.detach().float().reshape(-1, shape[-1])                   # [rows, cols]
    rows, cols = x.shape
    if group_size == "tensor":
        g = x.reshape(1, 1, -1)                                     # [1, 1, rows * cols]
    else:
        gs = cols if group_size is None else group_size
        g = x.reshape(rows, cols // gs, gs)                         # [rows, n_groups, gs]
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = g.abs().amax(-1) / qmax                             # [R, G]: absmax, not max
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)  # an all-zero group
        q = torch.clamp(torch.round(g / scale[..., None]), -qmax, qmax)
        zero_point = None
    else:
        qmax = 2 ** bits - 1
        lo = g.amin(-1).clamp(max=0.0)                              # include 0 in the range
        hi = g.amax(-1).clamp(min=0.0)
        scale = (hi - lo) / qmax
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        zero_point = torch.clamp(torch.round(-lo / scale), 0, qmax)  # [R, G], an integer
        q = torch.clamp(torch.round(g / scale[..., None]) + zero_point[..., None], 0, qmax)
        zero_point = zero_point.to(torch.uint8)
    q = q.reshape(rows, cols)
    if bits == 4:
        data = pack_int4(q + 8 if symmetric else q)                 # [rows, cols // 2]
    else:
        data = q.to(torch.int8 if symmetric else torch.uint8)
    return QuantizedTensor(data, scale.float(), zero_point, bits, group_size, symmetric, shape)


def dequantize(qt: QuantizedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``scale * (q - zero_point)`` back in ``qt.shape`` and ``dtype``.

    Raises:
        TypeError: if ``qt`` is not a :class:`QuantizedTensor`.
    """
    if not isinstance(qt, QuantizedTensor):
        raise TypeError(f"dequantize needs a QuantizedTensor, got {type(qt).__name__}")
    q = qt.int_values().float()                                     # [rows, cols]
    rows, cols = q.shape
    if qt.group_size == "tensor":
        g = q.reshape(1, 1, -1)
    else:
        gs = cols if qt.group_size is None else qt.group_size
        g = q.reshape(rows, cols // gs, gs)
    if qt.zero_point is not None:
        g = g - qt.zero_point[..., None].float()
    return (g * qt.scale[..., None]).reshape(qt.shape).to(dtype)


# ---------------------------------------------------------------------------- a quantized Linear

def int_mm_available() -> bool:
    """Whether ``torch._int_mm`` (int8 x int8 -> int32 matmul) runs on the CPU in this torch."""
    try:
        a = torch.ones(17, 32, dtype=torch.int8)
        return bool(torch._int_mm(a, torch.ones(32, 8, dtype=torch.int8).t().contiguous().t())[0, 0] == 32)
    except (RuntimeError, AttributeError):
        return False


class QuantLinear(nn.Module):
    """A weight-only quantized ``nn.Linear``: ``forward(x: [..., in]) -> [..., out]``.

    The weight is held as a :class:`QuantizedTensor` (buffers ``qweight``, ``scale``,
    ``zero_point``) and the bias in float. Two compute paths, recorded in ``self.path``:

    * ``"dequant"``: rebuild the float weight for each call, then ``F.linear`` (any bits and
      granularity). It saves memory, not time: the float weight is rebuilt every call.
    * ``"int_mm"`` (int8, symmetric, per channel): also quantize each activation row to int8
      with its own absmax scale and multiply integers with ``torch._int_mm`` (int32
      accumulation): ``y = (q_x @ q_w^T) * s_x * s_w``. This is the W8A8 scheme of
      LLM.int8() without its fp16 outlier path (Dettmers et al., 2022, eq. 1-3).

    Raises:
        ValueError: for an unknown path, or ``"int_mm"`` with a setting it cannot serve.
    """

    def __init__(self, qt: QuantizedTensor, bias: torch.Tensor | None, path: str = "dequant"):
        super().__init__()
        if path not in ("dequant", "int_mm"):
            raise ValueError(f"path must be 'dequant' or 'int_mm', got {path!r}")
        if path == "int_mm" and not (qt.bits == 8 and qt.symmetric and qt.group_size is None):
            raise ValueError("path='int_mm' needs bits=8, symmetric=True, group_size=None (per channel)")
        if path == "int_mm" and not int_mm_available():
            raise ValueError("path='int_mm': torch._int_mm does not run on this machine; use 'dequant'")
        self.out_features, self.in_features = qt.shape
        self.bits, self.group_size, self.symmetric, self.path = qt.bits, qt.group_size, qt.symmetric, path
        self.register_buffer("qweight", qt.data)
        self.register_buffer("scale", qt.scale)
        self.register_buffer("zero_point", qt.zero_point)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int = 8, group_size: int | str | None = None,
                    symmetric: bool = True, path: str = "dequant") -> QuantLinear:
        """Quantize ``linear.weight: [out, in]`` (groups run along ``in``)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"from_linear needs an nn.Linear, got {type(linear).__name__}")
        return cls(quantize(linear.weight, bits, group_size, symmetric), linear.bias, path)

    def quantized(self) -> QuantizedTensor:
        return QuantizedTensor(self.qweight, self.scale, self.zero_point, self.bits, self.group_size,
                               self.symmetric, torch.Size((self.out_features, self.in_features)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.path == "dequant":
            return F.linear(x, dequantize(self.quantized(), x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).float()                # [M, in]
        s_x = (x2.abs().amax(-1, keepdim=True) / 127).clamp(min=1e-12)  # [M, 1] per-token scale
        q_x = torch.round(x2 / s_x).clamp(-127, 127).to(torch.int8)
        acc = torch._int_mm(q_x, self.qweight.t())                  # [M, out] int32
        y = acc.float() * s_x * self.scale[:, 0]                    # undo both scales
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, symmetric={self.symmetric}, path={self.path!r}")


def quantize_model(model: nn.Module, bits: int = 8, group_size: int | str | None = None,
                   symmetric: bool = True, path: str = "dequant", skip: tuple[str, ...] = ("lm_head",),
                   inplace: bool = False) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` by a :class:`QuantLinear`.

    Args:
        bits, group_size, symmetric, path: as :func:`quantize` and :class:`QuantLinear`.
        skip: module names (suffixes) left in float. GPT-2 and SmolLM2 tie ``lm_head`` to the
            token embedding, so quantizing it would store the matrix twice.
        inplace: modify ``model`` itself; by default a deep copy is quantized and returned.

    Raises:
        ValueError: as :func:`quantize` (checked on every layer before anything changes).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if bits not in BITS or isinstance(bits, bool):
        raise ValueError(f"bits must be one of {BITS}, got {bits!r}")
    model = model if inplace else copy.deepcopy(model)
    targets = [(name, m) for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and not any(name == s or name.endswith("." + s) for s in skip)]
    for name, m in targets:
        _check_args(m.weight, bits, group_size, symmetric)
    for name, m in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, QuantLinear.from_linear(m, bits, group_size, symmetric, path))
    return model


def model_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and persistent buffer, each shared (tied) tensor counted once."""
    seen, total = set(), 0
    for t in model.state_dict(keep_vars=True).values():
        if t is None or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


# ---------------------------------------------------------------------------- GGUF block codecs

#: ``{type: (values per block, bytes per block)}``, as ``gguf.GGML_QUANT_SIZES``.
GGUF_BLOCK = {"Q8_0": (32, 34), "Q4_1": (32, 20)}


def _blocks(w, qtype: str) -> np.ndarray:
    if qtype not in GGUF_BLOCK:
        raise ValueError(f"qtype must be one of {sorted(GGUF_BLOCK)}, got {qtype!r}")
    x = w.detach().cpu().float().numpy() if isinstance(w, torch.Tensor) else np.asarray(w, dtype=np.float32)
    n = GGUF_BLOCK[qtype][0]
    if x.ndim < 1 or x.shape[-1] % n != 0:
        raise ValueError(f"{qtype} needs rows whose length is a multiple of {n}, got shape {x.shape}")
    return x.reshape(-1, n).astype(np.float32)


def gguf_quantize(w, qtype: str) -> np.ndarray:
    """Encode ``w: [..., cols]`` (cols a multiple of 32) into GGUF blocks, ``uint8 [..., cols // 32 * bytes]``.

    * ``Q8_0``: ``d = absmax / 127`` (stored fp16), ``q = round(w / d)`` (half away from zero),
      34 bytes per block: ``d`` then 32 ``int8``.
    * ``Q4_1``: ``d = (max - min) / 15``, ``m = min`` (both fp16), ``q = trunc((w - m) / d + 0.5)``
      clipped to 0..15; 20 bytes: ``d``, ``m``, then 16 bytes whose low nibbles hold values 0-15
      of the block and high nibbles values 16-31.

    Source: llama.cpp ``quantize_row_q8_0_ref`` / ``quantize_row_q4_1_ref`` (``ggml-quants.c``).

    Raises:
        ValueError: for another qtype or a row length that is not a multiple of 32.
    """
    b = _blocks(w, qtype)                                            # [n_blocks, 32] float32
    shape = w.shape if hasattr(w, "shape") else np.shape(w)
    with np.errstate(divide="ignore"):
        if qtype == "Q8_0":
            d = np.abs(b).max(-1, keepdims=True) / np.float32(127)
            inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
            v = b * inv
            q = (np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))).astype(np.int8)  # roundf
            out = np.concatenate([d.astype(np.float16).view(np.uint8), q.view(np.uint8)], axis=-1)
        else:
            hi, lo = b.max(-1, keepdims=True), b.min(-1, keepdims=True)
            d = (hi - lo) / np.float32(15)
            inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
            q = np.clip(np.trunc((b - lo) * inv + np.float32(0.5)), 0, 15).astype(np.uint8)
            nib = q[:, :16] | (q[:, 16:] << np.uint8(4))
            out = np.concatenate([d.astype(np.float16).view(np.uint8), lo.astype(np.float16).view(np.uint8), nib],
                                 axis=-1)
    per_row = shape[-1] // 32 * GGUF_BLOCK[qtype][1]
    return out.reshape(*shape[:-1], per_row)


def gguf_dequantize(blocks: np.ndarray, qtype: str) -> np.ndarray:
    """Decode :func:`gguf_quantize`'s bytes ``uint8 [..., n]`` back to ``float32 [..., cols]``.

    Raises:
        ValueError: for another qtype, or a byte count that is not whole blocks.
    """
    if qtype not in GGUF_BLOCK:
        raise ValueError(f"qtype must be one of {sorted(GGUF_BLOCK)}, got {qtype!r}")
    blocks = np.asarray(blocks)
    n, nbytes = GGUF_BLOCK[qtype]
    if blocks.dtype != np.uint8 or blocks.ndim < 1 or blocks.shape[-1] % nbytes != 0:
        raise ValueError(f"{qtype} data must be uint8 with a last dimension that is a multiple of {nbytes}, "
                         f"got {blocks.dtype} {blocks.shape}")
    b = blocks.reshape(-1, nbytes)
    d = b[:, :2].copy().view(np.float16).astype(np.float32)         # [n_blocks, 1]
    if qtype == "Q8_0":
        x = b[:, 2:].copy().view(np.int8).astype(np.float32) * d
    else:
        m = b[:, 2:4].copy().view(np.float16).astype(np.float32)
        nib = b[:, 4:]
        q = np.concatenate([nib & 0x0F, nib >> 4], axis=-1).astype(np.float32)  # values 0-15, 16-31
        x = d * q + m
    return x.reshape(*blocks.shape[:-1], blocks.shape[-1] // nbytes * n)


# ---------------------------------------------------------------------------- measuring memory

class PeakMemory:
    """Peak bytes of CPU tensors *created* inside a ``with`` block (a torch dispatch mode).

    Every op's outputs are recorded by storage; a storage whose tensors are all gone stops
    counting. ``peak`` is the most bytes alive at once, so weights that existed before the
    block are not included (add :func:`model_bytes`). This is a CPU stand-in for
    ``torch.cuda.max_memory_allocated``; it slows every op down, so never time inside it.

    Example::

        >>> with torch.no_grad(), PeakMemory() as pm:       # doctest: +SKIP
        ...     model(idx)
        >>> pm.peak                                          # doctest: +SKIP
    """

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                tracker._record(out)
                return out

        self._mode, self.live, self.peak = _Mode(), {}, 0

    def _record(self, out) -> None:
        from torch.multiprocessing.reductions import StorageWeakRef
        from torch.utils._pytree import tree_leaves

        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            del self.live[key]
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                st = t.untyped_storage()
                if st.nbytes() and st.data_ptr() not in self.live:
                    self.live[st.data_ptr()] = (StorageWeakRef(st), st.nbytes())
        self.peak = max(self.peak, sum(n for _, n in self.live.values()))

    def __enter__(self) -> PeakMemory:
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
