"""``hwflow quality`` and the CLI's error discipline (exit 2, one line, no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys

from hwflow.cli import main


def test_quality_json(capsys):
    assert (
        main(
            [
                "quality",
                "--model",
                "tiny-opt",
                "--plan",
                "w8a8",
                "--plan",
                "flightllm",
                "--json",
                "--decode",
                "2",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert set(out["plans"]) == {"w8a8", "flightllm"}
    w8 = {r["tensor"]: r["sqnr_db"] for r in out["plans"]["w8a8"]}
    fl = {r["tensor"]: r["sqnr_db"] for r in out["plans"]["flightllm"]}
    assert w8["prefill.logits"] > fl["prefill.logits"] > 5


def test_quality_table(capsys):
    assert main(["quality", "--plan", "w4a8", "--tokens", "8", "--decode", "1"]) == 0
    assert "prefill.x1" in capsys.readouterr().out


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hwflow.cli", *args], capture_output=True, text=True, check=False
    )


def test_errors_are_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    for args, needle in [
        (("quality", "--model", "llama2-7b"), "quality runs on models up to"),
        (("quality", "--plan", str(bad)), "malformed YAML at line"),
        (("quality", "--model", "nope"), "model 'nope' not found (shipped:"),
    ]:
        r = _run(*args)
        assert r.returncode == 2, r
        assert needle in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
