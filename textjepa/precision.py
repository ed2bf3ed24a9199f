"""Numeric precision of a run: plain fp32, or bf16 autocast over fp32 master weights.

Under `bf16` the matmuls (linear layers, attention, every `@`) run in bfloat16 through `torch.autocast`,
while the weights, their gradients, the optimizer state and the EMA teacher stay float32, so a checkpoint
is the same fp32 safetensors file whichever precision trained it and loads into either. Numerically
sensitive reductions (normalisation, InfoNCE logits and softmax, SIGReg's characteristic function, VICReg's
covariance, cosine targets) are computed in fp32 inside `fp32_function`: a `.float()` alone is not enough,
because autocast casts a matmul's fp32 inputs back to bf16.

`auto` picks bf16 only where it measured faster than fp32 for the kind of work at hand (`Work`: training,
encoding batches, serving requests): on a CUDA device with bf16 support, and on a CPU that reports
AVX512-BF16 or AMX (read from the CPU flags) for the work in CPU_BF16_FASTER_FOR (docs/results.md, "bf16 per
path"). Elsewhere bf16 still runs when asked for; on a CPU without those flags it is emulated (converted to fp32
inside the kernels) and slower than fp32.

The caller reads /proc/cpuinfo (`read_cpu_flags`) at the edge and hands the text in, so the choice is a
pure function of its inputs.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar, get_args

import torch

from textjepa.errors import TextJepaError

Precision = Literal["fp32", "bf16"]
PrecisionRequest = Literal["auto", "fp32", "bf16"]
PRECISION_CHOICES: tuple[str, ...] = get_args(PrecisionRequest)
# What a run does with the model, for `auto`: train it, encode batches of texts (embed, evaluation), or answer
# requests one by one as they come (serve, infer, the world model's Python API).
Work = Literal["training", "encoding", "serving"]
WORKS: tuple[str, ...] = get_args(Work)
# The work for which bf16 measured faster than fp32 on a CPU with native bf16 (AMX, 1 thread; docs/results.md):
# a training step ~1.9x at the default shape; encoding batches of 32 faster too. Serving computes a few short
# texts per request, where the casts and bf16 kernels' fixed costs outweigh the faster GEMMs: p99 slower in bf16.
CPU_BF16_FASTER_FOR: frozenset[str] = frozenset({"training", "encoding"})
# ... and only for models at least this wide: the narrowest shape measured is dim 128 (2 layers, max_seq 64), where
# with GEMM row counts on a grid (textjepa/models/linear.py) bf16 trained 1.20x and encoded 1.17-1.37x as fast as
# fp32 (before the grid: 0.75-1.07x; dim 368 and 384: 1.9-2.1x training). Narrower models were not measured: fp32.
CPU_BF16_MIN_DIM = 128

# CPU flags (as Linux spells them in /proc/cpuinfo) under which oneDNN runs bf16 matmuls natively:
# AVX512-BF16 dot products, or AMX tiles. avx512f alone only converts, which is no faster than fp32.
NATIVE_CPU_BF16_FLAGS: tuple[str, ...] = ("amx_bf16", "avx512_bf16")

_T = TypeVar("_T")


@dataclass(frozen=True)
class PrecisionChoice:
    """What a run computes in, and why: the run's first lines and the checkpoint's info say so."""

    precision: Precision
    requested: str
    device_type: str
    native_bf16: bool  # does this device run bf16 matmuls natively (fast)?
    reason: str

    @property
    def compute_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.precision == "bf16" else torch.float32

    def describe(self) -> str:
        """One line for the start of a run."""
        if self.precision == "bf16":
            what = "bf16 autocast, fp32 master weights, optimizer state, teacher and losses"
        else:
            what = "fp32"
        return f"precision: {what} on {self.device_type} (--precision {self.requested}: {self.reason})"

    def info(self) -> dict:
        """What goes into a checkpoint's info: the weights themselves are always saved in fp32."""
        return {
            "precision": self.precision,
            "precision_requested": self.requested,
            "device_type": self.device_type,
            "native_bf16": self.native_bf16,
            "precision_reason": self.reason,
            "weights_dtype": "float32",
        }


def read_cpu_flags(path: str | Path = "/proc/cpuinfo") -> str:
    """The text of the CPU description (the edge of the precision choice); empty where there is none."""
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:  # not Linux, or a sandbox without /proc
        return ""


def cpu_flag_set(cpuinfo: str) -> frozenset[str]:
    """The feature flags of the first processor in /proc/cpuinfo text (`flags` on x86, `Features` on ARM)."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def native_cpu_bf16_flags(cpuinfo: str) -> list[str]:
    """The flags among NATIVE_CPU_BF16_FLAGS that this CPU reports (empty: bf16 would be emulated)."""
    flags = cpu_flag_set(cpuinfo)
    return [flag for flag in NATIVE_CPU_BF16_FLAGS if flag in flags]


def cuda_bf16_supported() -> bool:
    """A CUDA device is present and runs bf16 natively (Ampere or newer; emulation does not count)."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_precision(
    requested: str,
    device: torch.device | str,
    cpuinfo: str,
    cuda_bf16: bool | None = None,
    work: str = "training",
    dim: int | None = None,
) -> PrecisionChoice:
    """The precision a run uses on `device`, for --precision `requested` (auto, fp32 or bf16).

    cpuinfo: the text of /proc/cpuinfo (see read_cpu_flags). cuda_bf16: whether the CUDA device runs bf16
    natively; None asks torch (only consulted for a CUDA device). work: what the run does (see `Work`) and dim:
    the model's width where known, which decide `auto` on a CPU with native bf16.
    """
    if requested not in PRECISION_CHOICES:
        raise TextJepaError(f"unknown precision {requested!r} (use {', '.join(PRECISION_CHOICES)})")
    if work not in WORKS:
        raise ValueError(f"unknown work {work!r} (one of {', '.join(WORKS)})")
    device_type = torch.device(device).type
    if device_type == "cuda":
        native = cuda_bf16_supported() if cuda_bf16 is None else cuda_bf16
        hardware = "the CUDA device supports bf16" if native else "the CUDA device lacks native bf16"
    elif device_type == "cpu":
        found = native_cpu_bf16_flags(cpuinfo)
        native = bool(found)
        hardware = (
            f"the CPU reports {', '.join(found)}"
            if native
            else f"the CPU reports none of {', '.join(NATIVE_CPU_BF16_FLAGS)}: bf16 would be emulated"
        )
    else:
        native, hardware = False, f"no bf16 autocast support known for {device_type}"

    if requested == "fp32":
        return PrecisionChoice("fp32", requested, device_type, native, "asked for")
    if requested == "auto":
        if native and device_type == "cpu" and work not in CPU_BF16_FASTER_FOR:
            slower = f"{hardware}, but bf16 measured slower than fp32 for {work} on such CPUs"
            return PrecisionChoice("fp32", requested, device_type, native, slower)
        if native and device_type == "cpu" and dim is not None and dim < CPU_BF16_MIN_DIM:
            slower = f"{hardware}, but bf16 was not measured faster than fp32 below dim {CPU_BF16_MIN_DIM} on such CPUs"
            return PrecisionChoice("fp32", requested, device_type, native, slower)
        return PrecisionChoice("bf16" if native else "fp32", requested, device_type, native, hardware)
    # bf16 asked for explicitly
    if device_type == "cuda" and not native:
        raise TextJepaError("--precision bf16: this CUDA device has no native bf16 (use --precision fp32 or auto)")
    if device_type not in ("cpu", "cuda"):
        raise TextJepaError(f"--precision bf16 is not supported on {device_type} (use --precision fp32)")
    note = "asked for" if native else "asked for; " + hardware + ", expect it slower than fp32"
    return PrecisionChoice("bf16", requested, device_type, native, note)


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """The compute context of a forward pass: bf16 autocast, or nothing at all for fp32.

    Weights stay fp32; autocast casts them per matmul (and caches the casts inside one region, so wrap a
    whole forward, or a whole training step's forwards, not each layer).
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"unknown precision {precision!r}")
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


@contextlib.contextmanager
def full_precision(*device_types: str) -> Iterator[None]:
    """Autocast switched off for these device types (those where it is on): fp32 inputs stay fp32."""
    with contextlib.ExitStack() as stack:
        for device_type in dict.fromkeys(device_types):
            if torch.is_autocast_enabled(device_type):
                stack.enter_context(torch.autocast(device_type, enabled=False))
        yield


def fp32_function(function: Callable[..., _T]) -> Callable[..., _T]:
    """Run `function` in fp32 even inside a bf16 autocast region: floating tensor arguments are cast to
    float32 and autocast is off for their devices while it runs. Outside autocast it costs nothing.

    For the numerically sensitive parts of the losses: logits and their softmax, normalisation, the
    characteristic function, covariance, cosine targets. The gradients flow back through the casts.
    """

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        tensors = [value for value in (*args, *kwargs.values()) if isinstance(value, torch.Tensor)]
        active = [t for t in dict.fromkeys(x.device.type for x in tensors) if torch.is_autocast_enabled(t)]
        if not active:
            return function(*args, **kwargs)
        args = tuple(_as_fp32(value) for value in args)
        kwargs = {key: _as_fp32(value) for key, value in kwargs.items()}
        with full_precision(*active):
            return function(*args, **kwargs)

    return wrapper


def _as_fp32(value):
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float32:
        return value.float()
    return value


def configure_fp32_matmul(choice: PrecisionChoice) -> None:
    """On CUDA in fp32, let matmuls use TF32 tensor cores (what a GPU user expects of a trainer); CPU fp32
    matmuls are left exact. A process-wide torch setting: call it once, where the run starts."""
    if choice.device_type == "cuda" and choice.precision == "fp32":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
