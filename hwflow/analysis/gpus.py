"""GPU baselines for plots: HBM-roofline ESTIMATES from public datasheet figures.

At batch 1 a decode token streams every weight and the KV cache once, so a GPU's decode rate is
at most ``bandwidth / bytes per token``; with the same plan's bytes as the FPGA run it is a
like-for-like upper bound, and ``tokens/s / board power`` an upper bound on tokens/J. These are
estimates, labelled so in every plot; the numbers and their sources are in
``mappings/gpus.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from hwflow.config import MAPPINGS, Frozen, Sourced, read_data, validate_data

__all__ = ["Gpu", "GpuEstimate", "estimate", "load_gpus"]


class Gpu(Sourced):
    """One GPU's public memory bandwidth and board power."""

    name: str
    bandwidth_gbps: float = Field(gt=0)
    power_w: float = Field(gt=0)


class _GpuFile(Frozen):
    gpus: tuple[Gpu, ...]


def load_gpus(path: str | Path | None = None) -> tuple[Gpu, ...]:
    """The GPUs of ``mappings/gpus.yaml`` (or ``path``)."""
    p = Path(path) if path else MAPPINGS / "gpus.yaml"
    return validate_data(_GpuFile, read_data(p), p).gpus


@dataclass(frozen=True)
class GpuEstimate:
    """A GPU's roofline estimate for one bytes-per-token figure."""

    gpu: str
    tokens_per_s: float
    tokens_per_j: float
    ms_per_token: float


def estimate(gpu: Gpu, bytes_per_token: float) -> GpuEstimate:
    """Decode roofline of ``gpu`` when a token moves ``bytes_per_token`` bytes."""
    tps = gpu.bandwidth_gbps * 1e9 / bytes_per_token
    return GpuEstimate(gpu.name, tps, tps / gpu.power_w, 1e3 / tps)
