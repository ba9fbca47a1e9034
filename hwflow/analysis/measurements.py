"""Published figures the models are compared with, read from ``mappings/measurements``.

``hbm.yaml``: HBM bandwidth points (board, access pattern, the setup's port, GB/s, source).
The model is evaluated at a point's own port and pattern by :func:`model_gbps`; the points are
never inputs of the model (the preset fields are).

``flightllm.yaml``: FlightLLM's published results with the hwflow case that replicates each
(:func:`flightllm_figures`); they are outputs to compare with, never inputs.

``gpu.yaml``: the GPU results of FlightLLM's comparisons (:func:`gpu_figures`), compared with
hwflow's GPU baseline for the same case (:mod:`hwflow.analysis.gpus`).

``claims.yaml``: FlightLLM's headline FPGA-over-GPU ratios (:func:`claim_figures`).

Every figure may say what of it is uncertain (``unsure``) and explain a known disagreement with
the model (``why``); ``hwflow validate`` shows both."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from hwflow.analysis.gpus import PRECISIONS, load_gpus
from hwflow.config import MAPPINGS, Frozen, load_hw, read_data, validate_data
from hwflow.costs import hbm_stream_gbps
from hwflow.errors import ConfigError

__all__ = [
    "ClaimFigure",
    "FlightLlmFigure",
    "GpuFigure",
    "HbmPoint",
    "claim_figures",
    "flightllm_figures",
    "gpu_figures",
    "hbm_points",
    "model_gbps",
]

#: The folder of the shipped measurement files.
MEASUREMENTS = MAPPINGS / "measurements"


class HbmPoint(Frozen):
    """One published HBM bandwidth figure."""

    name: str
    board: str  #: the hwflow preset of the board (its HBM device fields are used)
    channels: int | None = Field(default=None, gt=0)  #: pseudo-channels streaming (None: all)
    run_bytes: int = Field(gt=0)
    new_row: bool
    port_bits: int = Field(gt=0)
    port_mhz: float = Field(gt=0)
    gbps: float = Field(gt=0)
    kind: Literal["measured", "vendor"]
    source: str
    unsure: str = ""  #: what of the point is uncertain
    why: str = ""  #: the known reason the model disagrees (shown when off by > 25 %)


class _HbmFile(Frozen):
    points: tuple[HbmPoint, ...]


def hbm_points(path: str | Path | None = None) -> tuple[HbmPoint, ...]:
    """The points of ``mappings/measurements/hbm.yaml`` (or ``path``)."""
    p = Path(path) if path else MEASUREMENTS / "hbm.yaml"
    return validate_data(_HbmFile, read_data(p), p).points


def model_gbps(point: HbmPoint) -> float:
    """The model's GB/s for ``point``'s pattern, on its board with its port, over the point's
    pseudo-channels (all of the board's unless it names fewer)."""
    hw = load_hw(point.board)
    if point.channels is not None and point.channels > hw.hbm.channels:
        raise ConfigError(
            f"HBM point {point.name!r}: channels {point.channels} (allowed: 1 to the"
            f" {hw.hbm.channels} of preset {hw.name})"
        )
    hbm = hw.hbm.model_copy(update={"port_bits": point.port_bits, "port_mhz": point.port_mhz})
    every = hbm_stream_gbps(
        hw.model_copy(update={"hbm": hbm}), point.run_bytes, new_row=point.new_row
    )
    return every * (point.channels or hw.hbm.channels) / hw.hbm.channels


class FlightLlmFigure(Frozen):
    """One published FlightLLM result and the hwflow case that replicates it."""

    name: str
    hw: str
    plan: str
    prefill: int = Field(gt=0)
    decode: int = Field(gt=0)
    metric: Literal["decode_tokens_per_s", "ttft_ms", "decode_ms"]
    #: decode_ms: the context (tokens in the cache after the step) of the decode step timed;
    #: one of the case's, prefill + 1 .. prefill + decode
    context: int | None = Field(default=None, gt=0)
    value: float = Field(gt=0)
    kind: Literal["measured", "profiler"]
    source: str
    unsure: str = ""
    why: str = ""


class _FlightLlmFile(Frozen):
    figures: tuple[FlightLlmFigure, ...]


def flightllm_figures(path: str | Path | None = None) -> tuple[FlightLlmFigure, ...]:
    """The figures of ``mappings/measurements/flightllm.yaml`` (or ``path``)."""
    p = Path(path) if path else MEASUREMENTS / "flightllm.yaml"
    figs = validate_data(_FlightLlmFile, read_data(p), p).figures
    for i, f in enumerate(figs):
        lo, hi = f.prefill + 1, f.prefill + f.decode
        if f.metric == "decode_ms" and not (f.context is not None and lo <= f.context <= hi):
            raise ConfigError(
                f"{p}: figures.{i}: decode_ms needs a context of the case (allowed: {lo} to {hi},"
                f" got {f.context})"
            )
        if f.metric != "decode_ms" and f.context is not None:
            raise ConfigError(f"{p}: figures.{i}: context is for metric decode_ms only")
    return figs


def _check_gpu(gpu: str, precision: str, where: str) -> None:
    """ConfigError unless ``gpu`` is in ``mappings/gpus.yaml`` and ``precision`` is known."""
    names = [g.name for g in load_gpus()]
    if gpu not in names:
        raise ConfigError(f"{where}: gpu {gpu!r} (known: {', '.join(names)})")
    if precision not in PRECISIONS:
        raise ConfigError(f"{where}: precision {precision!r} (known: {', '.join(PRECISIONS)})")


class GpuFigure(Frozen):
    """One published GPU result and the GPU baseline case that stands for it."""

    name: str
    gpu: str  #: a GPU of ``mappings/gpus.yaml``
    precision: str  #: a key of :data:`hwflow.analysis.gpus.PRECISIONS`
    model: str
    prefill: int = Field(gt=0)
    decode: int = Field(gt=0)
    metric: Literal["decode_tokens_per_s"]
    value: float = Field(gt=0)
    kind: Literal["measured"]
    source: str
    unsure: str = ""
    why: str = ""


class _GpuFile(Frozen):
    figures: tuple[GpuFigure, ...]


def gpu_figures(path: str | Path | None = None) -> tuple[GpuFigure, ...]:
    """The figures of ``mappings/measurements/gpu.yaml`` (or ``path``); ConfigError naming the
    file for an unknown GPU or precision."""
    p = Path(path) if path else MEASUREMENTS / "gpu.yaml"
    figs = validate_data(_GpuFile, read_data(p), p).figures
    for i, f in enumerate(figs):
        _check_gpu(f.gpu, f.precision, f"{p}: figures.{i}")
    return figs


class ClaimFigure(Frozen):
    """One published FPGA-over-GPU ratio and the hwflow cases of its two sides."""

    name: str
    metric: Literal["tokens_per_j_ratio", "decode_tokens_per_s_ratio"]
    hw: str
    plan: str
    prefill: int = Field(gt=0)
    decode: int = Field(gt=0)
    gpu: str
    precision: str
    value: float = Field(gt=0)
    kind: Literal["claim"]
    profiler: bool  #: the FPGA side is FlightLLM's profiler (every instruction time / 3.2)
    source: str
    unsure: str = ""
    why: str = ""


class _ClaimFile(Frozen):
    figures: tuple[ClaimFigure, ...]


def claim_figures(path: str | Path | None = None) -> tuple[ClaimFigure, ...]:
    """The figures of ``mappings/measurements/claims.yaml`` (or ``path``)."""
    p = Path(path) if path else MEASUREMENTS / "claims.yaml"
    figs = validate_data(_ClaimFile, read_data(p), p).figures
    for i, f in enumerate(figs):
        _check_gpu(f.gpu, f.precision, f"{p}: figures.{i}")
    return figs
