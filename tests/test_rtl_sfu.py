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
from hwflow.hw.machine.sfu import FUNCS, sfu_verilog

pytestmark = [pytest.mark.rtl, pytest.mark.xdist_group("rtl-tiny-sfu")]

NAME = "hwflow_tiny_sfu"
WORD_BYTES = load_hw("tiny").hbm.port_bits // 8  #: one AXI beat, until params.py lands
COUNT = 10  #: random instructions per function and test


WIDE = 2 * WORD_BYTES  #: a wider buffer word (the SFU must work for any power of two >= 32)


@cache
def _build(wb: int = WORD_BYTES) -> tuple[Path, bool, float]:
    t0 = time.perf_counter()
    name = NAME if wb == WORD_BYTES else f"{NAME}{wb}"
    text = sfu_verilog(load_hw("tiny"), wb, name)
    bdir, built, seconds, _ = build_verilog(text, name, gen_s=time.perf_counter() - t0)
    return bdir, built, seconds


def _run(testcase: str, wb: int = WORD_BYTES, **env: str) -> tuple[int, int, dict]:
    bdir, _, _ = _build(wb)
    extra = {"HWFLOW_PRESET": "tiny", "HWFLOW_WORD_BYTES": str(wb)}
    extra["HWFLOW_COUNT"] = str(COUNT)
    name = NAME if wb == WORD_BYTES else f"{NAME}{wb}"
    tests, failed, _, stats = run_cocotb(
        name, bdir, "sfu_bench", testcase=testcase, env={**extra, **env}
    )
    return tests, failed, stats


def test_sfu_bit_exact_under_random_grants() -> None:
    """Every function, random shapes (0 extents, odd widths, unaligned), random grants:
    every buffer byte equals the functional simulator's result."""
    tests, failed, stats = _run("random_ops")
    assert (tests, failed) == (1, 0), stats
    assert stats["random_ops"] == COUNT * len(FUNCS) == stats["random_equal"]


def test_sfu_bench_fails_on_a_flipped_expected_byte() -> None:
    """The scoreboard is live: one flipped expected byte fails the run."""
    tests, failed, _ = _run("random_ops", HWFLOW_CORRUPT="1")
    assert (tests, failed) == (1, 1)


def test_sfu_bit_exact_with_wider_words() -> None:
    """The same random scoreboard with buffer words twice as wide."""
    tests, failed, stats = _run("random_ops", WIDE)
    assert (tests, failed) == (1, 0), stats
    assert stats["random_ops"] == COUNT * len(FUNCS) == stats["random_equal"]


@pytest.mark.parametrize("wb", [WORD_BYTES, WIDE])
def test_sfu_cycles_against_costs(wb: int) -> None:
    """The model shapes (every function, 1..8 rows, 16..128 columns, every softmax mask,
    RMSNorm and LayerNorm): every instruction's busy cycles (command accepted to done, as
    the machine counts) within 2 % (or 2 cycles) of costs.sfu_op_cost, byte-exact."""
    tests, failed, stats = _run("model_costs", wb)
    assert (tests, failed) == (1, 0), stats
    assert stats["model_off"] == 0 and {r["func"] for r in stats["model_table"]} >= set(FUNCS)


def test_sfu_cycle_check_fails_on_a_wrong_cost() -> None:
    """The cycle check is live: costs 10 % high fail it."""
    tests, failed, stats = _run("model_costs", HWFLOW_COST_SKEW="0.1")
    assert (tests, failed) == (1, 1)
    assert stats["model_off"] > 0
