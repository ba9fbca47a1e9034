"""``hwflow validate``: every published figure of ``mappings/measurements`` next to the model's
figure for the same case, computed here by running the model (never stored), with the ratio,
the source, and a verdict: within +-25 %, or outside it with the figure's own one-line
explanation (``why`` in the data file), or UNEXPLAINED.

Groups (one data file each, read by :mod:`hwflow.analysis.measurements`):

* ``hbm``: published HBM bandwidths against :func:`hwflow.costs.hbm_stream_gbps` at the point's
  port, pattern and channel count;
* ``flightllm``: FlightLLM's U280 board result and VHK158 profiler results against the replica
  presets simulated cycle by cycle (:func:`hwflow.perf.sim.simulate_cached`). For profiler
  figures the replica's figure with FlightLLM's hard-coded divisor applied is shown as a second
  ratio (:data:`~hwflow.analysis.flightllm.PROFILER_DIVISOR`), never folded into the first;
* ``gpu``: FlightLLM's GPU results against hwflow's GPU baseline (a bandwidth roofline at the
  workload's own bytes per token, :mod:`hwflow.analysis.gpus`);
* ``claims``: FlightLLM's headline FPGA/GPU ratios against the same ratio of the two models.

:func:`board_power` lists each simulated replica's modelled board power by component next to
what FlightLLM reports (:data:`REPORTED_POWER`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hwflow.analysis.flightllm import PROFILER_DIVISOR, with_profiler_divisor
from hwflow.analysis.gpus import PRECISIONS, estimate, load_gpus, workload_bytes_per_token
from hwflow.analysis.measurements import (
    MEASUREMENTS,
    FlightLlmFigure,
    claim_figures,
    flightllm_figures,
    gpu_figures,
    hbm_points,
    model_gbps,
)
from hwflow.config import load_hw, load_model, load_plan
from hwflow.errors import ConfigError

__all__ = [
    "GROUPS",
    "REPORTED_POWER",
    "TOLERANCE",
    "PowerRow",
    "Row",
    "Sims",
    "board_power",
    "gpu_case_tokens_per_s",
    "replica_figure",
    "validate",
]

#: A model figure within this relative distance of the published one agrees.
TOLERANCE = 0.25

#: The groups, in table order, with their data file in ``mappings/measurements``.
GROUPS: dict[str, str] = {
    "hbm": "hbm.yaml",
    "flightllm": "flightllm.yaml",
    "gpu": "gpu.yaml",
    "claims": "claims.yaml",
}

#: What FlightLLM publishes of its board power, for :func:`board_power`.
REPORTED_POWER = (
    "not found: no board power of FlightLLM's U280 or VHK158 is given in its artifact "
    "(github.com/FlightLLM/flightllm_test_demo), and the paper's power figures were not "
    "available to us as text; its only energy figure we could read is the 6.0x tokens/J "
    "over the V100S (claims group)"
)

#: The FlightLLM model the replicas run (the artifact's IR is LLaMA2-7B).
_FLIGHTLLM_MODEL = "llama2-7b"


@dataclass(frozen=True)
class Row:
    """One published figure and the model's figure for the same case."""

    group: str
    name: str
    unit: str
    published: float
    model: float  #: computed by running the model
    kind: str  #: measured, vendor, profiler or claim
    case: str  #: how the model's figure is obtained (preset, plan, lengths, pattern)
    source: str
    unsure: str = ""
    why: str = ""
    #: profiler figures: the model's figure with FlightLLM's divisor applied (else None)
    model_profiler: float | None = None

    @property
    def ratio(self) -> float:
        return self.model / self.published

    @property
    def ratio_profiler(self) -> float | None:
        return None if self.model_profiler is None else self.model_profiler / self.published

    @property
    def within(self) -> bool:
        return abs(self.ratio - 1) <= TOLERANCE

    @property
    def verdict(self) -> str:
        """'within 25 %', 'explained' (outside, with the figure's own reason) or
        'UNEXPLAINED'."""
        if self.within:
            return f"within {TOLERANCE:.0%}"
        return "explained" if self.why else "UNEXPLAINED"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(ratio=self.ratio, ratio_profiler=self.ratio_profiler)
        d.update(within=self.within, verdict=self.verdict)
        return d


class Sims:
    """Simulated FlightLLM replica cases, each run once (and cached across runs by
    :func:`hwflow.perf.sim.simulate_cached`)."""

    def __init__(self, workers: int = 1, note: Callable[[str], None] | None = None) -> None:
        self.workers, self.note = workers, note
        self.results: dict[tuple[str, str, int, int], Any] = {}

    def __call__(self, hw: str, plan: str, prefill: int, decode: int) -> Any:
        """The :class:`~hwflow.perf.sim.SimResult` of LLaMA2-7B on ``hw`` with ``plan``."""
        from hwflow.perf.sim import simulate_cached

        key = (hw, plan, prefill, decode)
        if key not in self.results:
            if self.note:
                self.note(f"simulating {hw} / {plan}: prefill {prefill}, decode {decode}")
            cfg = load_model(_FLIGHTLLM_MODEL)
            res, _ = simulate_cached(
                cfg, load_plan(plan), load_hw(hw), prefill, decode, workers=self.workers
            )
            self.results[key] = res
        return self.results[key]


def gpu_case_tokens_per_s(gpu: str, model: str, precision: str, prefill: int, decode: int) -> Any:
    """hwflow's GPU baseline (:class:`~hwflow.analysis.gpus.GpuEstimate`) for ``decode``
    tokens after a ``prefill`` prompt: the roofline at the mean bytes of the decode steps (their
    contexts run prefill+1 .. prefill+decode and bytes grow linearly with context, so decode
    tokens / summed roofline time = bandwidth / bytes at the mean context)."""
    g = {x.name: x for x in load_gpus()}[gpu]
    wb, kvb = PRECISIONS[precision]
    ctx = prefill + (decode + 1) / 2
    return estimate(g, workload_bytes_per_token(load_model(model), wb, kvb, ctx))


def _hbm_rows(path: Path) -> list[Row]:
    out = []
    for p in hbm_points(path):
        chans = f"{p.channels} channel(s)" if p.channels else "all channels"
        pattern = f"{p.run_bytes} B runs{', new row each' if p.new_row else ''}"
        out.append(
            Row(
                group="hbm",
                name=p.name,
                unit="GB/s",
                published=p.gbps,
                model=model_gbps(p),
                kind=p.kind,
                case=f"{p.board} HBM, {chans}, {pattern}, port {p.port_bits} b x {p.port_mhz:g} MHz",
                source=p.source,
                unsure=p.unsure,
                why=p.why,
            )
        )
    return out


def _case(hw: str, plan: str, prefill: int, decode: int) -> str:
    return f"hwflow sim --hw {hw} --plan {plan} --prefill {prefill} --decode {decode}"


def replica_figure(fig: FlightLlmFigure, result: Any) -> tuple[str, float, float]:
    """(unit, the replica's figure, that figure as FlightLLM's profiler would give it) of
    ``fig``'s metric in the simulated ``result`` of its case: every instruction time divided
    by :data:`~hwflow.analysis.flightllm.PROFILER_DIVISOR`, so a rate multiplied by it."""
    if fig.metric == "decode_tokens_per_s":
        model = result.decode_tokens_per_s
        return "tokens/s", model, with_profiler_divisor(model)
    if fig.metric == "ttft_ms":
        model = result.ttft_s * 1e3
    else:  # decode_ms: the step whose context is fig.context
        _, model = result.decode_curve()[fig.context - fig.prefill - 1]
    return "ms", model, model / PROFILER_DIVISOR


def _flightllm_rows(path: Path, sims: Sims) -> list[Row]:
    out = []
    for f in flightllm_figures(path):
        r = sims(f.hw, f.plan, f.prefill, f.decode)
        unit, model, scaled = replica_figure(f, r)
        out.append(
            Row(
                group="flightllm",
                name=f.name,
                unit=unit,
                published=f.value,
                model=model,
                kind=f.kind,
                case=_case(f.hw, f.plan, f.prefill, f.decode),
                source=f.source,
                unsure=f.unsure,
                why=f.why,
                model_profiler=scaled if f.kind == "profiler" else None,
            )
        )
    return out


def _gpu_rows(path: Path) -> list[Row]:
    out = []
    for f in gpu_figures(path):
        e = gpu_case_tokens_per_s(f.gpu, f.model, f.precision, f.prefill, f.decode)
        case = f"{f.gpu} {f.precision} roofline, {f.model}, prefill {f.prefill} decode {f.decode}"
        out.append(
            Row(
                group="gpu",
                name=f.name,
                unit="tokens/s",
                published=f.value,
                model=e.tokens_per_s,
                kind=f.kind,
                case=case,
                source=f.source,
                unsure=f.unsure,
                why=f.why,
            )
        )
    return out


def _claim_rows(path: Path, sims: Sims) -> list[Row]:
    out = []
    for f in claim_figures(path):
        r = sims(f.hw, f.plan, f.prefill, f.decode)
        g = gpu_case_tokens_per_s(f.gpu, _FLIGHTLLM_MODEL, f.precision, f.prefill, f.decode)
        if f.metric == "tokens_per_j_ratio":
            model, scaled = r.tokens_per_j / g.tokens_per_j, None
        else:
            model = r.decode_tokens_per_s / g.tokens_per_s
            scaled = with_profiler_divisor(r.decode_tokens_per_s) / g.tokens_per_s
        out.append(
            Row(
                group="claims",
                name=f.name,
                unit="x",
                published=f.value,
                model=model,
                kind=f.kind,
                case=f"{_case(f.hw, f.plan, f.prefill, f.decode)} over {f.gpu} {f.precision}",
                source=f.source,
                unsure=f.unsure,
                why=f.why,
                model_profiler=scaled if f.profiler else None,
            )
        )
    return out


def validate(
    groups: Sequence[str] = tuple(GROUPS),
    folder: str | Path | None = None,
    sims: Sims | None = None,
) -> list[Row]:
    """The rows of ``groups`` from the measurement files in ``folder`` (default: the shipped
    ``mappings/measurements``). ConfigError for an unknown group, a folder that is not one, or
    a group whose file is missing there."""
    bad = [g for g in groups if g not in GROUPS]
    if bad:
        raise ConfigError(f"unknown group {bad[0]!r} (allowed: {', '.join(GROUPS)})")
    base = Path(folder) if folder is not None else MEASUREMENTS
    if not base.is_dir():
        raise ConfigError(
            f"{base}: not a folder of measurement files ({', '.join(GROUPS.values())})"
        )
    for g in groups:
        if not (base / GROUPS[g]).is_file():
            raise ConfigError(f"{base}: no {GROUPS[g]} (the data of group {g!r})")
    sims = sims or Sims()
    make = {
        "hbm": _hbm_rows,
        "flightllm": lambda p: _flightllm_rows(p, sims),
        "gpu": _gpu_rows,
        "claims": lambda p: _claim_rows(p, sims),
    }
    return [row for g in GROUPS if g in groups for row in make[g](base / GROUPS[g])]


@dataclass(frozen=True)
class PowerRow:
    """The modelled board power of one simulated replica case, by energy component."""

    case: str
    average_w: float
    static_w: float
    dynamic_w: dict[str, float]  #: average W of every component but static
    reported: str  #: what FlightLLM publishes of this power

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def board_power(sims: Sims) -> list[PowerRow]:
    """The modelled board power of every case ``sims`` ran, next to :data:`REPORTED_POWER`."""
    out = []
    for (hw, plan, prefill, decode), r in sorted(sims.results.items()):
        s = r.energy.seconds
        dyn = {k: j / s for k, j in r.energy.joules.items() if k != "static"}
        out.append(
            PowerRow(
                case=_case(hw, plan, prefill, decode),
                average_w=r.average_w,
                static_w=r.energy.joules["static"] / s,
                dynamic_w=dyn,
                reported=REPORTED_POWER,
            )
        )
    return out
