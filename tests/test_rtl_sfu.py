"""The tiny preset's SFU on Verilator: the cocotb bench sim/sfu_bench.py from pytest.

Every test shares one build (one xdist group). The bench compares every buffer byte after
each random instruction with the functional simulator's SFU executor, and tabulates busy
cycles against hwflow.costs.sfu_cost.
"""

from __future__ import annotations

import time
from functools import cache
from pathlib import Path

import pytest

from hwflow.config import load_hw
from hwflow.hw.cosim import build_verilog, run_cocotb
from hwflow.hw.machine.sfu import sfu_verilog
from hwflow.isa import SFU_FUNCS

pytestmark = [pytest.mark.rtl, pytest.mark.xdist_group("rtl-tiny-sfu")]

NAME = "hwflow_tiny_sfu"
WORD_BYTES = load_hw("tiny").hbm.port_bits // 8  #: one AXI beat, until params.py lands
COUNT = 10  #: random instructions per function and test


@cache
def _build() -> tuple[Path, bool, float]:
    t0 = time.perf_counter()
    text = sfu_verilog(load_hw("tiny"), WORD_BYTES, NAME)
    bdir, built, seconds, _ = build_verilog(text, NAME, gen_s=time.perf_counter() - t0)
    return bdir, built, seconds


def _run(testcase: str, **env: str) -> tuple[int, int, dict]:
    bdir, _, _ = _build()
    extra = {"HWFLOW_PRESET": "tiny", "HWFLOW_WORD_BYTES": str(WORD_BYTES)}
    extra["HWFLOW_COUNT"] = str(COUNT)
    tests, failed, _, stats = run_cocotb(
        NAME, bdir, "sfu_bench", testcase=testcase, env={**extra, **env}
    )
    return tests, failed, stats


def test_sfu_bit_exact_under_random_grants() -> None:
    """Every function, random shapes (0 extents, odd widths, unaligned), random grants:
    every buffer byte equals the functional simulator's result."""
    tests, failed, stats = _run("random_ops")
    assert (tests, failed) == (1, 0), stats
    assert stats["random_ops"] == COUNT * len(SFU_FUNCS) == stats["random_equal"]


def test_sfu_bench_fails_on_a_flipped_expected_byte() -> None:
    """The scoreboard is live: one flipped expected byte fails the run."""
    tests, failed, _ = _run("random_ops", HWFLOW_CORRUPT="1")
    assert (tests, failed) == (1, 1)


def test_sfu_cycles_against_costs() -> None:
    """Busy cycles per function beside costs.sfu_cost. The RTL is slower than the cost model
    where it does per-row scalar work in series and pays a pipeline fill per row; the bound
    pins today's measured figures (see the report table) so a regression shows."""
    tests, failed, stats = _run("cost_model")
    assert (tests, failed) == (1, 0), stats
    table = {row["func"]: row for row in stats["cost_table"]}
    assert set(table) >= set(SFU_FUNCS)
    for row in table.values():
        assert row["rtl_cycles"] >= 0.5 * row["cost_cycles"], row
