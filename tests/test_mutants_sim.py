"""The simulator's program cache and its summary row (issue 13)."""

from __future__ import annotations

import pytest

import hwflow.compiler
from hwflow.config import load_hw, load_model, load_plan
from hwflow.energy import load_energy_table
from hwflow.perf import sim


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama"), load_plan("flightllm"), load_hw("tiny")


def test_programs_are_cached_under_home_and_read_back(tiny, tmp_path, monkeypatch):
    """README: compiled programs are cached under ~/.cache/hwflow unless HWFLOW_CACHE moves
    them. A second process (empty in-memory table) reads the file instead of compiling."""
    monkeypatch.delenv("HWFLOW_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(sim, "_PROGRAMS", {})
    first = sim.compile_cached(*tiny, 64)
    files = list((tmp_path / ".cache" / "hwflow" / "programs").glob("*.hwp"))
    assert len(files) == 1 and files[0].read_bytes() == first.to_bytes()
    assert sim.compile_cached(*tiny, 64) is first  # the in-memory table
    monkeypatch.setattr(sim, "_PROGRAMS", {})

    def no_compile(*a, **k):
        raise AssertionError("compiled again although the cache file is there")

    monkeypatch.setattr(hwflow.compiler, "compile_model", no_compile)
    again = sim.compile_cached(*tiny, 64)
    assert again.to_bytes() == first.to_bytes()


def test_summary_row(tiny, tmp_path, monkeypatch):
    """The row a sweep writes: the columns the plots read, action counts consistent with the
    energy table (joules = count x pJ), every step simulated in exact mode; decode 0 is a
    prefill-only run."""
    monkeypatch.setenv("HWFLOW_CACHE", str(tmp_path))
    r = sim.simulate(*tiny, 8, 3, mode="exact")
    s = r.summary()
    assert {"decode_bytes_per_token", "roofline_ms_per_token", "tokens_per_j"} <= set(s)
    assert s["simulated_steps"] == 4  # the prefill and 3 decode steps, each simulated
    t = load_energy_table(tiny[2].energy_table)
    bits = s["buffer_read_bits"] + s["buffer_write_bits"]
    assert bits > 0 and s["energy_buffers_j"] == pytest.approx(bits * t.sram_pj_per_bit * 1e-12)
    hbm = s["hbm_read_bytes"] + s["hbm_write_bytes"]
    assert s["energy_hbm_j"] == pytest.approx(hbm * 8 * t.hbm_pj_per_bit * 1e-12)
    p = sim.simulate(*tiny, 8, 0, mode="exact").summary()
    assert p["decode"] == 0 and p["decode_bytes_per_token"] == 0
