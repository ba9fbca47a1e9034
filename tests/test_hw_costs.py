"""The engines' port traffic and hwflow.costs agree on every shape (the Verilator bench then
measures the cycles: tests/test_rtl_engines.py): a result occupies the input for its beats or
its drain words, whichever is more."""

from __future__ import annotations

import numpy as np
import pytest

from hwflow.config import load_hw
from hwflow.costs import matmul_cost
from hwflow.hw.params import EngineParams
from hwflow.hw.stimulus import make_op, op_beats, op_words


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
        words = op_words(p, op)
        results, beats = len(words), len(op_beats(p, op))
        assert results * (k // p.m) == beats  # one result per row group and token pass
        drain = len(words[0])
        assert all(len(w) == drain for w in words)
        assert drain * p.requantizers == p.rows * p.rows_per_beat(n)
        assert cost.beats == results * max(k // p.m, drain)
        assert cost.macs == tokens * rows * (k // p.m) * n
