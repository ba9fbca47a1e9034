"""Published figures the models are compared with, read from ``mappings/measurements``.

``hbm.yaml``: HBM bandwidth points (board, access pattern, the setup's port, GB/s, source).
The model is evaluated at a point's own port and pattern by :func:`model_gbps`; the points are
never inputs of the model (the preset fields are).

``flightllm.yaml``: FlightLLM's published results with the hwflow case that replicates each
(:func:`flightllm_figures`); they are outputs to compare with, never inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from hwflow.config import MAPPINGS, Frozen, load_hw, read_data, validate_data
from hwflow.costs import hbm_stream_gbps

__all__ = ["FlightLlmFigure", "HbmPoint", "flightllm_figures", "hbm_points", "model_gbps"]


class HbmPoint(Frozen):
    """One published HBM bandwidth figure."""

    name: str
    board: str  #: the hwflow preset of the board (its HBM device fields are used)
    run_bytes: int = Field(gt=0)
    new_row: bool
    port_bits: int = Field(gt=0)
    port_mhz: float = Field(gt=0)
    gbps: float = Field(gt=0)
    kind: Literal["measured", "vendor"]
    source: str


class _HbmFile(Frozen):
    points: tuple[HbmPoint, ...]


def hbm_points(path: str | Path | None = None) -> tuple[HbmPoint, ...]:
    """The points of ``mappings/measurements/hbm.yaml`` (or ``path``)."""
    p = Path(path) if path else MAPPINGS / "measurements" / "hbm.yaml"
    return validate_data(_HbmFile, read_data(p), p).points


def model_gbps(point: HbmPoint) -> float:
    """The model's aggregate GB/s for ``point``'s pattern, on its board with its port."""
    hw = load_hw(point.board)
    hbm = hw.hbm.model_copy(update={"port_bits": point.port_bits, "port_mhz": point.port_mhz})
    return hbm_stream_gbps(
        hw.model_copy(update={"hbm": hbm}), point.run_bytes, new_row=point.new_row
    )


class FlightLlmFigure(Frozen):
    """One published FlightLLM result and the hwflow case that replicates it."""

    name: str
    hw: str
    plan: str
    prefill: int = Field(gt=0)
    decode: int = Field(gt=0)
    metric: Literal["decode_tokens_per_s", "ttft_ms"]
    value: float = Field(gt=0)
    kind: Literal["measured", "profiler"]
    source: str


class _FlightLlmFile(Frozen):
    figures: tuple[FlightLlmFigure, ...]


def flightllm_figures(path: str | Path | None = None) -> tuple[FlightLlmFigure, ...]:
    """The figures of ``mappings/measurements/flightllm.yaml`` (or ``path``)."""
    p = Path(path) if path else MAPPINGS / "measurements" / "flightllm.yaml"
    return validate_data(_FlightLlmFile, read_data(p), p).figures
