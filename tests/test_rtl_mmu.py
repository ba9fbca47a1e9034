"""The tiny preset's matmul units (MV and MM) on Verilator: sim/mmu_bench.py from pytest.

Each unit's tests share one build folder, so they sit in one xdist group (one worker); the
Verilog is generated once per module run. Buffer words of 32 bytes (one HBM port beat): the
units are generic in the word width, and the machine's cosim (tests/test_rtl_machine.py) runs
them at the tiny preset's 128-byte words, so a second unit width here would only add a build.
"""

from __future__ import annotations

from functools import cache

import pytest

from hwflow.config import load_hw
from hwflow.hw.cosim import BenchRun, run_bench
from hwflow.hw.machine.mmu import unit_design
from hwflow.hw.params import EngineParams
from hwflow.isa import MATMUL_FUNCS

pytestmark = pytest.mark.rtl

#: The cycle model's tolerance per instruction (issue 7: every class within 2 %).
TOLERANCE = 0.02

_KINDS = [
    pytest.param("mv", 32, marks=pytest.mark.xdist_group("rtl-tiny-mv-unit")),
    pytest.param("mpe", 32, marks=pytest.mark.xdist_group("rtl-tiny-mpe-unit")),
]


@cache
def _design(kind: str, wb: int) -> tuple[str, str, float]:
    return unit_design(load_hw("tiny"), kind, wb)  # type: ignore[arg-type]


def _run(kind: str, wb: int, testcase: str, **env: str) -> BenchRun:
    p = EngineParams.from_preset(load_hw("tiny"), kind)  # type: ignore[arg-type]
    env = {"HWFLOW_WB": str(wb), **env}
    return run_bench(p, design=_design(kind, wb), bench="mmu_bench", testcase=testcase, env=env)


@pytest.mark.parametrize(("kind", "wb"), _KINDS)
def test_unit_bit_exact_with_funcsim(kind: str, wb: int) -> None:
    """Random instructions of every func (dense and N:M, wbits 2/3/4/8, bias, row factors,
    weight groups of 16..64, obits 8/16/32, clamped and zero extents) under random grant
    stalls leave every buffer byte equal to funcsim's execution of the same instruction."""
    run = _run(kind, wb, "random_ops", HWFLOW_OPS="16")
    assert (run.tests, run.failed) == (1, 0), run
    ok = run.stats["random_ops_ok"]
    assert all(ok[f] >= 4 for f in MATMUL_FUNCS), ok
    assert run.stats["random_ops_grouped_ok"] >= 1, run.stats
    assert run.stats["random_ops_brow_ok"] >= 1, run.stats  # qk of rotated keys (brow)


@pytest.mark.parametrize(("kind", "wb"), _KINDS[:2])
def test_unit_bench_fails_on_a_flipped_expected_byte(kind: str, wb: int) -> None:
    """The comparison is live: one flipped expected byte fails the run."""
    run = _run(kind, wb, "random_ops", HWFLOW_OPS="1", HWFLOW_CORRUPT="1")
    assert (run.tests, run.failed) == (1, 1), run


@pytest.mark.parametrize(("kind", "wb"), _KINDS[:1])
def test_unit_bench_fails_on_flipped_group_multipliers(kind: str, wb: int) -> None:
    """The group multipliers are live: the RTL reading changed ones (every byte of one
    grouped instruction's section xor 0x55, where that changes funcsim's result) fails."""
    run = _run(kind, wb, "random_ops", HWFLOW_OPS="48", HWFLOW_CORRUPT_GMULT="1")
    assert run.stats["random_ops_gmult_flipped"], "no grouped op whose multipliers matter"
    assert (run.tests, run.failed) == (1, 1), run
    assert any("head" in b or "linear" in b for b in run.stats["random_ops_bad"]), run.stats


@pytest.mark.parametrize(("kind", "wb"), _KINDS[:1])
def test_unit_bench_fails_on_flipped_key_factors(kind: str, wb: int) -> None:
    """The keys' row factors of a brow qk (rotated keys, issue 14) are live: the RTL reading
    changed ones (each key's exponent xor 3, where that changes funcsim's result) fails."""
    run = _run(kind, wb, "random_ops", HWFLOW_OPS="9", HWFLOW_BROW_P="1", HWFLOW_CORRUPT_KEYF="1")
    assert run.stats["random_ops_keyf_flipped"], "no brow qk whose factors matter"
    assert (run.tests, run.failed) == (1, 1), run
    assert any("qk" in b for b in run.stats["random_ops_bad"]), run.stats


def _table(kind: str, wb: int, rows: list[dict]) -> None:
    print(
        f"\n{kind} ({wb}-byte words): func rows cols k n:m wbits obits rtl model error "
        "beats port_demand (port-bound: *)"
    )
    for r in rows:
        err = (r["rtl"] - r["model_latency"]) / r["model_latency"] if r["model_latency"] else 0
        bound = "*" if r["port_demand"] > r["model_beats"] else ""
        print(
            f"{r['func']:6} {r['rows']:4} {r['cols']:4} {r['k']:4} {r['n']:2}:{r['m']:<2} "
            f"{r['wbits']} {r['obits']:2} {r['rtl']:6} {r['model_latency']:6} {err:+7.1%} "
            f"{r['model_beats']:5} {r['port_demand']:5}{bound} {r.get('phases') or ''}"
        )


#: The cycle check per unit: MV keeps a strict xfail with the measured remainder.
_CYCLE_KINDS = [
    pytest.param(
        "mv",
        32,
        marks=[
            pytest.mark.xdist_group("rtl-tiny-mv-unit"),
            pytest.mark.xfail(
                strict=True,
                reason="measured 2026-12-01 (h-mmu) at 32-byte words, MV: a weight-grouped "
                "op's first beat waits for its group multipliers' read behind the records' "
                "(head 9 x 64 8:16 G16: 57 vs 53 cycles, +7.5 %); a sparse 28-byte record per "
                "beat plus the group parameters fill the 32-byte weight port (head 12 x 64 "
                "4:16: 50 vs 49, +2.0 %); every other engine-bound op within 2 % (qk/pv at the "
                "compiler's K/V strides; other strides request-bound and reported)",
            ),
        ],
    ),
    pytest.param("mpe", 32, marks=pytest.mark.xdist_group("rtl-tiny-mpe-unit")),
]


@pytest.mark.parametrize(("kind", "wb"), _CYCLE_KINDS)
def test_unit_cycles_against_the_cycle_model(kind: str, wb: int) -> None:
    """Busy cycles per instruction (command accepted through ``done``, as the machine's
    monitor counts them) within 2 % of the cycle model's latency for it (hwflow.perf.lower:
    costs.matmul_unit_cost) where the engine bounds the instruction; where the buffer ports
    do (the bench's port demand above the model's beats) never faster than the model. The
    bench asserts it per instruction; the table is printed."""
    env = {"HWFLOW_OPS": "12", "HWFLOW_CYCLE_TOL": str(TOLERANCE), "HWFLOW_PHASES": "1"}
    env["HWFLOW_BROW_P"] = "0"  # the instructions this check was set up with (brow: below)
    run = _run(kind, wb, "cost_table", **env)
    rows = run.stats["cost_table_table"]
    _table(kind, wb, rows)
    assert (run.tests, run.failed) == (1, 0), run
    assert {r["func"] for r in rows if r["model_latency"]} == set(MATMUL_FUNCS)


@pytest.mark.parametrize(("kind", "wb"), _KINDS)
def test_unit_brow_qk_cycles(kind: str, wb: int) -> None:
    """qk of rotated keys (``brow``): the keys' factors are read beside the K rows by the
    parameter reader; the busy cycles next to the cycle model's (costs.matmul_unit_cost, which
    charges qk alike with or without brow), printed; every brow qk byte-exact."""
    env = {"HWFLOW_OPS": "12", "HWFLOW_BROW_P": "1", "HWFLOW_PHASES": "1"}
    run = _run(kind, wb, "cost_table", **env)
    rows = [r for r in run.stats["cost_table_table"] if r["brow"]]
    _table(kind, wb, rows)
    assert (run.tests, run.failed) == (1, 0), run
    assert len(rows) == 3 and run.stats["cost_table_brow_ok"] == 3  # 12 ops: 3 qk


@pytest.mark.parametrize(("kind", "wb"), _KINDS[1:])
def test_unit_bench_fails_on_a_wrong_expected_cycle_count(kind: str, wb: int) -> None:
    """The cycle check is live: expecting 5 % more cycles than the model charges fails (the
    MM unit meets the model within 2 % above, so 1.05 x the model is 3 % too slow for it)."""
    env = {"HWFLOW_OPS": "4", "HWFLOW_CYCLE_TOL": str(TOLERANCE), "HWFLOW_CYCLE_SKEW": "1.05"}
    run = _run(kind, wb, "cost_table", **env)
    assert (run.tests, run.failed) == (1, 1), run
