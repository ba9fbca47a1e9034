"""The engines' port traffic and hwflow.costs agree on every shape (the Verilator bench then
measures the cycles: tests/test_rtl_engines.py): a result occupies the input for its beats or
its drain words, whichever is more."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from hwflow.config import HardwarePreset, load_hw
from hwflow.costs import (
    UNIT_DRAIN_STAGES,
    UNIT_FEED_STAGES,
    chain_latency,
    matmul_cost,
    pv_nm,
)
from hwflow.hw.machine.decode import cmd_layout
from hwflow.hw.params import EngineParams
from hwflow.hw.stimulus import make_op, op_beats, op_words
from hwflow.isa import MATMUL_FUNCS, Concrete, Unit
from hwflow.perf.lower import lower


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


def test_drain_bound_results_occupy_the_input_for_their_drain() -> None:
    """u280 MV (R = 16): a dense group of 128 rows drains in 8 words, so a K = 16 op (1 beat
    per group) is drain-bound; K = 128 (8 beats) just hides the drain."""
    mv = load_hw("u280").mv
    one = matmul_cost(mv, 16, 1, 256, 16, 16)  # 2 groups, 1 beat each, 8 drain words each
    assert (one.beats, one.latency) == (2 * 8, 8 + 1 + (16 + 12) + 8 - 1)
    eight = matmul_cost(mv, 16, 1, 256, 128, 16)
    assert (eight.beats, eight.latency) == (2 * 8, 16 + (16 + 12) + 8 - 1)
    sparse = matmul_cost(mv, 16, 1, 1024, 4096, 2)  # 1024 rows in one group: 64 words
    assert (sparse.beats, sparse.latency) == (256, 256 + 28 + 63)


def test_preset_dsp_check_counts_requantizers_and_group_multipliers() -> None:
    """The fit check counts the weight-group stage's multipliers (one per output-buffer slot,
    16 stages / smallest N 2 = 8, and token lane of every chain: MV 128 x 8, MPE 64 x 8 x 2)
    and the requantizers' DSPs (2 DSP48E2 each: a 49-bit operand in a 24-bit and a 25-bit
    piece, as Yosys maps them) besides the chain stages (MV 128 x 16, MPE 64 x 16 x 2 / 2)."""
    hw = load_hw("u280")
    assert hw.dsps_used == 2048 + 1024 + 1024 + 1024 + (16 + 16) * 2 == 5184
    data = hw.model_dump(mode="json", exclude_unset=True)
    data["mv"]["requantizers"] = 1904  # 5,120 + (1,904 + 16) x 2 = 8,960: fits 9,024
    HardwarePreset.model_validate(data)
    data["mv"]["requantizers"] = 1936  # 5,120 + (1,936 + 16) x 2 = 9,024: exactly the device
    HardwarePreset.model_validate(data)
    data["mv"]["requantizers"] = 1937  # one more requantizer: 9,026 > 9,024
    with pytest.raises(
        ValidationError,
        match=r"need 9026 DSPs but board xcu280 has 9024 \(chain stages, weight-group "
        r"multipliers and requantizers\)",
    ):
        HardwarePreset.model_validate(data)


def test_pv_runs_at_the_widest_row_group_that_fits_its_columns() -> None:
    """tiny (2 chains of 16; N in 2, 4, 8, 16): a row group at N holds 32 / N columns, so
    16 V columns run at N = 2 (one group), 8 at N = 4, 12 at N = 4 (8 fits, 16 does not),
    2 or fewer at the dense 16."""
    hw = load_hw("tiny")
    assert hw.chain_n_modes(16) == (2, 4, 8, 16)
    got = {cols: pv_nm(hw, hw.mv, cols) for cols in (64, 16, 12, 8, 4, 2, 1)}
    assert got == {64: (2, 2), 16: (2, 2), 12: (4, 4), 8: (4, 4), 4: (8, 8), 2: (16, 16),
                   1: (16, 16)}  # fmt: skip


def test_pv_priced_at_its_n_keeps_the_dense_beats_and_drains_the_wider_group() -> None:
    """A decode pv of 16 columns over 24 keys on tiny's MV, as the cycle model prices it:
    N = 2, one group of 16 columns, 24 / 2 = 12 beats (the dense 8 groups x 24/16 -> 2
    blocks would be 16, the N = 2 beats skip the last block's missing keys), the group's
    16 results drain through 2 requantizers in 8 cycles; + the unit's feed and drain stages."""
    hw = load_hw("tiny")
    f = dict.fromkeys(cmd_layout(Unit.MV).members, 0)
    f.update(func=MATMUL_FUNCS.index("pv"), rows=1, cols=16, k=24, n=1, m=1, wbits=8, obits=8)
    op = lower(hw, [Concrete(0, "MV", Unit.MV, 0, 0, f, 0, ())])[0][0]
    assert op.beats == 12
    assert op.latency == 12 + chain_latency(16) + 8 - 1 + UNIT_FEED_STAGES + UNIT_DRAIN_STAGES
