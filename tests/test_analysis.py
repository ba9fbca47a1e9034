"""Sweeps (grid files, invalid points, on-disk cache), plots from a results table, GPU
baselines and the perf CLI."""

from __future__ import annotations

import csv
import json

import pytest

from hwflow.analysis import sweep as sw
from hwflow.analysis.gpus import estimate, load_gpus
from hwflow.analysis.plots import pareto, plot_results, read_results
from hwflow.cli import main
from hwflow.config import load_hw
from hwflow.errors import ConfigError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HWFLOW_CACHE", str(tmp_path / "cache"))


def grid(tmp_path, text: str):
    p = tmp_path / "grid.yaml"
    p.write_text(text)
    return p


SMALL = """
model: tiny-llama
presets: [tiny]
hw: {mv.chains: [2, 600]}
plans: [flightllm]
plan_axes: {sparsity: ["4:16", "3:16"]}
lengths: [[16, 20]]
"""


def test_grid_points_and_invalid_points_are_rows(tmp_path):
    g = sw.load_grid(grid(tmp_path, SMALL))
    assert len(g.points) == 4
    rows = sw.run_sweep(g, tmp_path / "c", workers=1)
    by = {(r["hw.mv.chains"], r["plan.sparsity"]): r for r in rows}
    assert by[(2, "4:16")]["status"] == "ok" and by[(2, "4:16")]["tokens_per_j"] > 0
    assert by[(600, "4:16")]["status"] == "invalid"
    assert "DSPs but board xcu280 has 9024" in by[(600, "4:16")]["reason"]
    assert by[(2, "3:16")]["status"] == "invalid"
    assert "does not support 3:16 sparsity" in by[(2, "3:16")]["reason"]


def test_cache_recomputes_nothing_it_has(tmp_path, monkeypatch):
    g = sw.load_grid(grid(tmp_path, SMALL))
    first = sw.run_sweep(sw.Grid(g.points[:1]), tmp_path / "c", workers=1)  # "interrupted"
    calls = []
    real = sw.run_point
    monkeypatch.setattr(sw, "run_point", lambda p: calls.append(p) or real(p))
    rows = sw.run_sweep(g, tmp_path / "c", workers=1)
    # the 600-chain presets do not validate: rows without a simulation, never cached
    assert calls == [g.points[1]]
    assert rows[:1] == first and [r["status"] for r in rows[2:]] == ["invalid"] * 2
    calls.clear()
    assert sw.run_sweep(g, tmp_path / "c", workers=1) == rows and calls == []


def test_parallel_sweep_matches_serial(tmp_path):
    g = sw.load_grid(grid(tmp_path, SMALL))
    a = sw.run_sweep(g, tmp_path / "a", workers=1)
    b = sw.run_sweep(g, tmp_path / "b", workers=2)
    strip = [{k: v for k, v in r.items() if k != "wall_s"} for r in a]
    assert strip == [{k: v for k, v in r.items() if k != "wall_s"} for r in b]


@pytest.mark.parametrize(
    ("text", "msg"),
    [
        ("hw: {mv.chainz: [1]}", "unknown preset parameter 'mv.chainz' (mv has: chain_length"),
        ("hw: {warp: [1]}", "unknown preset parameter 'warp'"),
        ("colour: red", "unknown grid keys ['colour']"),
        ("lengths: [[1, 2, 3]]", "lengths entry [1, 2, 3] is not [prefill, decode]"),
        ("presets: [nope]", "hardware preset 'nope' not found"),
        ("mode: slow", "mode 'slow' unknown"),
        ("[1, 2", "malformed YAML"),
        ("plan_axes: {colour: [1]}", "plan_axes takes 'bits' and/or 'sparsity'"),
    ],
)
def test_bad_grids(tmp_path, text, msg):
    with pytest.raises(ConfigError) as e:
        sw.load_grid(grid(tmp_path, text))
    assert msg in str(e.value)


def test_apply_hw_marks_the_source():
    hw = sw.apply_hw(load_hw("u280"), [("hbm.channels", 16), ("clock_mhz", 200)])
    assert hw.hbm.channels == 16 and hw.clock_mhz == 200
    assert hw.hbm.sources["channels"] == "sweep point: channels = 16"
    with pytest.raises(ConfigError, match=r"hbm\.channels: Input should be greater than 0"):
        sw.apply_hw(load_hw("u280"), [("hbm.channels", 0)])


def test_pareto_front():
    pts = [(1, 5), (2, 4), (3, 1), (2, 2), (0.5, 6), (3, 0.5)]
    assert pareto(pts) == [4, 0, 1, 2]


def test_gpu_estimates_are_sourced():
    gpus = {g.name: g for g in load_gpus()}
    assert gpus["V100S"].bandwidth_gbps == 1134 and "datasheet" in gpus["V100S"].sources["power_w"]
    e = estimate(gpus["H100-SXM"], 3.35e9)
    assert e.tokens_per_s == pytest.approx(1000.0) and e.tokens_per_j == pytest.approx(1000 / 700)


def test_cli_sweep_plot_sim(tmp_path, capsys):
    g = grid(tmp_path, SMALL)
    out = tmp_path / "r.csv"
    assert main(["sweep", str(g), "-o", str(out), "--workers", "1"]) == 0
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok", "invalid"}
    assert main(["plot", str(out), "-o", str(tmp_path / "plots")]) == 0
    names = {p.name for p in (tmp_path / "plots").iterdir()}
    assert {"efficiency.png", "efficiency.svg", "latency.png", "sparsity.svg"} <= names
    capsys.readouterr()
    assert (
        main(
            [
                "sim",
                "--model",
                "tiny-llama",
                "--hw",
                "tiny",
                "--prefill",
                "8",
                "--decode",
                "8",
                "--json",
                "--workers",
                "1",
                "--trace",
                str(tmp_path / "t.json"),
            ]
        )
        == 0
    )
    s = json.loads(capsys.readouterr().out)
    assert s["decode"] == 8 and s["tokens_per_j"] > 0
    assert json.loads((tmp_path / "t.json").read_text())["traceEvents"]
    assert (
        main(
            [
                "sim",
                "--model",
                "tiny-llama",
                "--hw",
                "tiny",
                "--prefill",
                "8",
                "--decode",
                "8",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    assert "time to first token" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["sim", "--model", "tiny-llama", "--hw", "nope"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("hwflow sim: error: hardware preset 'nope' not found")
        and err.count("\n") == 1
    )
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert main(["plot", str(bad), "-o", str(tmp_path / "p")]) == 2
    assert "not a results table" in capsys.readouterr().err


def test_plots_read_results_only(tmp_path):
    rows = [
        {
            "status": "ok",
            "tokens_per_s": 10.0,
            "tokens_per_j": 1.0,
            "decode_bytes_per_token": 1e9,
            "prefill": 1.0,
            "decode": 4.0,
            "ms_per_token_min": 1.0,
            "ms_per_token_avg": 2.0,
            "ms_per_token_max": 3.0,
            "hw": "x",
            "plan": "y",
            "plan.bits": 4.0,
        },
        {"status": "invalid", "reason": "no"},
    ]
    files = plot_results(rows, tmp_path)
    assert {f.name for f in files} >= {"efficiency.png", "bits.png", "latency.svg"}
    p = tmp_path / "r.csv"
    with p.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}))
        w.writeheader()
        w.writerows(rows)
    assert read_results(p)[0]["tokens_per_j"] == 1.0


def test_perf_report_for_the_main_job(tmp_path):
    from hwflow.analysis.report import perf_report

    files = perf_report(
        tmp_path, model="tiny-llama", presets=("tiny",), prefill=16, decode=32, workers=1
    )
    names = {f.name for f in files}
    assert {"results.csv", "summary.json", "efficiency.png", "latency.svg"} <= names
    rows = json.loads((tmp_path / "perf" / "summary.json").read_text())
    assert rows[0]["hw"] == "tiny" and rows[0]["decode"] == 32


def _sweep_rows() -> list[dict]:
    """Two presets x INT4/INT8 x 4:16/16:16, made-up figures (plots only read them)."""
    rows = []
    for preset in ("pa", "pb"):
        for bits in (4.0, 8.0):
            for sp in ("4:16", "16:16", "8:16"):
                rows.append(
                    {
                        "status": "ok",
                        "point_preset": preset,
                        "hw": preset,
                        "plan": f"p+bits={bits:g}+sparsity={sp}",
                        "model": "m",
                        "plan.bits": bits,
                        "plan.sparsity": sp,
                        "tokens_per_s": 10.0 + bits,
                        "tokens_per_j": 1.0 + bits / 10 + len(rows) / 100,
                        "prefill": 128.0,
                        "decode": 512.0,
                    }
                )
    return rows


def test_plots_distinguish_presets_and_use_discrete_axes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hwflow.analysis import plots

    rows = _sweep_rows()
    style = plots._Style(rows)
    assert len(set(style.colour.values())) == 2  # one colour per preset
    assert len(set(style.marker.values())) == 6  # one marker per (bits, N:M) plan
    fig = plots._bits(plt, rows, style)
    ax = fig.axes[0]
    assert list(ax.get_xticks()) == [4.0, 8.0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["INT4", "INT8"]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [f"{p}, {sp}" for p in ("pa", "pb") for sp in ("4:16", "8:16", "dense")]
    assert "m, prefill 128, decode 512" in ax.get_title()
    colours = {ln.get_label().split(",")[0]: ln.get_color() for ln in ax.get_lines()}
    assert colours["pa"] != colours["pb"]
    plt.close(fig)
    fig = plots._efficiency(plt, rows, style)
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"INT4 4:16", "INT8 dense"} <= texts  # every point labelled, not only the front
    plt.close(fig)
