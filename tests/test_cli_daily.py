"""Daily use of the CLI (issue 11): bad output paths and counts are one line on stderr, exit
code 2 and nothing written; sweeps with no valid point fail; grid errors name the file and
line; help shows defaults; ``sim`` runs on a small model's own defaults; ``rtl`` writes under
the current folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hwflow.cli import main

TINY = ["--model", "tiny-llama", "--hw", "tiny"]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("HWFLOW_CACHE", str(tmp_path_factory.getbasetemp() / "daily-cache"))


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def _one_line(capsys, argv: list[str], *needles: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"hwflow {argv[0]}: error: "), err
    for n in needles:
        assert n in err, err
    return err


@pytest.fixture
def afile(tmp_path) -> Path:
    f = tmp_path / "afile"
    f.write_text("not a folder\n")
    return f


def _grid(tmp_path: Path, text: str) -> Path:
    g = tmp_path / "grid.yaml"
    g.write_text(text)
    return g


GOOD_GRID = "model: tiny-llama\npresets: [tiny]\nplans: [w4a8]\nlengths: [[16, 4]]\n"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["sim", *TINY, "--workers", "0"], "invalid count '0'"),
        (["sim", *TINY, "--workers", "-3"], "invalid count '-3'"),
        (["sweep", "GRID", "-o", "OUT/r.csv", "--workers", "0"], "invalid count '0'"),
        (["rtl", "--chains", "0"], "invalid count '0'"),
    ],
)
def test_bad_counts(argv, needle, tmp_path, capsys):
    argv = [a.replace("GRID", str(_grid(tmp_path, GOOD_GRID))) for a in argv]
    argv = [a.replace("OUT", str(tmp_path)) for a in argv]
    before = _files(tmp_path)
    _one_line(capsys, argv, needle, "allowed: a whole number >= 1")
    assert _files(tmp_path) == before


def test_bad_output_paths(tmp_path, afile, capsys):
    """Each used to end in a traceback or to create folders; now one line, nothing written."""
    grid = str(_grid(tmp_path, GOOD_GRID))
    csv = tmp_path / "r.csv"
    csv.write_text("a\n")
    before = _files(tmp_path)
    cases = [
        (["plot", str(csv), "-o", str(afile)], f"-o {afile}: exists and is not a folder"),
        (["sweep", grid, "-o", f"{afile}/x.csv"], f"{afile} is a file, not a folder"),
        (["rtl", "--no-lint", "-o", str(afile)], f"-o {afile}: exists and is not a folder"),
        (["sim", *TINY, "--trace", f"{afile}/t.json"], f"{afile} is a file, not a folder"),
        (
            ["sim", *TINY, "--trace", f"{tmp_path}/nonexistent/dir/t.json"],
            f"folder {tmp_path}/nonexistent/dir does not exist",
        ),
        (["sweep", grid, "-o", f"{tmp_path}/no/such/r.csv"], "does not exist"),
        (["compile", *TINY, "--plan", "w4a8", "-o", str(afile)], "exists and is not a folder"),
    ]
    for argv, needle in cases:
        _one_line(capsys, argv, needle)
        assert _files(tmp_path) == before, argv


def test_os_error_is_one_line_naming_the_path(tmp_path, monkeypatch, capsys):
    """Any OSError a command meets ends in one line naming the path, exit 2 (cli.main)."""
    import hwflow.analysis.plots as plots

    locked = tmp_path / "locked.csv"

    def refuse(path):
        raise PermissionError(13, "Permission denied", str(locked))

    monkeypatch.setattr(plots, "read_results", refuse)
    _one_line(capsys, ["plot", str(locked), "-o", str(tmp_path)], f"{locked}: Permission denied")


def test_sweep_with_no_valid_point_fails_and_names_each_reason(tmp_path, capsys):
    grid = _grid(
        tmp_path,
        "model: tiny-llama\npresets: [tiny]\nhw: {mv.chains: [600, 700]}\nplans: [w4a8]\n"
        "lengths: [[16, 4]]\n",
    )
    out = tmp_path / "r.csv"
    assert main(["sweep", str(grid), "-o", str(out), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    reasons = [ln for ln in err.splitlines() if ln.startswith("invalid point ")]
    assert len(reasons) == 2 and all("DSPs but board" in r for r in reasons), err
    assert "mv.chains=600" in reasons[0] and "mv.chains=700" in reasons[1]
    assert "all 2 points" in err and "are invalid" in err
    assert not out.exists()
    assert not (tmp_path / ".r.cache").exists()  # invalid presets are not cached either


def test_sweep_reports_cached_points(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FORCE_COLOR", "1")  # progress is shown on terminals only
    grid = _grid(tmp_path, GOOD_GRID)
    out = tmp_path / "r.csv"
    assert main(["sweep", str(grid), "-o", str(out), "--workers", "1"]) == 0
    assert "0/1 points from the cache" in capsys.readouterr().err
    assert main(["sweep", str(grid), "-o", str(out), "--workers", "1"]) == 0
    assert "1/1 points from the cache" in capsys.readouterr().err


def test_grid_errors_name_file_and_line(tmp_path, capsys):
    bad = _grid(tmp_path, "model: tiny-llama\npresets: [tiny\nplans: [w4a8]\n")
    _one_line(
        capsys, ["sweep", str(bad), "-o", str(tmp_path / "r.csv")], f"{bad}: malformed YAML at line"
    )
    param = _grid(tmp_path, "model: tiny-llama\npresets: [tiny]\nhw: {mv.chainz: [2]}\n")
    _one_line(
        capsys,
        ["sweep", str(param), "-o", str(tmp_path / "r.csv")],
        f"{param}: unknown preset parameter 'mv.chainz'",
    )
    assert not (tmp_path / "r.csv").exists()


def test_sim_runs_on_a_small_models_defaults(capsys):
    """tiny-llama's context is 512: the default case shrinks to fit (128 + 384)."""
    assert main(["sim", *TINY, "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)  # --json output is JSON only: progress went to stderr
    assert (out["prefill"], out["decode"]) == (128, 384)
    assert captured.err == ""  # not a terminal: no progress output either


def test_help_shows_defaults_and_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("hwflow 0.")
    assert main(["sim", "--help"]) == 0
    text = capsys.readouterr().out
    assert "(default: llama2-7b)" in text and "(default: fast)" in text
    assert "(default: 2)" in text  # --workers
    assert main(["demo", "--help"]) == 0
    text = capsys.readouterr().out
    for step in ("1. compile", "2. check", "3. generate", "4. run", "5. simulate", "6. sweep"):
        assert step in text, text


@pytest.mark.slow
@pytest.mark.xdist_group("rtl-tiny")  # shares the accelerator's cached Verilog
def test_rtl_writes_under_the_current_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["rtl", "--hw", "tiny", "--no-lint"]) == 0
    assert (tmp_path / "rtl" / "generated" / "tiny" / "manifest.json").is_file()
    assert os.path.commonpath([tmp_path, *map(str, _files(tmp_path))]) == str(tmp_path)
