"""The tiny preset's engines on Verilator: cocotb benches (sim/engine_bench.py) from pytest.

Each engine's tests share one build folder, so they sit in one xdist group (one worker).
"""

from __future__ import annotations

import json

import pytest

from hwflow.cli import main
from hwflow.config import load_hw
from hwflow.hw.cosim import run_bench
from hwflow.hw.params import EngineParams

pytestmark = pytest.mark.rtl


def _params(kind: str) -> EngineParams:
    return EngineParams.from_preset(load_hw("tiny"), kind)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("mv", marks=pytest.mark.xdist_group("rtl-tiny-mv")),
        pytest.param("mpe", marks=pytest.mark.xdist_group("rtl-tiny-mpe")),
    ],
)
def test_engine_bench_passes(kind: str) -> None:
    """Every bits x N x raw combination bit-exact under gaps and backpressure; latency and
    back-to-back interval equal hwflow.costs.matmul_cost on every shape."""
    run = run_bench(_params(kind), testcase=["random_ops", "cost_model"])
    assert (run.tests, run.failed) == (2, 0), run
    assert run.stats["random_ops"] >= 2 * 4 * 4 * 2  # 2 directed kinds x bits x N x raw
    assert run.stats["cost_shapes"] >= 40


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("mv", marks=pytest.mark.xdist_group("rtl-tiny-mv")),
        pytest.param("mpe", marks=pytest.mark.xdist_group("rtl-tiny-mpe")),
    ],
)
def test_engine_bench_fails_on_a_wrong_expected_value(kind: str) -> None:
    """The scoreboard is live: one falsified expected value fails the run."""
    run = run_bench(_params(kind), testcase="random_ops", env={"HWFLOW_CORRUPT": "1"})
    assert (run.tests, run.failed) == (1, 1), run


@pytest.mark.xdist_group("rtl-tiny-mv")
def test_bench_rtl_command(capsys: pytest.CaptureFixture[str]) -> None:
    """``hwflow bench rtl`` on the tiny MV engine prints its build time and cycles/s."""
    assert main(["bench", "rtl", "--hw", "tiny", "--cycles", "200", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["module"] == "hwflow_tiny_mv" and row["sim_cycles"] >= 200
    assert row["cycles_per_s"] > 0 and row["verilator_build_s"] >= 0
