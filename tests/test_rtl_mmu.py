"""The tiny preset's matmul units (MV and MM) on Verilator: sim/mmu_bench.py from pytest.

Each unit's tests share one build folder, so they sit in one xdist group (one worker); the
Verilog is generated once per module run.
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

_KINDS = [
    pytest.param("mv", marks=pytest.mark.xdist_group("rtl-tiny-mv-unit")),
    pytest.param("mpe", marks=pytest.mark.xdist_group("rtl-tiny-mpe-unit")),
]


@cache
def _design(kind: str) -> tuple[str, str, float]:
    return unit_design(load_hw("tiny"), kind)  # type: ignore[arg-type]


def _run(kind: str, testcase: str, **env: str) -> BenchRun:
    p = EngineParams.from_preset(load_hw("tiny"), kind)  # type: ignore[arg-type]
    return run_bench(p, design=_design(kind), bench="mmu_bench", testcase=testcase, env=env)


@pytest.mark.parametrize("kind", _KINDS)
def test_unit_bit_exact_with_funcsim(kind: str) -> None:
    """Random instructions of every func (dense and N:M, wbits 2/3/4/8, bias, row factors,
    obits 8/16/32, clamped and zero extents) under random grant stalls leave every buffer
    byte equal to funcsim's execution of the same instruction."""
    run = _run(kind, "random_ops", HWFLOW_OPS="16")
    assert (run.tests, run.failed) == (1, 0), run
    ok = run.stats["random_ops_ok"]
    assert all(ok[f] >= 4 for f in MATMUL_FUNCS), ok


@pytest.mark.parametrize("kind", _KINDS)
def test_unit_bench_fails_on_a_flipped_expected_byte(kind: str) -> None:
    """The comparison is live: one flipped expected byte fails the run."""
    run = _run(kind, "random_ops", HWFLOW_OPS="1", HWFLOW_CORRUPT="1")
    assert (run.tests, run.failed) == (1, 1), run


@pytest.mark.parametrize("kind", _KINDS)
def test_unit_cycles_against_matmul_cost(kind: str) -> None:
    """Busy cycles (command accepted -> done) per instruction next to matmul_cost's latency,
    printed as a table. The unit is sequential, so it is slower than the engine's cost; it
    must never be faster (that would mean skipped work), and every func must be measured."""
    run = _run(kind, "cost_table", HWFLOW_OPS="12")
    assert (run.tests, run.failed) == (1, 0), run
    rows = run.stats["cost_table_table"]
    print(f"\n{kind}: func rows cols k n wbits obits rtl_cycles cost_latency ratio")
    for r in rows:
        ratio = r["rtl"] / r["cost_latency"] if r["cost_latency"] else float("nan")
        print(
            f"{r['func']:6} {r['rows']:4} {r['cols']:4} {r['k']:4} {r['n']:2} {r['wbits']} "
            f"{r['obits']:2} {r['rtl']:6} {r['cost_latency']:6} {ratio:6.1f}"
        )
    work = [r for r in rows if r["rows"] and r["cols"] and r["k"]]
    assert {r["func"] for r in work} == set(MATMUL_FUNCS)
    assert all(r["rtl"] >= r["cost_latency"] for r in work), rows
