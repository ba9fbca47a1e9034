"""The main job (``make run`` = ``hwflow demo``) end to end, on the tiny model and preset."""

from __future__ import annotations

import json

import pytest

from hwflow.cli import main


@pytest.mark.slow
@pytest.mark.xdist_group("rtl-tiny")
def test_demo_runs_every_step_on_tiny(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HWFLOW_CACHE", str(tmp_path / "cache"))  # not the user's cache
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "model: tiny-llama\npresets: [tiny]\nplans: [flightllm, w8a8]\nlengths: [[16, 8]]\nmode: fast\n"
    )
    out = tmp_path / "out"
    code = main(
        [
            "demo",
            "-o",
            str(out),
            "--model",
            "tiny-llama",
            "--hw",
            "tiny",
            "--grid",
            str(grid),
            "--prefill",
            "64",
            "--decode",
            "32",
        ]
    )
    text = capsys.readouterr().out
    assert code == 0, text
    for cmd in ("compile", "check", "rtl", "cosim", "sim", "sweep", "plot"):
        assert f"$ hwflow {cmd} " in text
    assert text.count("bit-exact") == 4  # three checks and the RTL cosim
    assert "NOT bit-exact" not in text
    assert (out / "program" / "program.hwp").is_file()
    manifest = json.loads((out / "rtl" / "tiny" / "manifest.json").read_text())
    assert set(manifest["engines"]) == {"mv", "mpe"}
    assert (out / "trace.json").is_file()
    assert "status" in (out / "sweep" / "results.csv").read_text().splitlines()[0]
    assert sorted(p.suffix for p in (out / "plots").iterdir()) and any(
        p.suffix == ".png" for p in (out / "plots").iterdir()
    )
