"""The cycle model's part of the main job: simulate the default case on hwflow's design point
and FlightLLM's replica of the same board, write the figures and the energy-efficiency plots.

``hwflow demo`` (the README's ``make run``) calls :func:`perf_report`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hwflow.analysis.plots import plot_results, read_results
from hwflow.analysis.sweep import write_csv
from hwflow.config import load_hw, load_model, load_plan
from hwflow.files import atomic_write

__all__ = ["DEFAULT_CASE", "perf_report"]

#: model, presets, plan, prefill, decode of the default case
DEFAULT_CASE: dict[str, Any] = {
    "model": "llama2-7b",
    "presets": ("u280", "flightllm-u280"),
    "plan": "flightllm",
    "prefill": 128,
    "decode": 512,
}


def perf_report(out: str | Path, *, workers: int = 2, **case: Any) -> list[Path]:
    """Simulate the case (``DEFAULT_CASE`` updated by ``case``) on every preset; write
    ``perf/results.csv``, ``perf/summary.json`` and the plots under ``perf/plots``."""
    from hwflow.perf.sim import simulate

    c = {**DEFAULT_CASE, **case}
    out = Path(out) / "perf"
    cfg, plan = load_model(c["model"]), load_plan(c["plan"])
    rows: list[dict[str, Any]] = []
    for name in c["presets"]:
        res = simulate(cfg, plan, load_hw(name), c["prefill"], c["decode"], workers=workers)
        row = res.summary()
        curve = res.decode_curve()
        row["curve"] = json.dumps([[x, round(ms, 6)] for x, ms in curve[::16] + curve[-1:]])
        row.update(status="ok", reason="")
        rows.append(row)
    atomic_write(out / "results.csv", write_csv(rows))
    atomic_write(out / "summary.json", json.dumps(rows, indent=2, default=str))
    return [
        out / "results.csv",
        out / "summary.json",
        *plot_results(read_results(out / "results.csv"), out / "plots"),
    ]
