"""GPU baselines for plots: HBM-roofline ESTIMATES from public datasheet figures.

At batch 1 a decode token streams every weight and the KV cache once, so a GPU's decode rate is
at most ``bandwidth / bytes per token``. The bytes are the *workload's own* (the model at the
GPU's stated precision, :func:`workload_bytes_per_token`), never taken from a sweep grid: an FP16
point (what FlightLLM compares against: vLLM FP16) and an INT4-weight point per GPU
(:data:`PRECISIONS`). tokens/J is that rate over the GPU's stated power: at TDP (the datasheet
maximum) it is a *lower bound* of tokens/J at that rate, since a GPU decoding at batch 1 draws
less than TDP; the rate itself is an upper bound. Numbers and sources: ``mappings/gpus.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

from hwflow.config import MAPPINGS, Frozen, ModelConfig, Sourced, read_data, validate_data

__all__ = [
    "PRECISIONS",
    "Gpu",
    "GpuEstimate",
    "estimate",
    "load_gpus",
    "workload_bytes_per_token",
]

#: GPU precisions drawn: name -> (bits per weight, bits per KV element). INT4 weights carry one
#: FP16 scale per group of 128 (AWQ's default group size, Lin et al., MLSys 2024): 4 + 16/128.
PRECISIONS: dict[str, tuple[float, int]] = {"FP16": (16.0, 16), "INT4-weight": (4.125, 16)}


class Gpu(Sourced):
    """One GPU's public memory bandwidth and board power (``power_kind`` says which power)."""

    name: str
    bandwidth_gbps: float = Field(gt=0)
    power_w: float = Field(gt=0)
    power_kind: Literal["tdp", "measured"] = "tdp"


class _GpuFile(Frozen):
    gpus: tuple[Gpu, ...]


def load_gpus(path: str | Path | None = None) -> tuple[Gpu, ...]:
    """The GPUs of ``mappings/gpus.yaml`` (or ``path``)."""
    p = Path(path) if path else MAPPINGS / "gpus.yaml"
    return validate_data(_GpuFile, read_data(p), p).gpus


def workload_bytes_per_token(
    cfg: ModelConfig, weight_bits: float, kv_bits: int, context: float
) -> float:
    """Bytes one batch-1 decode token reads: every linear weight of every layer and the LM head
    at ``weight_bits``, and the K and V cache of ``context`` tokens at ``kv_bits``."""
    per_layer = sum(o * i for o, i in map(cfg.linear_shape, cfg.linear_ops))
    weights = (cfg.layers * per_layer + cfg.vocab * cfg.hidden) * weight_bits / 8
    kv = 2 * cfg.layers * cfg.kv_heads * cfg.head_dim * context * kv_bits / 8
    return weights + kv


@dataclass(frozen=True)
class GpuEstimate:
    """A GPU's roofline estimate for one bytes-per-token figure."""

    gpu: str
    tokens_per_s: float  #: upper bound: bandwidth / bytes per token
    tokens_per_j: float  #: that rate / stated power (a lower bound at TDP)
    ms_per_token: float


def estimate(gpu: Gpu, bytes_per_token: float) -> GpuEstimate:
    """Decode roofline of ``gpu`` when a token moves ``bytes_per_token`` bytes."""
    tps = gpu.bandwidth_gbps * 1e9 / bytes_per_token
    return GpuEstimate(gpu.name, tps, tps / gpu.power_w, 1e3 / tps)
