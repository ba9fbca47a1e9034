"""``hwflow validate`` and the energy breakdown plot (issue 9). Expectations are the published
figures of the data files and the model's figures re-derived by hand (HBM, GPU) or by running
the simulator directly (FlightLLM replica); bad input ends in one line and exit code 2."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from hwflow.analysis.energy_plot import COMPONENTS, breakdown, draw_energy
from hwflow.analysis.measurements import MEASUREMENTS
from hwflow.analysis.plots import plot_results
from hwflow.analysis.validate import TOLERANCE, validate
from hwflow.cli import main
from hwflow.config import load_hw, load_model, load_plan
from hwflow.perf.sim import simulate

ROOT = Path(__file__).resolve().parents[1]
LLAMA_LINEAR_PARAMS = 6_607_077_376  # 32 x (4 x 4096^2 + 3 x 4096 x 11008) + 32000 x 4096


def _published(file: str, name: str) -> float:
    """A published value read straight from the shipped data file."""
    data = yaml.safe_load((MEASUREMENTS / file).read_text())
    items = data.get("points") or data["figures"]
    item = next(x for x in items if x["name"] == name)
    return float(item.get("gbps", item.get("value")))


def _row(rows, name):
    return next(r for r in rows if r.name == name)


def test_hbm_rows_against_hand_derivations():
    rows = validate(["hbm"])
    # one pseudo-channel, long sequential runs of 512 B bursts: device-bound, 14.375 GB/s less
    # the refresh share tRFC / tREFI = 260 / 3900 (u280 preset) = 13.4167 GB/s
    name = "Vitis HBM tutorial, one port to one pseudo-channel, sequential, 64 B transactions"
    seq = _row(rows, name)
    assert seq.model == pytest.approx(14.375 * (1 - 260 / 3900), rel=1e-9)
    assert seq.published == 13.0996 == _published("hbm.yaml", name)
    assert seq.ratio == pytest.approx(13.416_666_7 / 13.0996, rel=1e-6)  # 1.024
    assert seq.verdict == "within 25%"
    # random 64 B runs, a new row each: the burst is latency-bound (107 ns / 16 in flight =
    # 6.6875 ns > port 2 beats / 450 MHz = 4.44 ns > device 64 B / 13.4167 GB/s = 4.77 ns),
    # plus the 31 ns row miss: 64 B / 37.6875 ns = 1.698 GB/s against 4.754 measured
    name = "Vitis HBM tutorial, one port to one pseudo-channel, random 64 B transactions"
    rnd = _row(rows, name)
    assert rnd.model == pytest.approx(64 / (107 / 16 + 31), rel=1e-9)
    assert rnd.ratio == pytest.approx(1.6982 / 4.75379, rel=1e-4)
    assert not rnd.within and rnd.verdict == "explained" and "row miss" in rnd.why
    # Shuhai's 425 GB/s over all 32 channels: 32 x 13.4167 = 429.33 GB/s
    shuhai = _row(rows, "Shuhai U280, all 32 pseudo-channels, sequential reads")
    assert shuhai.model == pytest.approx(32 * 14.375 * (1 - 260 / 3900), rel=1e-9)


def test_gpu_row_against_hand_derivation():
    rows = validate(["gpu"])
    name = "GPU-opt (vLLM, FP16) decode, prefill 128 / decode 512"
    r = _row(rows, name)
    # decode contexts 129..640, mean 384.5; FP16 weights 2 B each, FP16 K and V of 32 layers x
    # 4096 per token: 13,214,154,752 + 2 x 32 x 4096 x 2 x 384.5 = 13,415,743,488 B per token
    nbytes = LLAMA_LINEAR_PARAMS * 2 + 2 * 32 * 4096 * 2 * 384.5
    assert nbytes == 13_415_743_488
    assert r.model == pytest.approx(2039e9 / nbytes, rel=1e-12)  # A100-80GB: 151.98 tokens/s
    assert r.published == _published("gpu.yaml", name) == 89.4
    assert r.ratio == pytest.approx(151.98 / 89.4, rel=1e-4)
    assert r.verdict == "explained"  # a roofline is an upper bound, and the row says so


def test_shipped_table_has_enough_cited_figures():
    counts = {}
    for f in MEASUREMENTS.glob("*.yaml"):
        data = yaml.safe_load(f.read_text())
        items = data.get("points") or data.get("figures")
        counts[f.name] = len(items)
        for x in items:
            assert x["source"].strip(), (f.name, x["name"])
    assert sum(counts.values()) >= 10, counts
    rows = validate(["hbm", "gpu"])  # the groups that need no simulation
    assert all(r.verdict != "UNEXPLAINED" for r in rows), [r.name for r in rows]
    assert all(r.within == (abs(r.model / r.published - 1) <= TOLERANCE) for r in rows)


def test_measurement_citations_point_inside_the_repo():
    sources = (ROOT / "docs" / "SOURCES.md").read_text()
    anchors = set(re.findall(r'<a id="([\w-]+)"></a>', sources))
    cited = set()
    for f in MEASUREMENTS.glob("*.yaml"):
        text = f.read_text()
        assert "REFERENCE.md" not in text, f
        cited |= set(re.findall(r"docs/SOURCES\.md#([\w-]+)", text))
    assert cited and cited <= anchors, cited - anchors


def _folder(tmp_path: Path, files: dict[str, object]) -> Path:
    d = tmp_path / "m"
    d.mkdir(exist_ok=True)
    for name, data in files.items():
        (d / name).write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return d


_CASE = {"hw": "flightllm-u280", "plan": "flightllm-ir", "prefill": 128, "decode": 16}


@pytest.mark.slow
def test_flightllm_and_claim_rows_against_a_hand_run_of_the_model(tmp_path):
    figs = [
        {"name": "tps", "metric": "decode_tokens_per_s", "value": 50.0, "kind": "measured"},
        {"name": "ttft", "metric": "ttft_ms", "value": 400.0, "kind": "profiler", "why": "x"},
        {"name": "step", "metric": "decode_ms", "context": 144, "value": 9.0, "kind": "profiler"},
    ]
    claim = {
        "name": "eff",
        "metric": "tokens_per_j_ratio",
        "gpu": "V100S",
        "precision": "FP16",
        "value": 6.0,
        "kind": "claim",
        "profiler": False,
        "source": "s",
    }
    d = _folder(
        tmp_path,
        {
            "flightllm.yaml": {"figures": [{**_CASE, **f, "source": "s"} for f in figs]},
            "claims.yaml": {"figures": [{**_CASE, **claim}]},
        },
    )
    rows = validate(["flightllm", "claims"], d)
    cfg = load_model("llama2-7b")
    r = simulate(cfg, load_plan("flightllm-ir"), load_hw("flightllm-u280"), 128, 16)
    tps, ttft, step, eff = rows
    assert tps.model == pytest.approx(r.decode_tokens_per_s, rel=1e-12)
    assert tps.ratio == pytest.approx(r.decode_tokens_per_s / 50.0, rel=1e-12)
    assert tps.model_profiler is None  # a board measurement: no divisor column
    assert ttft.model == pytest.approx(r.ttft_s * 1e3, rel=1e-12)
    assert ttft.model_profiler == pytest.approx(r.ttft_s * 1e3 / 3.2, rel=1e-12)
    # the last of the 16 decode steps has context 128 + 16 = 144
    last_ms = r.decode_cycles[-1] / r.clock_hz * 1e3
    assert step.model == pytest.approx(last_ms, rel=1e-12)
    assert step.model_profiler == pytest.approx(last_ms / 3.2, rel=1e-12)
    # V100S at FP16 over contexts 129..144 (mean 136.5): 1134 GB/s over the bytes, / 250 W TDP
    v100s_tpj = 1134e9 / (LLAMA_LINEAR_PARAMS * 2 + 2 * 32 * 4096 * 2 * 136.5) / 250
    assert eff.model == pytest.approx(r.tokens_per_j / v100s_tpj, rel=1e-9)


def _one_line(capsys, argv, code, *needles):
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


def test_bad_input_is_one_line_exit_2(tmp_path, capsys):
    _one_line(capsys, ["validate", "--groups", "nope"], 2, "nope", "hbm")
    _one_line(capsys, ["validate", "--measurements", str(tmp_path / "no")], 2, "not a folder")
    empty = _folder(tmp_path, {})
    _one_line(capsys, ["validate", "--measurements", str(empty), "--groups", "gpu"], 2, "gpu.yaml")
    bad_yaml = _folder(tmp_path, {"hbm.yaml": "points: [\n"})
    _one_line(capsys, ["validate", "--measurements", str(bad_yaml), "--groups", "hbm"], 2, "YAML")
    gpu = yaml.safe_load((MEASUREMENTS / "gpu.yaml").read_text())
    gpu["figures"] = [{**gpu["figures"][0], "gpu": "B200"}]
    d = _folder(tmp_path, {"gpu.yaml": gpu})
    _one_line(capsys, ["validate", "--measurements", str(d), "--groups", "gpu"], 2, "B200", "V100S")
    gpu["figures"] = [{**gpu["figures"][0], "gpu": "V100S", "precision": "FP8"}]
    d = _folder(tmp_path, {"gpu.yaml": gpu})
    _one_line(capsys, ["validate", "--measurements", str(d), "--groups", "gpu"], 2, "FP8", "FP16")
    step = {**_CASE, "name": "s", "metric": "decode_ms", "value": 9.0, "kind": "profiler"}
    for ctx in (None, 128, 145):  # contexts of the case: 129 .. 144
        fig = {**step, "source": "s"} | ({"context": ctx} if ctx else {})
        d = _folder(tmp_path, {"flightllm.yaml": {"figures": [fig]}})
        argv = ["validate", "--measurements", str(d), "--groups", "flightllm"]
        _one_line(capsys, argv, 2, "allowed: 129 to 144", f"got {ctx}")
    hbm = yaml.safe_load((MEASUREMENTS / "hbm.yaml").read_text())
    hbm["points"] = [{**hbm["points"][3], "channels": 33}]
    d = _folder(tmp_path, {"hbm.yaml": hbm})
    _one_line(capsys, ["validate", "--measurements", str(d), "--groups", "hbm"], 2, "channels 33")
    hbm["points"] = [{**hbm["points"][0], "gbps": -1}]
    d = _folder(tmp_path, {"hbm.yaml": hbm})
    _one_line(capsys, ["validate", "--measurements", str(d), "--groups", "hbm"], 2, "gbps")


def test_unexplained_disagreement_exits_1(tmp_path, capsys):
    hbm = yaml.safe_load((MEASUREMENTS / "hbm.yaml").read_text())
    far = {**hbm["points"][0], "name": "far", "gbps": 100.0}  # the model gives 429 GB/s
    d = _folder(tmp_path, {"hbm.yaml": {"points": [far]}})
    assert main(["validate", "--measurements", str(d), "--groups", "hbm", "--json"]) == 1
    row = json.loads(capsys.readouterr().out)["rows"][0]
    assert row["verdict"] == "UNEXPLAINED" and row["ratio"] == pytest.approx(4.2933, rel=1e-4)
    far["why"] = "a reason"
    d = _folder(tmp_path, {"hbm.yaml": {"points": [far]}})
    assert main(["validate", "--measurements", str(d), "--groups", "hbm", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "| 1 | far | 100 GB/s | 429.3 GB/s | 4.293 | explained: a reason | S1 |" in out


def test_readme_quotes_every_published_figure():
    """The README's validate table is generated from the data files: every figure is in it."""
    readme = (ROOT / "README.md").read_text()
    start, end = readme.index("<!-- validate:start -->"), readme.index("<!-- validate:end -->")
    table = readme[start:end]
    for f in MEASUREMENTS.glob("*.yaml"):
        data = yaml.safe_load(f.read_text())
        for x in data.get("points") or data["figures"]:
            assert f"| {x['name']}" in table, x["name"]


def _energy_row(**kw):
    joules = {"static": 2.0, "hbm": 1.0, "buffers": 0.5, "mac": 0.25, "sfu": 0.125}
    joules.update(idle=0.0625, instr=0.0625)
    row = {f"energy_{k}_j": v for k, v in joules.items()}
    total = sum(joules.values())  # 4.0 J
    row.update(status="ok", energy_j=total, tokens_per_j=10 / total, tokens_per_s=5.0)
    row.update(hw="u280", plan="flightllm", model="llama2-7b", prefill=128.0, decode=512.0)
    row.update(ms_per_token_min=1.0, ms_per_token_avg=2.0, ms_per_token_max=3.0)
    return {**row, **kw}


def test_energy_breakdown_per_token_by_hand():
    b = breakdown(_energy_row())  # 10 tokens: each joule is 100 mJ per token
    assert b == {
        "static": 200.0,
        "hbm": 100.0,
        "buffers": 50.0,
        "mac": 25.0,
        "sfu": 12.5,
        "idle": 6.25,
        "instr": 6.25,
    }
    assert breakdown({"status": "ok", "tokens_per_j": 1.0}) is None  # no energy columns


def test_energy_plot_is_drawn_labelled(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    other = {"energy_static_j": 1.0, "energy_j": 3.0, "tokens_per_j": 10 / 3}
    rows = [_energy_row(), _energy_row(hw="vhk158", **other)]
    fig = draw_energy(plt, rows, lambda r: r["hw"], "llama2-7b, prefill 128, decode 512")
    whole, dyn = fig.axes[:2]
    assert len(whole.patches) == 2 * 7 and len(dyn.patches) == 2 * 6  # static only on the left
    # the vhk158 row: static 1.0 J of 3.0 J, 10 / 3 x 3 = 10 tokens: 100 mJ/token of static
    widths = sorted(p.get_width() for p in whole.patches if p.get_facecolor()[:3] == (0.6,) * 3)
    assert widths == pytest.approx([100.0, 200.0])
    assert "mJ" in whole.get_xlabel() and "llama2-7b" in fig._suptitle.get_text()
    assert [t.get_text() for t in fig.legends[0].get_texts()] == list(COMPONENTS.values())
    plt.close(fig)
    files = plot_results(rows, tmp_path)
    assert (tmp_path / "energy.png").stat().st_size > 10_000 and tmp_path / "energy.svg" in files
    no_energy = [{k: v for k, v in r.items() if not k.startswith("energy_")} for r in rows]
    assert not any(f.name.startswith("energy") for f in plot_results(no_energy, tmp_path / "b"))
