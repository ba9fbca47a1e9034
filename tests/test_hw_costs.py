"""The engines' port traffic and hwflow.costs agree on every shape (the Verilator bench then
measures the cycles: tests/test_rtl_engines.py)."""

from __future__ import annotations

import numpy as np
import pytest

from hwflow.config import load_hw
from hwflow.costs import chain_latency, matmul_cost
from hwflow.hw.params import EngineParams
from hwflow.hw.stimulus import make_op, op_beats, op_expected


@pytest.mark.parametrize("kind", ["mv", "mpe"])
def test_beats_and_results_match_matmul_cost(kind: str) -> None:
    hw = load_hw("tiny")
    p = EngineParams.from_preset(hw, kind)  # type: ignore[arg-type]
    engine = getattr(hw, kind)
    rng = np.random.default_rng(0)
    for _ in range(60):
        n = int(rng.choice(p.n_modes))
        tokens = int(rng.integers(1, 7)) if p.rows > 1 else 1
        rows = int(rng.integers(1, 40))
        k = p.m * int(rng.integers(1, 6))
        op = make_op(p, rng, tokens=tokens, rows=rows, k=k, n=n, bits=4)
        cost = matmul_cost(engine, p.m, tokens, rows, k, n)
        assert len(op_beats(p, op)) == cost.beats
        assert cost.latency == cost.beats + chain_latency(p.chain_length) == cost.beats + p.latency
        results = len(op_expected(p, op))
        assert results * (k // p.m) == cost.beats  # one result per row group and token pass
        assert cost.macs == tokens * rows * (k // p.m) * n
