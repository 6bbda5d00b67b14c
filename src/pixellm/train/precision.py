"""Which precision ``precision: auto`` trains in, and why.

bf16 autocast pays on accelerators with bf16 units and on CPUs with native bf16 matmuls
(AVX512-BF16 or AMX). Elsewhere PyTorch emulates it: on an AVX2-only CPU the tiny training step
was 19x slower in bf16 than in fp32, and a single bf16 matmul 48x (docs/training.md). So on a
CPU ``auto`` needs both the instruction-set flags and a short timed probe (a few ms) that shows
bf16 matmuls are not slower there: the flags alone cannot see a oneDNN ISA cap
(``ONEDNN_MAX_CPU_ISA``) or a build without bf16 kernels.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# accelerate's ``mixed_precision`` -> the dtype autocast computes in
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(mixed_precision: str) -> torch.dtype | None:
    """The autocast dtype of accelerate's ``mixed_precision`` (None for ``"no"``)."""
    return AUTOCAST_DTYPES.get(mixed_precision)


@dataclass(frozen=True)
class PrecisionChoice:
    """``mixed_precision`` in accelerate's terms (``"bf16"``, ``"fp16"`` or ``"no"``) and why."""

    mixed_precision: str
    reason: str

    @property
    def name(self) -> str:
        return "fp32" if self.mixed_precision == "no" else self.mixed_precision


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from ``/proc/cpuinfo``; None where that file does not exist."""
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        return None
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def bf16_matmul_speedup(size: int = 256, repeats: int = 3) -> float:
    """fp32 time / bf16 time of a ``size`` x ``size`` matmul under CPU autocast (best of
    ``repeats``, after one warm-up). Above 1: bf16 is faster here."""
    a, b = torch.randn(size, size), torch.randn(size, size)

    def best(dtype: torch.dtype | None) -> float:
        times = []
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
                for _ in range(4):
                    (a @ b).sum()
            times.append(time.perf_counter() - t0)
        return min(times[1:])

    return best(None) / max(best(torch.bfloat16), 1e-9)


# Below this the small probe has seen emulated bf16 (0.02-0.03x where oneDNN is capped to AVX2 on
# an AVX512-BF16 CPU), and the larger probe, ~2 s there, is not needed to say so.
EMULATED_BELOW = 0.5


def probe_bf16_speedup(measure: Callable[[int, int], float] = bf16_matmul_speedup) -> float:
    """The bf16 / fp32 matmul speed ratio that ``auto`` decides on. A 256 x 256 probe answers
    where bf16 is emulated (~0.2 s there); otherwise a 512 x 512 probe, best of 5, decides (~70 ms
    in all on 2 cores), because the small one is noisy where the two are close: on one
    AVX512-BF16 CPU it read 1.14-1.79x in quiet runs and 1.00x once (fp32 in one run, bf16 in
    the next), where the larger one read 1.85-2.2x (docs/training.md, "Precision")."""
    quick = measure(256, 3)
    if quick < EMULATED_BELOW:
        return quick
    return measure(512, 5)


def choose_cpu_precision(flags: set[str] | None, speedup: Callable[[], float]) -> PrecisionChoice:
    """bf16 where the CPU has native bf16 *and* the probe shows it is not slower; else fp32.
    ``flags`` None (no ``/proc/cpuinfo``, e.g. macOS) leaves the decision to the probe."""
    if flags is not None:
        native = sorted(set(NATIVE_BF16_FLAGS) & flags)
        if not native:
            return PrecisionChoice("no", "CPU has no native bf16 (no avx512_bf16 / amx_bf16): bf16 would be emulated")
        where = f"CPU has {', '.join(native)}"
    else:
        where = "CPU flags unknown"
    ratio = speedup()
    if ratio >= 1.0:
        return PrecisionChoice("bf16", f"{where}; bf16 matmul probe {ratio:.1f}x the fp32 speed")
    return PrecisionChoice("no", f"{where}, but the bf16 matmul probe runs at {ratio:.2f}x the fp32 speed")


def resolve_precision(
    precision: str,
    flags: Callable[[], set[str] | None] = cpu_flags,
    speedup: Callable[[], float] = probe_bf16_speedup,
) -> PrecisionChoice:
    """``auto | bf16 | fp16 | fp32`` -> what to train in. An explicit value is obeyed."""
    if precision == "fp32":
        return PrecisionChoice("no", "precision: fp32 requested")
    if precision in ("bf16", "fp16"):
        return PrecisionChoice(precision, f"precision: {precision} requested")
    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return PrecisionChoice("bf16", "CUDA device supports bf16")
        return PrecisionChoice("no", "CUDA device without bf16")
    return choose_cpu_precision(flags(), speedup)
