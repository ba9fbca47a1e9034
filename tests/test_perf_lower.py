"""Hand-made ISA programs (built with hwflow.isa's own encoder) through expand -> lower -> SimPy."""

from __future__ import annotations

import pytest

from hwflow.config import load_hw
from hwflow.costs import matmul_cost
from hwflow.errors import CapacityError, UnsupportedError
from hwflow.isa import (
    Buf,
    MatmulFunc,
    Runtime,
    SfuFunc,
    SoftmaxMask,
    Template,
    Unit,
    XferKind,
    decode_stream,
    encode_stream,
    expand,
    make,
)
from hwflow.perf.lower import lower
from hwflow.perf.machine import Machine

LD, ST, MM, MV, SFU = (1 << u for u in (Unit.LD, Unit.ST, Unit.MM, Unit.MV, Unit.SFU))


@pytest.fixture(scope="module")
def tiny():
    return load_hw("tiny")


def template(instrs, phase="decode", lo=1, hi=64) -> Template:
    # round-trip through the binary encoding: the model runs decoded words, not Python objects
    return Template(phase, lo, hi, decode_stream(encode_stream([*instrs, make("END")])))


def test_ld_mv_st_program_timeline(tiny):
    rows_b = 16 * 18  # 16 output rows x (8 kept INT4 + 8 indices + ... ) bytes, any size
    prog = template(
        [
            make(
                "LD",
                release=MV,
                kind=XferKind.WEIGHTS,
                hbm=0,
                hbm_stride=rows_b,
                buf=Buf.WEIGHT,
                row_bytes=rows_b,
                rows=1,
            ),
            make(
                "MV",
                wait=LD,
                release=ST,
                func=MatmulFunc.LINEAR,
                rows=1,
                cols=64,
                k=256,
                n=4,
                m=16,
                wbits=4,
            ),
            make(
                "ST",
                wait=MV,
                kind=XferKind.LOGITS,
                hbm=1 << 20,
                hbm_stride=64,
                buf=Buf.ACT,
                row_bytes=64,
                rows=1,
            ),
        ]
    )
    ops, acts = lower(tiny, expand(prog, Runtime(1, 0)))
    r = Machine(tiny, trace=True).run(ops)
    # By hand from tiny.yaml (100 MHz; HBM: 256 B granules over 4 channels, 14.375 GB/s less
    # the refresh share 260 / 3900 = 13.417 GB/s, 256-bit port at 450 MHz, 107 ns latency with
    # 16 bursts in flight, 10 ns turnaround; MV: 2 chains x 16, 2 requantizers, 28 stages):
    # * LD 288 B from 0: 256 B in channel 0 (device-bound: 256 / 13.417 = 19.1 ns -> 2
    #   cycles) and 32 B in channel 1 (latency-bound: 107 / 16 = 6.7 ns -> 1), but the core
    #   side of a channel moves 128-B buffer words / 4 channels = 32 B per cycle: 256 / 32 = 8
    #   cycles in channel 0: occupancy 8; the data lands 107 ns = 10.7 -> 11 cycles after.
    # * MV 64 rows x K 256 at 4:16: row groups of 2 chains x 16 / 4 = 8 rows, 8 groups of
    #   256 / 16 = 16 beats (their 8 x 1 / 2 = 4 drain words hide behind them): 128 beats;
    #   the last group starts at 112 and ends at 128, + 28 pipeline stages + 4 drain words - 1,
    #   + the matmul unit's 3 feed and 7 drain stages (costs.UNIT_*_STAGES): latency 169.
    # * ST 64 B at 1 MiB (granule 4096, channel 0): latency-bound 6.7 ns + 2 x 10 ns
    #   turnaround = 26.7 ns, but its core side 64 / 32 = 2 cycles = 20 ns + 20 ns turnaround
    #   = 40 ns -> 4 cycles.
    # * LD/ST: the channels see a transfer 1 cycle after it starts (costs.LDST_REQUEST_STAGES);
    #   an LD's tokens are out 2 cycles after its last beat lands, an ST's 1 after its
    #   response (LD_DONE_STAGES, ST_DONE_STAGES).
    lat, ld_occ, mv_beats, mv_latency, st_occ = 11, 8, 128, 169, 4
    ld_start = 6  # the dispatcher reads LD's 6 words first
    mv_start = ld_start + 1 + ld_occ + lat + 2
    st_start = mv_start + mv_latency
    assert [(u, s, e) for u, _, s, e in r.trace] == [
        ("ld", ld_start + 1, ld_start + 1 + ld_occ),
        ("mv", mv_start, mv_start + mv_beats),
        ("st", st_start + 1, st_start + 1 + st_occ),
    ]
    assert r.cycles == st_start + 1 + st_occ + lat + 1
    assert acts.macs == {4: 64 * 256 // 16 * 4} and acts.hbm_read_bytes == rows_b
    # LD and ST 6 words, MV 10 (9 before ISA v5's brow)
    assert acts.hbm_write_bytes == 64 and acts.instr_words == 6 + 10 + 6


def test_loop_and_length_register(tiny):
    """A loop of 3 SFU ops whose row count is clamped by LEN (R1): one expansion, one pricing."""
    prog = template(
        [
            make("LOOP", count=3),
            make("SFU", func=SfuFunc.SILU, rows=8, rows_reg=1, cols=32),
            make("ENDLOOP"),
        ],
        phase="prefill",
        lo=1,
        hi=8,
    )
    ops, acts = lower(tiny, expand(prog, Runtime(5, 0)))
    # silu, one pass: 5 rows x 32 = 160 elements on tiny's 4 lanes = 40 beats, + 8 stages
    assert [(o.beats, o.latency) for o in ops] == [(40, 48)] * 3
    assert acts.sfu_ops == 3 * 5 * 32


def test_buffer_overflow_is_a_capacity_error(tiny):
    prog = template(
        [
            make(
                "LD",
                kind=XferKind.WEIGHTS,
                hbm=0,
                hbm_stride=1024,
                buf=Buf.WEIGHT,
                row_bytes=1024,
                rows=17,
            )
        ]
    )
    with pytest.raises(CapacityError, match=r"weight buffer bytes \[0, 17408\) but preset tiny"):
        lower(tiny, expand(prog, Runtime(1, 0)))


def test_cost_free_fields_do_not_change_a_price(tiny):
    """Step signatures skip instructions whose POS-dependent fields are all in _COST_FREE (on-chip
    offsets, the mask position): moving those fields must not change any op's price, and equal
    prices are one object. A cost that starts to depend on one of them fails here."""
    from hwflow.perf.lower import _COST_FREE, _pricer

    cases = [
        make(
            "MV",
            func=MatmulFunc.LINEAR,
            rows=1,
            cols=16,
            k=64,
            n=4,
            m=16,
            wbits=4,
            a_buf=1,
            b_buf=0,
            o_buf=1,
        ),
        make(
            "MV",
            func=MatmulFunc.QK,
            rows=1,
            cols=48,
            k=16,
            n=1,
            m=1,
            wbits=8,
            a_buf=1,
            b_buf=2,
            o_buf=3,
        ),
        make(
            "SFU", func=SfuFunc.SOFTMAX, rows=1, cols=48, a_buf=3, o_buf=3, mask=SoftmaxMask.CAUSAL
        ),
        make("SFU", func=SfuFunc.MOV, rows=1, cols=16, a_buf=1, o_buf=2),
        make(
            "ST", kind=XferKind.KV, hbm=4096, rows=2, row_bytes=16, hbm_stride=512, buf=1, stride=16
        ),
        make(
            "LD", kind=XferKind.KV, hbm=4096, rows=3, row_bytes=16, hbm_stride=16, buf=2, stride=16
        ),
    ]
    price = _pricer(tiny).price
    for ins in cases:
        moved = {f: 64 for f in _COST_FREE if f in ins.fields}
        assert moved
        a = price(next(iter(expand(template([ins]), Runtime(1, 0)))))
        b = price(
            next(iter(expand(template([make(ins.op, **{**ins.fields, **moved})]), Runtime(1, 0))))
        )
        assert a is b, ins.op


@pytest.mark.parametrize(
    ("func", "aux", "passes", "a_bytes", "b_bytes", "o_bytes", "row_factor"),
    [
        (
            SfuFunc.NORM,
            0,
            2,
            4,
            2,
            1,
            True,
        ),  # RMSNorm: INT32 in, INT16 gains, INT8 + row factor out
        (SfuFunc.NORM, 1, 3, 4, 2, 1, True),  # LayerNorm: a centring pass more
        (SfuFunc.SOFTMAX, 0, 2, 4, 0, 1, True),  # softmax: INT32 scores -> UINT8 p + 1/S
        (SfuFunc.SILU, 0, 1, 2, 0, 2, False),  # silu: INT16 -> INT16
        (SfuFunc.ADD, 0, 1, 4, 4, 4, False),  # residual add: INT32 + INT32
        (SfuFunc.MUL, 0, 2, 2, 2, 1, True),  # gated product: a row-max pass, INT8 + row factor
        (SfuFunc.RELUQ, 0, 2, 2, 0, 1, True),  # OPT ReLU quantized per row
    ],
)
def test_sfu_prices_passes_and_element_bytes_of_the_contract(
    tiny, func, aux, passes, a_bytes, b_bytes, o_bytes, row_factor
):
    """Cycles: 5 groups of 4 lanes per row and pass (tiny: 4 lanes, 8 latency stages), plus
    what the per-row scalars cannot hide (costs.sfu_op_cost's mechanism, by hand: norm 18
    scalar cycles, mul/reluq/softmax 9); buffer bits: every pass reads A at its width, B (or
    the norm's gains) once, the output once with a 32-bit row factor per row: the numbers of
    the numerics contract, written out by hand."""
    rows, cols = 3, 20
    prog = template([make("SFU", func=func, rows=rows, cols=cols, aux=aux, a_buf=1, o_buf=1)])
    ops, acts = lower(tiny, expand(prog, Runtime(1, 0)))
    # interleaved rows (stats(k), out(k-1)): norm's rows 2 and 3 start their last statistics
    # group 18 cycles after the previous row's (slots 4, 22, 40), out(2) 18 after that: 58 + 5;
    # LayerNorm likewise from slot 9 (9, 27, 45; 63 + 5); mul/reluq 9 apart (4, 13, 23; the
    # last output pass from slot 32: 37); softmax: 2 x 5 per row, each row's factor write takes
    # one writer slot of the next row's output pass (+1, +1), the last one's exposed 7: 39
    hand = {
        (SfuFunc.NORM, 0): 63,
        (SfuFunc.NORM, 1): 68,
        (SfuFunc.SOFTMAX, 0): 39,
        (SfuFunc.MUL, 0): 37,
        (SfuFunc.RELUQ, 0): 37,
    }
    beats = hand.get((func, aux), passes * rows * cols // 4)
    assert (ops[0].beats, ops[0].latency) == (beats, beats + 8)
    assert acts.sfu_ops == passes * rows * cols
    assert acts.buffer_read_bits == rows * cols * 8 * (a_bytes * passes + b_bytes)
    assert acts.buffer_write_bits == rows * cols * 8 * o_bytes + (32 * rows if row_factor else 0)


@pytest.mark.parametrize(("obits", "arow"), [(8, 1), (16, 1), (32, 0), (32, 1)])
def test_matmul_writes_its_output_width_and_reads_row_factors(tiny, obits, arow):
    """A linear op writes rows x cols elements of obits bits and, with arow, reads one 32-bit
    row factor per input row besides the beats' operands (dense INT8 on tiny's MV: one M-block
    of 16 INT8 activations and 2 chains x 16 weight slots of 8 bits per beat)."""
    rows, cols, k = 1, 16, 64
    ins = make("MV", func=MatmulFunc.LINEAR, rows=rows, cols=cols, k=k, n=16, m=16, wbits=8,
               a_buf=Buf.ACT, b_buf=Buf.WEIGHT, o_buf=Buf.ACT, obits=obits, arow=arow)  # fmt: skip
    _, acts = lower(tiny, expand(template([ins]), Runtime(1, 0)))
    # dense: row groups of 2 chains x 16 / 16 = 2 rows, 16 / 2 = 8 groups of 64 / 16 = 4 beats
    beats = 8 * 4
    assert acts.buffer_write_bits == rows * cols * obits
    assert acts.buffer_read_bits == beats * (16 * 8 + 2 * 16 * 8) + 32 * rows * arow


def test_drain_bound_matmul_reads_only_its_operand_beats(tiny):
    """tiny MV at 2:16: 2 chains x 16/2 = 16 rows per beat, whose 16 results drain through 2
    requantizers in 8 cycles, while K = 16 is one beat: each row group holds the input 8
    cycles but reads its operands in 1. cols = 32 is 2 groups: 16 cycles, 2 operand beats of
    16 INT8 activations + 2 x 16 slots of (8-bit value + 4-bit index) = 512 bits each."""
    ins = make("MV", func=0, rows=1, cols=32, k=16, n=2, m=16, wbits=8, a_buf=1, b_buf=0,
               o_buf=1, obits=8, arow=0)  # fmt: skip
    ops, acts = lower(tiny, expand(template([ins]), Runtime(1, 0)))
    assert ops[0].beats == 16
    assert acts.buffer_read_bits == 2 * 512


def test_matmul_with_a_weight_group_prices_latency_and_multiplier_reads(tiny):
    """wgroup 5 (G = 32): the same beats, 3 cycles more latency (costs.GROUP_STAGES: the
    partial's register, the multiply by the group's multiplier, the add into the row
    accumulator) and the multipliers
    read once: cols x K/G bytes (16 x 2 x 8 bits)."""
    fields = dict(func=0, rows=1, cols=16, k=64, n=16, m=16, wbits=4, a_buf=1, b_buf=0, o_buf=1)
    plain, plain_acts = lower(tiny, expand(template([make("MV", **fields)]), Runtime(1, 0)))
    ops, acts = lower(tiny, expand(template([make("MV", **fields, wgroup=5)]), Runtime(1, 0)))
    assert ops[0].beats == plain[0].beats
    assert ops[0].latency == plain[0].latency + 3
    assert acts.buffer_read_bits == plain_acts.buffer_read_bits + 16 * 2 * 8
    with pytest.raises(
        UnsupportedError, match="weight group 8 is not a multiple of the block M = 16"
    ):
        matmul_cost(tiny.mv, 16, 1, 16, 64, 16, group=8)
