"""Sweep results and cache (issue 13): the columns the plots read, and a cache that recomputes
after a preset or energy value changes. Uses public behaviour only (files in, rows out)."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from hwflow.analysis import sweep as sw
from hwflow.cli import main
from hwflow.config import MAPPINGS


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HWFLOW_CACHE", str(tmp_path / "cache"))


def _grid(tmp_path, preset: str, lengths: str = "[[16, 20]]"):
    p = tmp_path / "grid.yaml"
    p.write_text(
        f"model: tiny-llama\npresets: [{preset}]\nplans: [flightllm]\n"
        f"plan_axes: {{bits: [4], sparsity: ['4:16']}}\nlengths: {lengths}\n"
    )
    return sw.load_grid(p)


def test_results_carry_the_columns_the_plots_read(tmp_path):
    """``hwflow sweep`` CSV: every column :mod:`hwflow.analysis.plots` reads is there, and the
    latency ``curve`` samples every 16th decode step plus the last: prefill 16, decode 20 means
    decode contexts 17..36, sampled at 17, 33 and 36."""
    g = tmp_path / "g.yaml"
    g.write_text(
        "model: tiny-llama\npresets: [tiny]\nplans: [flightllm]\n"
        "plan_axes: {bits: [4], sparsity: ['4:16']}\nlengths: [[16, 20]]\n"
    )
    out = tmp_path / "r.csv"
    assert main(["sweep", str(g), "-o", str(out), "--workers", "1"]) == 0
    with out.open() as f:
        (row,) = list(csv.DictReader(f))
    needed = {
        "status", "hw", "plan", "prefill", "decode", "tokens_per_s", "tokens_per_j",
        "decode_bytes_per_token", "ms_per_token_min", "ms_per_token_avg", "ms_per_token_max",
        "plan.bits", "plan.sparsity", "curve",
    }  # fmt: skip
    assert needed <= set(row), sorted(needed - set(row))
    assert row["status"] == "ok" and row["plan.bits"] == "4" and row["plan.sparsity"] == "4:16"
    curve = json.loads(row["curve"])
    assert [c for c, _ in curve] == [17, 33, 36]
    lo, hi = float(row["ms_per_token_min"]), float(row["ms_per_token_max"])
    assert all(lo - 1e-6 <= ms <= hi + 1e-6 and ms > 0 for _, ms in curve)


def _counting(monkeypatch):
    calls: list = []
    real = sw.run_point
    monkeypatch.setattr(sw, "run_point", lambda p: calls.append(p) or real(p))
    return calls


def test_cache_recomputes_after_a_preset_value_changes(tmp_path, monkeypatch):
    """A preset file edited in place (same path, same name) must not reuse the old rows:
    halving the clock of a copy of ``tiny`` recomputes the point, and its time per token grows."""
    data = yaml.safe_load((MAPPINGS / "hw" / "tiny.yaml").read_text())
    preset = tmp_path / "mine.yaml"
    preset.write_text(yaml.safe_dump(data))
    cache = tmp_path / "c"
    first = sw.run_sweep(_grid(tmp_path, str(preset)), cache, workers=1)
    calls = _counting(monkeypatch)
    assert sw.run_sweep(_grid(tmp_path, str(preset)), cache, workers=1) == first
    assert calls == []  # unchanged: taken from the cache
    data["clock_mhz"] = data["clock_mhz"] // 2
    preset.write_text(yaml.safe_dump(data))
    second = sw.run_sweep(_grid(tmp_path, str(preset)), cache, workers=1)
    assert len(calls) == 1
    assert second[0]["clock_mhz"] == first[0]["clock_mhz"] / 2
    assert second[0]["ms_per_token_avg"] > first[0]["ms_per_token_avg"]


def test_cache_recomputes_after_an_energy_value_changes(tmp_path, monkeypatch):
    """The preset names an energy table file; editing a number in that file in place must
    recompute the point (doubling static power raises the energy per token)."""
    table = yaml.safe_load((MAPPINGS / "energy" / "xcu280.yaml").read_text())
    tpath = tmp_path / "table.yaml"
    tpath.write_text(yaml.safe_dump(table))
    data = yaml.safe_load((MAPPINGS / "hw" / "tiny.yaml").read_text())
    data["energy_table"] = str(tpath)
    preset = tmp_path / "mine.yaml"
    preset.write_text(yaml.safe_dump(data))
    cache = tmp_path / "c"
    first = sw.run_sweep(_grid(tmp_path, str(preset)), cache, workers=1)
    calls = _counting(monkeypatch)
    table["static_w"] = 2 * table["static_w"]
    tpath.write_text(yaml.safe_dump(table))
    second = sw.run_sweep(_grid(tmp_path, str(preset)), cache, workers=1)
    assert len(calls) == 1, "a changed energy table reused a cached row"
    assert second[0]["tokens_per_j"] < first[0]["tokens_per_j"]
