"""Fast Amaranth-simulator tests of the engine's blocks, checked against hwflow.numerics."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from amaranth.hdl import Module, Signal, signed
from amaranth.sim import Simulator

from hwflow import numerics as nx
from hwflow.config import load_hw
from hwflow.errors import UnsupportedError
from hwflow.hw import EngineParams, MatrixMatrixEngine, MatrixVectorEngine
from hwflow.hw.dsp import DspChain, unpack_dual
from hwflow.hw.pack import decode, encode
from hwflow.hw.params import DUAL_ACT_MIN
from hwflow.hw.requant import Requantizer
from hwflow.hw.stimulus import (
    make_op,
    op_beats,
    op_params,
    op_results,
    op_words,
    param_writes,
    per_token_requantize,
)
from hwflow.hw.widen import WeightWidener


def _run(dut, bench, clock: bool = True) -> None:
    sim = Simulator(dut)
    if clock:
        sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_widener_matches_unpack_bits(bits: int) -> None:
    rng = np.random.default_rng(bits)
    slots = 16
    dut = WeightWidener(slots=slots, bits=(2, 3, 4, 8))
    q = nx.qmax(bits)
    vectors = [rng.integers(-q - 1, q + 1, size=slots) for _ in range(20)]

    async def bench(ctx) -> None:
        for v in vectors:
            packed = nx.pack_bits(v, bits)
            ctx.set(dut.packed, int.from_bytes(packed.tobytes(), "little"))
            ctx.set(dut.sel, (2, 3, 4, 8).index(bits))
            got = [ctx.get(dut.values[i]) for i in range(slots)]
            assert got == list(nx.unpack_bits(packed, bits, slots))

    _run(dut, bench, clock=False)


def test_requantizer_matches_numerics() -> None:
    rng = np.random.default_rng(5)
    dut = Requantizer(acc_bits=48)
    n = 400
    acc = rng.integers(-(2**40), 2**40, size=n)
    acc[:50] = rng.integers(-(2**12), 2**12, size=50)
    bias = rng.integers(-(2**31), 2**31, size=n)
    mult = rng.integers(0, 2**15, size=n)
    shift = rng.integers(0, 48, size=n)
    shift[:8] = [0, 1, 47, 0, 1, 2, 47, 46]  # shift 0 (no rounding) and the extremes
    raw = rng.random(n) < 0.1
    expected = np.where(raw, acc, nx.requantize(acc + bias, mult, shift).astype(np.int64))

    async def bench(ctx) -> None:
        got = []
        for i in range(n + 4):
            if i < n:
                ctx.set(dut.acc, int(acc[i]))
                ctx.set(dut.bias, int(bias[i]))
                ctx.set(dut.mult, int(mult[i]))
                ctx.set(dut.shift, int(shift[i]))
                ctx.set(dut.raw, int(raw[i]))
            await ctx.tick()
            if i >= 4:
                # bias, multiply (partial products, their sum), rounding add, shift: five
                # registers, then combinational
                got.append(ctx.get(dut.out))
        assert got == [int(v) for v in expected]

    _run(dut, bench)


def test_per_token_requantizer_matches_its_formula() -> None:
    """The per-token option: a second multiply by the token's scale after an INT32
    saturation, against the formula written out from the numerics primitives."""
    rng = np.random.default_rng(6)
    dut = Requantizer(acc_bits=48, per_token=True)
    n = 300
    acc = rng.integers(-(2**40), 2**40, size=n)
    acc[:60] = rng.integers(-(2**20), 2**20, size=60)
    bias = rng.integers(-(2**31), 2**31, size=n)
    mult, shift = rng.integers(0, 2**15, size=n), rng.integers(0, 48, size=n)
    tmult, tshift = rng.integers(0, 2**15, size=n), rng.integers(0, 48, size=n)
    tshift[:100] = rng.integers(14, 30, size=100)  # in range, not only saturated
    raw = rng.random(n) < 0.1
    want = [
        int(acc[i])
        if raw[i]
        else int(
            per_token_requantize(
                np.array([[acc[i] + bias[i]]]),
                mult[i : i + 1],
                shift[i : i + 1],
                tmult[i : i + 1],
                tshift[i : i + 1],
            )[0, 0]
        )
        for i in range(n)
    ]
    assert len(set(want)) > 50  # not all saturated

    async def bench(ctx) -> None:
        got = []
        for i in range(n + 9):
            if i < n:
                for port, v in (
                    ("acc", acc),
                    ("bias", bias),
                    ("mult", mult),
                    ("shift", shift),
                    ("mult_t", tmult),
                    ("shift_t", tshift),
                    ("raw", raw),
                ):
                    ctx.set(getattr(dut, port), int(v[i]))
            await ctx.tick()
            if i >= 9:
                # five registers, then INT32 saturation, multiply (two), rounding add, shift
                got.append(ctx.get(dut.out))
        assert got == want

    _run(dut, bench)


@pytest.mark.parametrize("dual", [False, True])
def test_dsp_chain_prefix_sums(dual: bool) -> None:
    """Stage j's P holds the beat's prefix sum of products 0..j, 3 + j cycles on."""
    rng = np.random.default_rng(1)
    length, field = 8, 17
    dut = DspChain(length=length, acc_bits=48, dual=dual, field=field)
    beats = 30
    # the upper operand a >= DUAL_ACT_MIN (the engine clamps): the pre-adder's 8 + F bits
    a = rng.integers(DUAL_ACT_MIN if dual else -128, 128, size=(beats, length))
    d = rng.integers(-128, 128, size=(beats, length))
    b = rng.integers(-127, 128, size=(beats, length))
    prod = (a * 2**field + d) * b if dual else a * b

    async def bench(ctx) -> None:
        seen = {}
        for cyc in range(beats + length + 4):
            if cyc < beats:
                for j in range(length):
                    ctx.set(dut.a[j], int(a[cyc, j]))
                    ctx.set(dut.b[j], int(b[cyc, j]))
                    if dual:
                        ctx.set(dut.d[j], int(d[cyc, j]))
            await ctx.tick()
            for j in range(length):
                t = cyc - 2 - j  # the beat whose stage-j sum is in P[j] now
                if 0 <= t < beats:
                    seen[(t, j)] = ctx.get(dut.p[j])
        for t in range(beats):
            for j in range(length):
                assert seen[(t, j)] == int(prod[t, : j + 1].sum()), (t, j)

    _run(dut, bench)


def test_unpack_dual_splits_packed_sums() -> None:
    rng = np.random.default_rng(2)
    field = 19
    p = Signal(signed(48))
    hi, lo = Signal(signed(48)), Signal(signed(48))
    m = Module()
    h, lo_v = unpack_dual(p, field)
    m.d.comb += [hi.eq(h), lo.eq(lo_v)]
    cases = [(int(x), int(y)) for x, y in rng.integers(-(2**18), 2**18, size=(200, 2))]
    cases += [(-(2**18), -(2**18)), (2**18 - 1, 2**18 - 1), (0, -1), (-1, 0)]

    async def bench(ctx) -> None:
        for x, y in cases:
            ctx.set(p, x * 2**field + y)
            assert (ctx.get(hi), ctx.get(lo)) == (x, y)

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()


def test_pack_round_trip() -> None:
    p = EngineParams.from_preset(load_hw("tiny"), "mpe")
    value = {"data": [2**47 - 1, -(2**47)], "last": 1, "raw": 0}
    assert decode(p.result_layout, encode(p.result_layout, value)) == value
    # a row group at N = 4: 8 lanes x 2 token lanes in 8 words of R = 2, token lane by lane
    words = [{"data": [10 * w, 10 * w + 1], "last": int(w == 7), "raw": 0} for w in range(8)]
    got = p.result_values(words, 4)
    assert got[0][:8] == [0, 1, 10, 11, 20, 21, 30, 31] and got[1][6:8] == [70, 71]
    assert got[0][8:] == [0] * 8  # lanes past chains*C/N


def test_params_from_presets() -> None:
    tiny = load_hw("tiny")
    mv = EngineParams.from_preset(tiny, "mv")
    assert (mv.chains, mv.chain_length, mv.rows, mv.m) == (2, 16, 1, 16)
    assert mv.n_modes == (2, 4, 8, 16) and mv.weight_bits == (2, 3, 4, 8)
    # 2 chains x 16 stages, plus the group stage's 8 slots (C / smallest N 2) per chain
    assert mv.lanes == 16 and mv.latency == 16 + 12 and mv.dsps == 2 * 16 + 2 * 8
    assert mv.requantizers == 2 and mv.drain_cycles(2) == 8 and mv.drain_cycles(16) == 1
    mpe = EngineParams.from_preset(tiny, "mpe")
    # dual INT8: 2 chains x 16 stages for 2 token lanes; group stage 2 x 8 slots x 2 lanes
    assert mpe.dual_int8 and mpe.rows == 2 and mpe.dsps == 2 * 16 + 2 * 8 * 2
    assert mv.dsps + mpe.dsps + 2 * (2 + 2) == tiny.dsps_used  # + 2 requantizers x 2 DSPs
    assert mpe.dual_field == 19  # 16 products of 128*127 need 19 signed bits
    u280 = EngineParams.from_preset(load_hw("u280"), "mv")
    assert u280.chains == 128 and u280.acc_bits == 48 and u280.requantizers == 16
    # FIFO: latency 28, the weight group's 3 stages (partial register, multiplier, add),
    # 2 x drain 64, 1 for the registered credit check
    assert u280.drain_max == 1024 // 16 and u280.fifo_depth == 28 + 3 + 2 * 64 + 1
    assert EngineParams.from_preset(load_hw("u280"), "mv", chains=4).requantizers == 4
    vhk = EngineParams.from_preset(load_hw("vhk158"), "mv")
    assert vhk.dsp_kind == "DSP58" and vhk.acc_bits == 58
    assert mv.with_chains(1).chains == 1
    with pytest.raises(UnsupportedError, match="engine 'sfu' unknown"):
        EngineParams.from_preset(tiny, "sfu")  # type: ignore[arg-type]
    with pytest.raises(UnsupportedError, match="needs mv params"):
        MatrixVectorEngine(mpe)


def _variant(name: str) -> EngineParams:
    if name == "tiny-mv":
        return EngineParams.from_preset(load_hw("tiny"), "mv")
    if name == "tiny-mpe":
        return EngineParams.from_preset(load_hw("tiny"), "mpe")
    if name == "tiny-mpe-no-dual":  # one DSP per token lane instead of WP486 packing
        return replace(EngineParams.from_preset(load_hw("tiny"), "mpe"), dual_int8=False)
    if name == "tiny-mpe-per-token":  # the per-token requantizer option
        return replace(EngineParams.from_preset(load_hw("tiny"), "mpe"), per_token=True)
    assert name == "vhk158-mv-slice"  # DSP58: 58-bit accumulators
    return EngineParams.from_preset(load_hw("vhk158"), "mv", chains=1)


@pytest.mark.parametrize(
    "variant",
    ["tiny-mv", "tiny-mpe", "tiny-mpe-no-dual", "tiny-mpe-per-token", "vhk158-mv-slice"],
)
def test_engine_in_amaranth_simulator(variant: str) -> None:
    """A few ops through the whole engine in Amaranth's simulator (Verilator benches do the
    exhaustive sweep): every drain word equals the numerics reference, ``last`` marks each
    row group's final word."""
    p = _variant(variant)
    eng = (MatrixVectorEngine if p.kind == "mv" else MatrixMatrixEngine)(p)
    rng = np.random.default_rng(4)
    ops = [
        make_op(p, rng, tokens=3 if p.rows > 1 and not r else 1, rows=20, k=32, n=n, bits=b, raw=r)
        for n, b, r in [(4, 4, False), (16, 8, False), (2, 2, True), (8, 3, False)]
    ]
    if not p.per_token:  # weight groups (numerics.weight_matmul), then an ungrouped op right after
        ops += [
            make_op(p, rng, tokens=p.rows + 1, rows=20, k=64, n=4, bits=4, group=32),
            make_op(p, rng, tokens=1, rows=3, k=48, n=16, bits=8, group=16),
        ]
    ops.append(make_op(p, rng, tokens=p.rows, rows=5, k=16, n=4, bits=8, extreme=True))
    beats, gmults, writes, expected = [], [], [], []
    first = 0
    for op in ops:
        beats += [encode(p.beat_layout, b) for b in op_beats(p, op, first)]
        gmults += [encode(p.gmult_layout, b.get("gmult", [])) for b in op_beats(p, op, first)]
        for r, entry in enumerate(op_params(p, op)):
            if entry is not None:
                writes += [encode(p.params_layout, w) for w in param_writes(p, entry, first + r)]
        expected += [w for res in op_words(p, op) for w in res]
        first += op_results(p, op)
    assert first < p.param_depth  # all parameters fit: written before the first beat
    got = []

    async def bench(ctx) -> None:
        ctx.set(eng.o.ready, 1)
        ctx.set(eng.p.valid, 1)
        for w in writes:
            ctx.set(eng.p.payload.as_value(), w)
            await ctx.tick()
        ctx.set(eng.p.valid, 0)
        bi = 0
        for _ in range(2 * len(beats) + len(expected) + 3 * p.latency):
            ctx.set(eng.i.valid, bi < len(beats))
            if bi < len(beats):
                ctx.set(eng.i.payload.as_value(), beats[bi])
                ctx.set(eng.gmult.as_value(), gmults[bi])
            if ctx.get(eng.o.valid):
                word = decode(p.result_layout, ctx.get(eng.o.payload.as_value()))
                got.append((word["data"], word["last"]))
            bi += int(bool(ctx.get(eng.i.valid) and ctx.get(eng.i.ready)))
            await ctx.tick()

    _run(eng, bench)
    assert got == expected
