"""costs.py survivors of the mutation check (issue 13), worked out by hand from tiny.yaml."""

from __future__ import annotations

import pytest

from hwflow.config import load_hw
from hwflow.costs import (
    OpCost,
    core_port_bytes,
    hbm_achievable_gbps,
    hbm_burst_ns,
    hbm_pieces,
    hbm_run_ns,
    matmul_cost,
    matmul_unit_cost,
    sfu_cost,
    sfu_op_cost,
    sfu_passes,
    sfu_scalar_cycles,
    sfu_shared_port,
)
from hwflow.isa import Buf

#: tiny.yaml: 512 B bursts are device-bound at 14.375 GB/s less the refresh share 260 / 3900
DEVICE_GBPS = 14.375 * 14 / 15


def test_hbm_run_edges_and_default_row_state():
    """An empty run takes no channel time (also when it would open a row); one byte is one
    32-byte atom, one core cycle (10 ns) on tiny, bound by latency / outstanding only when that
    is longer (320 ns / 16 = 20 ns); with 1024-byte buffer words (256 B per channel per cycle)
    1024 B is two device-bound bursts; a new row adds row_miss_ns = 31. Without ``new_row`` the
    row is open."""
    tiny = load_hw("tiny")
    hw = tiny.model_copy(update={"buffers": tiny.buffers.model_copy(update={"word_bytes": 1024})})
    slow = hw.model_copy(update={"hbm": hw.hbm.model_copy(update={"latency_ns": 320})})
    assert hbm_run_ns(hw, 0) == 0.0 and hbm_run_ns(hw, 0, new_row=True) == 0.0
    assert hbm_run_ns(tiny, 1) == pytest.approx(10.0, rel=1e-12)
    assert hbm_run_ns(slow, 1) == pytest.approx(320 / 16, rel=1e-12)
    assert hbm_run_ns(hw, 1024) == pytest.approx(1024 / DEVICE_GBPS, rel=1e-12)
    assert hbm_run_ns(hw, 1024, new_row=True) == pytest.approx(1024 / DEVICE_GBPS + 31)
    assert hbm_burst_ns(hw, 512) == pytest.approx(512 / DEVICE_GBPS, rel=1e-12)
    assert hbm_run_ns(tiny, 1024) == pytest.approx(2 * 160.0, rel=1e-12)  # 2 x 16 core cycles


def test_sfu_passes_default_is_rms_norm():
    """tiny.yaml: norm_passes 2, softmax_passes 2. A norm without ``center`` is RMSNorm (2),
    LayerNorm one more; per-row quantizing ops read twice, the rest once."""
    hw = load_hw("tiny")
    assert (hw.sfu.norm_passes, hw.sfu.softmax_passes) == (2, 2)
    assert sfu_passes(hw, "norm") == 2 and sfu_passes(hw, "norm", True) == 3
    assert sfu_passes(hw, "softmax") == 2
    assert [sfu_passes(hw, f) for f in ("mul", "reluq", "rope", "silu", "add")] == [2, 2, 1, 1, 1]


def test_roofline_is_a_1_mib_run():
    """The roofline streams 1 MiB runs. With 96-byte bursts (3 port beats) on a tiny copy whose
    core side never binds (1 GHz, 1024-byte words: 256 B per channel per 1 ns cycle):
    1 MiB = 10922 bursts of 96 B (device-bound, 96 / DEVICE_GBPS ns each) + a 64 B remainder,
    bound by latency / outstanding = 107 / 16 ns (its device time is 64 / 13.42 = 4.8 ns).
    (A 2 MiB run would end in a 32 B remainder: 21845 full bursts, a slightly other figure.)
    The shipped tiny moves 128-byte words at 100 MHz: 12.8 GB/s, below its 4 channels."""
    tiny = load_hw("tiny")
    fast = tiny.model_copy(
        update={
            "clock_mhz": 1000,
            "buffers": tiny.buffers.model_copy(update={"word_bytes": 1024}),
        }
    )
    hw = fast.model_copy(update={"hbm": fast.hbm.model_copy(update={"max_burst_bytes": 96})})
    run_ns = 10922 * 96 / DEVICE_GBPS + 107 / 16
    assert hbm_achievable_gbps(hw) == pytest.approx(4 * 2**20 / run_ns, rel=1e-12)
    # the shipped 512 B bursts divide 1 MiB: all device-bound, 4 channels at DEVICE_GBPS
    assert hbm_achievable_gbps(fast) == pytest.approx(4 * DEVICE_GBPS, rel=1e-12)
    assert hbm_achievable_gbps(tiny) == pytest.approx(128 * 100e6 / 1e9, rel=1e-12)


# --------------------------------------------------------------------------------------------
# The SFU instruction's cycles (costs.sfu_op_cost), worked out by hand on tiny.yaml: 4 lanes,
# pipeline latency 8, norm and softmax 2 passes each. A pass of a row of C elements takes
# P = ceil(C / 4) group slots. The per-row scalar engines take result bits at 8 per cycle plus
# one start cycle per operation, and the row's state moves one cycle later:
# * the quantization reciprocal (127 << QROW_SHIFT = 46) // M: 53 bits, rounded up to 56:
#   56 / 8 + 1 = 8, +1 -> S = 9 cycles (mul, reluq, softmax);
# * the norm: a division of 16 + 2 * NORM_FRAC (= 30) = 76 bits, rounded up to 80 (the root
#   then has 40): (80 / 8 + 1) + (40 / 8 + 1) + 1 -> S = 18 cycles.


def _tiny_sfu(**update):
    tiny = load_hw("tiny")
    return tiny.model_copy(update={"sfu": tiny.sfu.model_copy(update=update)}) if update else tiny


def _op(beats: int) -> OpCost:
    """An SFU instruction's cost: no MACs, results tiny's 8 pipeline cycles after the last slot."""
    return OpCost(beats=beats, latency=beats + 8, macs=0, dense_macs=0)


def test_sfu_scalar_engine_cycles_by_hand():
    assert [sfu_scalar_cycles(f) for f in ("norm", "mul", "reluq", "softmax")] == [18, 9, 9, 9]
    # functions without per-row scalars wait for none
    assert [sfu_scalar_cycles(f) for f in ("add", "silu", "rope", "mov")] == [0, 0, 0, 0]
    assert all(type(sfu_scalar_cycles(f)) is int for f in ("norm", "mul", "add"))


def test_sfu_lane_rate_reads_once_by_default():
    """10 elements, one pass by default: ceil(10 / 4) = 3 beats."""
    assert sfu_cost(_tiny_sfu(), 10) == _op(3)


def test_one_row_instructions_expose_their_scalars():
    """One row: statistics pass (P slots), the scalars (S cycles from its last slot), then the
    output pass (P): 2P + S - 1 slots. RMSNorm is the norm without ``center`` (2 passes)."""
    hw = _tiny_sfu()
    assert sfu_op_cost(hw, "norm", 1, 16) == _op(2 * 4 + 18 - 1)  # 25
    assert sfu_op_cost(hw, "mul", 1, 16) == _op(2 * 4 + 9 - 1)  # 16
    # a row within one group (P = 1): statistics in slot 0, scalars ready at 0 + 18
    assert sfu_op_cost(hw, "norm", 1, 4) == _op(2 * 1 + 18 - 1)  # 19
    # LayerNorm: one more statistics pass (2P of statistics): 3P + S - 1
    assert sfu_op_cost(hw, "norm", 1, 16, center=True) == _op(3 * 4 + 18 - 1)  # 29
    assert all(type(sfu_op_cost(hw, f, 2, 16).beats) is int for f in ("norm", "mul", "rope"))


def test_long_rows_hide_the_scalars():
    """Rows longer than the scalar work (P = 20 >= S = 18): the output pass of row 0 runs
    after the statistics of row 1, every slot busy: 2 passes x 2 rows x 20 = 80 slots."""
    assert sfu_op_cost(_tiny_sfu(), "norm", 2, 80) == _op(80)


def test_softmax_rows_by_hand():
    """Row r: maximum pass (P), numerator pass (P), then its factor write S = 9 cycles after
    its last numerator slot, which steals the writer for one cycle if the next row's numerator
    pass is on then; a row's output ends only after the previous row's factor is out, and the
    last row's factor write adds S - 2 = 7 slots after the row's end. Two rows, P = 4: row 0 max 0-3, numerators 4-7, factor at 7 + 8 = 15; row 1 max
    8-11, numerators 12-15, stalled one cycle by the factor -> 16; next slot 17; the last
    factor 17 + 7: 24 slots."""
    hw = _tiny_sfu()
    assert sfu_op_cost(hw, "softmax", 2, 16) == _op(24)
    # P = 3: row 1's numerators end at 11, but row 0's factor is written at 5 + 8 = 13 and the
    # row ends after it (14); next slot 15, + 7: 22
    assert sfu_op_cost(hw, "softmax", 2, 12) == _op(22)
    # P = 7: row 0 ends 13, factor at 21 = the first numerator slot of row 1 (21-27): stall,
    # 28; next 29, + 7: 36
    assert sfu_op_cost(hw, "softmax", 2, 28) == _op(36)
    # P = 8: row 0 ends 15, factor at 23, one slot before row 1's numerators (24-31): no
    # stall; next 32, + 7: 39
    assert sfu_op_cost(hw, "softmax", 2, 32) == _op(39)
    # one row, P = 4: 2P + S - 2 = 15
    assert sfu_op_cost(hw, "softmax", 1, 16) == _op(15)
    # a preset with 3 softmax passes streams them row after row: 3 x 1 x 4
    assert sfu_op_cost(_tiny_sfu(softmax_passes=3), "softmax", 1, 16) == _op(12)


def test_rope_half_heads_and_port_turns():
    """RoPE takes a half head per group (head_dim 6: halves of 3 elements, one slot each):
    12 elements are 4 slots, not ceil(12 / 4) = 3; plus 2 slots for its four streams on two
    ports (+2 more when ``shared``). ``head_dim`` concerns RoPE only."""
    hw = _tiny_sfu()
    assert sfu_op_cost(hw, "rope", 1, 12, head_dim=6) == _op(4 + 2)
    assert sfu_op_cost(hw, "rope", 1, 12, head_dim=6, shared=True) == _op(4 + 2 + 2)
    assert sfu_op_cost(hw, "rope", 2, 12) == _op(2 * 3 + 2)  # no head_dim: whole rows
    assert sfu_op_cost(hw, "add", 3, 12, head_dim=6) == _op(3 * 3)
    assert sfu_op_cost(hw, "add", 3, 10, shared=True) == _op(3 * 3 + 2)
    assert sfu_op_cost(hw, "silu", 1, 1) == _op(1)
    assert type(sfu_op_cost(hw, "rope", 1, 12, head_dim=6).beats) is int


def test_one_pass_norm_waits_for_the_scalar_engines():
    """A preset whose norm reads its input once (``norm_passes`` 1: no statistics slots, but
    a row's statistics latch takes a slot). P = 20, S = 18, 3 rows. The scalar engines hold a
    row's scalars until that row's output pass ends, and a row's latch waits for them:
    row 0 latches at 0, its scalars ready at 18; row 1 latches at 18; row 0's output 19-38;
    row 1's scalars (done at 36) free the engines only after 38: ready 39; row 2 latches at
    39; row 1's output 40-59; ready 60; row 2's output 60-79: 80 slots."""
    assert sfu_op_cost(_tiny_sfu(norm_passes=1), "norm", 3, 80) == _op(80)


def test_empty_sfu_instructions_cost_nothing():
    """A tile past the runtime length (0 rows or 0 columns) still syncs but costs 0 cycles."""
    hw = _tiny_sfu()
    zero = OpCost(beats=0, latency=0, macs=0, dense_macs=0)
    for func in ("norm", "softmax", "add"):
        assert sfu_op_cost(hw, func, 0, 16) == zero
        assert sfu_op_cost(hw, func, 3, 0) == zero


def test_shared_read_port_cases():
    """One read port per buffer: RoPE always shares; the norm when its input sits in PARAM
    with its gains; add and mul when both operands are in one buffer; nothing else."""
    assert sfu_shared_port("rope", Buf.ACT, Buf.KV)
    assert sfu_shared_port("norm", Buf.PARAM, Buf.ACT)
    assert not sfu_shared_port("norm", Buf.ACT, Buf.ACT)
    assert sfu_shared_port("add", Buf.ACT, Buf.ACT) and sfu_shared_port("mul", Buf.KV, Buf.KV)
    assert not sfu_shared_port("add", Buf.ACT, Buf.KV)
    assert not sfu_shared_port("silu", Buf.ACT, Buf.ACT)


# --------------------------------------------------------------------------------------------
# Mechanisms of the matmul unit and the HBM split that hold whatever their prices are (other
# work changes the price formulas; these do not restate them).


def test_matmul_unit_counts_and_bit_sliced_tokens():
    """A unit op is :func:`matmul_cost` plus the unit's feed and drain stages (3 + 7 cycles)
    of latency. Bit-sliced P x V on the 2-lane MPE takes the beats of 2 x 3 tokens; MACs count
    the real ones: 3 tokens x 5 rows x (32 / 16 blocks) x 4 kept = 120 (dense 3 x 5 x 32)."""
    e = load_hw("tiny").mpe
    plain, sliced = (
        matmul_unit_cost(e, 16, 3, 5, 32, 4),
        matmul_unit_cost(e, 16, 3, 5, 32, 4, sliced=True),
    )
    base, six = matmul_cost(e, 16, 3, 5, 32, 4), matmul_cost(e, 16, 6, 5, 32, 4)
    assert (plain.beats, plain.latency) == (base.beats, base.latency + 3 + 7)
    assert (sliced.beats, sliced.latency) == (six.beats, six.latency + 3 + 7)
    assert sliced.beats > plain.beats  # 3 token passes instead of 2
    for c in (plain, sliced):
        assert (c.macs, c.dense_macs) == (120, 480)
        assert type(c.macs) is int and type(c.dense_macs) is int


def test_core_port_is_whole_bytes():
    """tiny: 128-byte buffer words over 4 channels: 32 bytes per channel per cycle."""
    assert core_port_bytes(load_hw("tiny")) == 32
    assert type(core_port_bytes(load_hw("tiny"))) is int


def test_hbm_split_at_granule_edges():
    """tiny interleaves 256-byte granules over 4 channels. A transfer that ends at or just
    before a granule's end stays in its channel (no empty piece in the next); one that starts
    mid-granule and wraps round to its first channel sums both ends there: [128, 1152) is
    128 + 128 bytes in channel 0 and a whole granule in each of 1, 2, 3."""
    hw = load_hw("tiny")
    assert [(p.channel, p.nbytes) for p in hbm_pieces(hw, 0, 256)] == [(0, 256)]
    assert [(p.channel, p.nbytes) for p in hbm_pieces(hw, 0, 255)] == [(0, 255)]
    assert [(p.channel, p.nbytes) for p in hbm_pieces(hw, 128, 1024)] == [
        (0, 256),
        (1, 256),
        (2, 256),
        (3, 256),
    ]


def test_hbm_pieces_carry_the_write_and_the_row_miss():
    """A store's pieces are writes; a hop row pays tiny's row miss (31 ns) on top of its run:
    64 bytes are 2 core-side cycles (32 B per cycle at 100 MHz: 20 ns, longer than the port,
    device and latency bounds), so 2 cycles in an open row and ceil(5.1) = 6 with the miss."""
    hw = load_hw("tiny")
    assert [p.write for p in hbm_pieces(hw, 0, 64, write=True)] == [True]
    assert [p.write for p in hbm_pieces(hw, 0, 64)] == [False]
    assert [(p.occupancy, p.same_channel) for p in hbm_pieces(hw, 0, 64)] == [(2, True)]
    assert [(p.occupancy, p.same_channel) for p in hbm_pieces(hw, 0, 64, hop=True)] == [(6, False)]


def test_hbm_runs_by_hand():
    """tiny: 256-byte granules. Rows contiguous in HBM (stride = row bytes, or a single row
    whatever its stride) are one run from the first byte; nothing to move (no rows, or rows
    of 0 bytes) is no run; strided rows are one run each, ``stride`` apart, a hop (a new DRAM
    row) when shorter than a granule (64 bytes) and not when a whole one (256 bytes)."""
    from hwflow.costs import hbm_runs

    hw = load_hw("tiny")
    assert hw.hbm.interleave_bytes == 256
    assert hbm_runs(hw, 512, 0, 64, 64) == [] and hbm_runs(hw, 512, 3, 0, 64) == []
    assert hbm_runs(hw, 512, 4, 64, 64) == [(512, 256, False)]
    assert hbm_runs(hw, 512, 1, 64, 1024) == [(512, 64, False)]
    assert hbm_runs(hw, 512, 1, 1, 1) == [(512, 1, False)]
    assert hbm_runs(hw, 0, 2, 64, 1024) == [(0, 64, True), (1024, 64, True)]
    assert hbm_runs(hw, 0, 3, 256, 1024) == [
        (0, 256, False),
        (1024, 256, False),
        (2048, 256, False),
    ]
