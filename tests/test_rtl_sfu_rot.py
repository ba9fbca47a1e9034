"""The SFU's rotated-keys functions ropeq / ropek (issue 14) in Amaranth's simulator.

sim/sfu_bench.py's scoreboard on the whole SFU (no Verilator build): random ropeq / ropek
instructions (head_dim 2..32, or up to 128 at u280's 16 lanes; 0 extents, unaligned rows,
random grants) leave every buffer byte equal to the expectation written from hwflow.numerics
alone (``rot_reference``: RoPE at INT16, ``hadamard_int``, then ``requantize`` per head or
``quant_rows`` per (row, head) with the factor before the head's codes), which the bench also
holds funcsim's executor to; busy cycles against costs.sfu_op_cost.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from hwflow.config import load_hw
from hwflow.costs import sfu_op_cost

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sim"))

import sfu_bench as sb

WB = 128  #: the tiny machine's buffer word (hwflow.hw.machine.params)


def _shapes(count: int, hds: tuple[int, ...]) -> list[tuple[str, dict[str, int]]]:
    """``count`` instructions alternating ropeq / ropek; the first two with work (the
    must-fail check corrupts the first), the rest drawn by the bench (0 extents included)."""
    rng = np.random.default_rng(count)
    out = [(f, {"rows": 2, "cols": 2 * hds[-1], "aux": hds[-1]}) for f in sb.ROT_FUNCS]
    for i in range(count - 2):
        hd = int(rng.choice(hds))
        rows = int(rng.choice([0, 1, 2, 3]))
        out.append(
            (sb.ROT_FUNCS[i % 2], {"aux": hd, "rows": rows, "cols": hd * int(rng.integers(0, 4))})
        )
    return out


def test_rot_bit_exact_under_random_grants() -> None:
    """tiny (4 lanes), heads of 2..32, random grants: byte-exact (the scoreboard raises at the
    first differing byte), and funcsim's executor agrees with the numerics expectation."""
    assert sb.FUNCSIM_ROT
    res = sb.pysim_scoreboard(load_hw("tiny"), WB, _shapes(30, (2, 4, 8, 16, 32)), seed=3)
    assert len(res.rows) == 30 and all(r["equal"] for r in res.rows)
    assert sum(r["elements"] > 0 for r in res.rows) >= 10


def test_rot_bit_exact_at_u280_lanes() -> None:
    """u280's 16 lanes, heads up to the row buffer's 128 (LLaMA-2 7B's head_dim)."""
    res = sb.pysim_scoreboard(load_hw("u280"), WB, _shapes(10, (16, 64, 128)), seed=4)
    assert all(r["equal"] for r in res.rows)


def test_rot_bench_fails_on_a_flipped_expected_byte() -> None:
    """The scoreboard is live for these functions: one flipped expected byte fails it."""
    with pytest.raises(AssertionError, match="differ"):
        sb.pysim_scoreboard(load_hw("tiny"), WB, _shapes(2, (16,)), seed=5, corrupt=True)


def _model_shapes() -> list[tuple[str, dict[str, int]]]:
    """The compiler's shapes: rows 1..8 of 1, 2 or 4 heads of 16 or 32, word-aligned rows."""
    return [
        (f, {"rows": rows, "cols": n * hd, "aux": hd, "align": WB})
        for f in sb.ROT_FUNCS
        for hd in (16, 32)
        for rows in (1, 2, 8)
        for n in (1, 2, 4)
    ]


def test_rot_cycles_against_costs() -> None:
    """Every grant given: each instruction's busy cycles (command accepted to done) within
    2 % (or 2 cycles) of costs.sfu_op_cost, as the other SFU functions
    (tests/test_rtl_sfu.py)."""
    hw = load_hw("tiny")
    res = sb.pysim_scoreboard(hw, WB, _model_shapes(), seed=6, grant_p=1.0)
    off = []
    for r in res.rows:
        cost = sfu_op_cost(hw, r["func"], r["rows"], r["cols"], False, r["hd"], True).latency
        if not sb.cycles_agree(r["busy"], cost):
            off.append((r["func"], r["rows"], r["cols"], r["hd"], r["busy"], cost))
    assert not off, off
