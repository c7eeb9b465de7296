"""Peak FLOP/s per device and model FLOPs utilisation (MFU). Chapters 4 and 5.

MFU = achieved model FLOP/s / peak FLOP/s, where achieved = tokens/s x FLOPs per token
(``GPTModel.flops_per_token``). Peaks are *dense* (no 2:4 sparsity) tensor-core figures from
the vendors' data sheets. A benchmark must use the peak of the chip it ran on: quoting an
H100 run against an A100 peak overstates MFU by about 3x.
"""

from __future__ import annotations

import torch

__all__ = ["PEAK_TFLOPS", "peak_flops", "mfu", "device_name", "amp_dtype", "has_native_bf16"]

#: Dense peak TFLOP/s by (device-name substring, dtype). First match wins, so list more
#: specific names first ("L40S" before "L4", "A100" before "A10"). An empty table means
#: "known, but no trustworthy figure": ``peak_flops`` returns None rather than a wrong peak.
#: Sources: NVIDIA data sheets (B200, H100/H200 SXM5, H100 PCIe/NVL, A100, L40S, L4, A10,
#: T4, V100); the data sheets' "with sparsity" figures are halved.
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("B200", {"bf16": 2250.0, "fp16": 2250.0, "tf32": 1100.0}),
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    ("H100 NVL", {"bf16": 835.0, "fp16": 835.0, "tf32": 418.0, "fp32": 60.0}),
    ("H100", {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0}),  # SXM5
    ("H200", {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0}),  # SXM, also GH200
    ("A100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.0, "fp16": 362.0, "tf32": 183.0, "fp32": 91.6}),
    ("L40", {}),
    ("L4", {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    ("A10G", {}),  # AWS variant of the A10, clocked differently
    ("A10", {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2}),
    ("T4", {"fp16": 65.0, "fp32": 8.1}),  # no bf16 tensor cores
    ("V100", {"fp16": 125.0, "fp32": 15.7}),
]

_DTYPE_KEY = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def device_name(device: torch.device | str | None = None) -> str:
    """Human-readable name of ``device`` (e.g. ``"NVIDIA H100 80GB HBM3"`` or ``"cpu"``).

    Raises:
        ValueError: if ``device`` is not a device string or ``torch.device``.
    """
    try:
        device = torch.device(device) if device is not None else torch.device("cpu")
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a device (try 'cpu', 'cuda' or 'mps')") from None
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def amp_dtype(device: torch.device | str | None = None) -> torch.dtype:
    """The dtype the course's mixed precision computes matmuls in on ``device``, which is the
    peak to quote for MFU (``peak_flops(device, amp_dtype(device))``).

    * CUDA with bf16 (Ampere and newer): ``torch.bfloat16``;
    * other CUDA GPUs (Colab's T4, V100): ``torch.float16`` (T4: 65 TFLOP/s, not "no bf16 peak");
    * CPU, MPS: ``torch.float32`` (no autocast).

    ``shared.train.autocast_context`` uses this choice.

    Raises:
        ValueError: as :func:`device_name`.
    """
    device_name(device)  # validates
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if has_native_bf16(device) else torch.float16


def has_native_bf16(device: torch.device | str | None = None) -> bool:
    """Whether the CUDA GPU ``device`` has bf16 tensor cores (compute capability 8.0 or newer:
    Ampere, Ada, Hopper, Blackwell). ROCm GPUs count as bf16-capable; CPUs and MPS do not.

    Why not ``torch.cuda.is_bf16_supported()``: by default it also answers ``True`` where bf16 is
    only *emulated* (a Colab T4, compute capability 7.5), whose bf16 matmuls are several times
    slower than its fp16 tensor cores and have no peak to quote for MFU.

    Raises:
        ValueError: as :func:`device_name`.
    """
    device_name(device)  # validates
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type != "cuda":
        return False
    if torch.version.hip:
        return True
    return tuple(torch.cuda.get_device_capability(device)) >= (8, 0)


def peak_flops(device: torch.device | str | None = None, dtype: torch.dtype = torch.bfloat16) -> float | None:
    """Dense peak FLOP/s of ``device`` for matmuls in ``dtype``; ``None`` if unknown
    (CPUs, MPS, unlisted GPUs): then report tokens/s and no MFU rather than a wrong one.

    For ``torch.float32`` on CUDA with TF32 matmuls allowed
    (``torch.set_float32_matmul_precision("high")``), the TF32 peak is the relevant one.

    Example: on an H100 SXM, ``peak_flops("cuda", torch.bfloat16) == 989e12``.

    Raises:
        TypeError: if ``dtype`` is not a ``torch.dtype``. ValueError: as :func:`device_name`.
    """
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype such as torch.bfloat16, got {dtype!r}")
    name = device_name(device)
    key = _DTYPE_KEY.get(dtype, "fp32")
    if key == "fp32" and name != "cpu" and torch.backends.cuda.matmul.allow_tf32:
        key = "tf32"
    for pattern, table in PEAK_TFLOPS:
        if pattern in name:
            tf = table.get(key)
            return tf * 1e12 if tf is not None else None
    return None


def mfu(tokens_per_s: float, flops_per_token: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation in [0, 1], or ``None`` when the peak is unknown.

    Raises:
        ValueError: if ``tokens_per_s`` is negative, ``flops_per_token`` is not positive, or
            ``peak`` is negative.
    """
    for name, value, ok in (("tokens_per_s", tokens_per_s, tokens_per_s >= 0),
                            ("flops_per_token", flops_per_token, flops_per_token > 0),
                            ("peak", peak, peak is None or peak >= 0)):
        if not ok:
            raise ValueError(f"{name} must be {'> 0' if name == 'flops_per_token' else '>= 0'}, got {value}")
    if not peak:
        return None
    return tokens_per_s * flops_per_token / peak
