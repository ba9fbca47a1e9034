"""The SFU's consumer: takes element groups, keeps the row statistics, writes the output.

Built into :class:`~hwflow.hw.machine.sfu.Sfu`'s module by :func:`build_consumer` (split out
to keep the unit's file short). States: ``IDLE`` (accept a command), ``START`` (per
instruction setup; the producer starts; a small divider makes the block mask's ``qpos //
blk``), ``PRE`` (the parameter words at ``p_off``), ``PASS`` (one group per cycle; passes and rows follow
each other without a gap in the order of :mod:`hwflow.hw.machine.sfu_seq`; the per-row
scalars run beside it in :mod:`hwflow.hw.machine.sfu_rows`), ``FLUSH`` (the last row factor
and the writer's last word, then ``done``).
"""

from __future__ import annotations

from typing import Any

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed

from hwflow.hw.machine.sfu_lanes import (
    add_lane,
    exp2_rom,
    norm_lane,
    quant_lane,
    rope_lane,
    sigmoid_rom,
    silu_lane,
    softmax_lane,
)
from hwflow.hw.machine.sfu_math import bit_length
from hwflow.hw.machine.sfu_rows import RowState, build_chain, factors
from hwflow.hw.machine.sfu_seq import advance
from hwflow.isa import ROW_FACTOR_BYTES

__all__ = ["build_consumer"]

_MIN32 = -(1 << 31)
#: Cycles from accepting a command to its first group: the segment push, two word reads (a
#: group may straddle two words) and the aligner; with the output register and the last
#: write this makes the preset's ``sfu.latency`` beyond the groups. Two cycles more when
#: two operand streams share a buffer's read port (two words each, taking turns); RoPE's
#: four streams on two ports two more.
FILL = 6


class _Regs(RowState):
    """The consumer's registers beside the row state (one namespace: short helpers)."""

    def __init__(self) -> None:
        super().__init__()
        self.k, self.pas, self.col = Signal(16), Signal(2), Signal(16)
        self.pos, self.half, self.first = Signal(16), Signal(), Signal()
        self.optr = Signal(24)
        self.qv, self.qb, self.qrem = Signal(17), Signal(16), Signal(16)
        self.p0, self.p1 = Signal(signed(32)), Signal(signed(32))
        self.cshift = Signal(5)
        self.cyc, self.start = Signal(32), Signal(32)
        self.o_valid, self.o_addr, self.o_n = Signal(), Signal(24), Signal(8)
        self.o_data = Signal(32 * 4 + 32)  # sized in build_consumer


def _elem(data: Value, lane: int, nbytes: int) -> Value:
    return data[8 * nbytes * lane : 8 * nbytes * (lane + 1)].as_signed()


def _sig(m: Module, v: Value, name: str) -> Signal:
    """``v`` through a named wire (keeps reduction chains from copying their operands)."""
    s = Signal.like(v, name=name)
    m.d.comb += s.eq(v)
    return s


def _lanes(u: Any, m: Module, c: Any, r: _Regs) -> dict[str, Value]:
    """Per-lane results and their row reductions for the current groups."""
    a0, a1, b0, b1 = (st.g.payload for st in u.streams)
    n = a0.n
    sig, exp2 = sigmoid_rom(), exp2_rom()
    m.submodules.sig_rom, m.submodules.exp2_rom = sig, exp2
    i = u.is_
    out = {k: [] for k in ("norm", "softmax", "rope", "silu", "add", "mul", "mov", "reluq")}
    M, mx = r.M, r.mx
    sxr = ss = S = Const(0, 1)
    qmask = _block_mask(m, c, r)
    is_out = r.pas == u.npass - 1
    sxr_use = _sig(m, Mux(is_out, r.sxr_C, r.sxr), "sxr_use")
    rope16 = []  # rotated keys: RoPE at INT16, into the Hadamard row buffer
    for lane in range(u.lanes):
        ok = lane < n
        xr, xc, y = norm_lane(
            m,
            _elem(a0.data, lane, 4),
            r.p0[:6],
            u.center,
            c.cols,
            r.cshift,
            sxr_use,
            _elem(b0.data, lane, 2),
        )
        g16 = _sig(m, _elem(a0.data, lane, 2), f"g{lane}")
        v = _sig(
            m,
            Mux(i["norm"], y, Mux(i["mul"], g16 * _elem(b0.data, lane, 2), Mux(g16 < 0, 0, g16))),
            f"v{lane}",
        )
        av = _sig(m, Mux(v < 0, -v, v), f"av{lane}")
        M = _sig(m, Mux(ok & (av > M), av, M), f"M{lane}")
        sxr = sxr + Mux(ok, xr, 0)
        ss = ss + Mux(ok, xc * xc, 0)
        q8 = quant_lane(m, v, r.recip_C)
        for name in ("norm", "mul", "reluq"):
            out[name].append(q8[:8])
        z = _elem(a0.data, lane, 4)
        kept = ok & qmask(r.col + lane)
        mx = _sig(m, Mux(kept & (z > mx), z, mx), f"mx{lane}")
        p = Mux(kept, softmax_lane(m, z, r.mx, exp2), 0)
        S = S + p
        out["softmax"].append(p[:8])
        out["rope"].append(
            rope_lane(
                m,
                _elem(a0.data, lane, 1),
                _elem(a1.data, lane, 1),
                _elem(b0.data, lane, 2),
                _elem(b1.data, lane, 2),
                r.half,
            )[:8]
        )
        rope16.append(
            rope_lane(
                m,
                _elem(a0.data, lane, 2),
                _elem(a1.data, lane, 2),
                _elem(b0.data, lane, 2),
                _elem(b1.data, lane, 2),
                r.half,
                16,
            )[:16]
        )
        out["silu"].append(silu_lane(m, g16, r.p0, r.p1[:6], sig)[:16])
        out["add"].append(add_lane(m, _elem(a0.data, lane, 4), _elem(b0.data, lane, 4))[:32])
        out["mov"].append(a0.data[8 * lane : 8 * lane + 8])
    data = Const(0, 32 * u.lanes)
    for name, parts in out.items():
        data = Mux(i[name], Cat(*parts), data)
    return {"data": data, "M": M, "mx": mx, "sxr": sxr, "ss": ss, "S": S, "rope16": Cat(*rope16)}


def _block_mask(m: Module, c: Any, r: _Regs):
    """Softmax keep test of key column ``col`` for the row's absolute position (model.block_keep)."""
    qbs = Signal(signed(18))
    lo = Signal(signed(40))
    m.d.comb += [qbs.eq(r.qb), lo.eq((qbs - c.local + 1) * c.blk)]
    gthr = c.glob * c.blk

    def keep(col: Value) -> Value:
        causal = col <= r.qv
        block = (col < gthr) | (col >= lo)
        return (c.mask == 0) | (causal & ((c.mask != 2) | block))

    return keep


def build_consumer(u: Any, m: Module, c: Any) -> None:
    """Instantiate the consumer's registers, lanes, row pipeline and state machine in ``m``."""
    r = u.regs = _Regs()
    r.o_data = Signal(len(u.writer.req.payload.data))
    ln = _lanes(u, m, c, r)
    fx = factors(u, m, c, r)
    build_chain(u, m, c, r, fx)
    m.d.sync += r.cyc.eq(r.cyc + 1)
    m.d.comb += [u.rec_start.eq(r.start), u.rec_end.eq(r.cyc)]
    _drive_writer(u, m, r, fx)
    with m.If(u.e3.done):
        m.d.sync += [r.qb.eq(u.e3.q), r.qrem.eq(u.e3.rem)]
    with m.FSM(name="cons") as fsm:
        with m.State("IDLE"):
            m.d.comb += u.cmd.ready.eq(1)
            with m.If(u.cmd.valid):
                m.d.sync += [u.c.eq(u.cmd.payload), r.start.eq(r.cyc)]
                p = u.cmd.payload  # the block mask's qpos // blk, done before the first group
                m.d.comb += [u.e3.start.eq(1), u.e3.a.eq(p.qpos), u.e3.d.eq(p.blk)]
                m.next = "START"
        with m.State("START"):
            _start(u, m, c, r)
        with m.State("PRE"), m.If(u.streams[2].g.valid):
            m.d.comb += u.streams[2].g.ready.eq(1)
            g = u.streams[2].g.payload.data
            m.d.sync += [r.p0.eq(g[:32]), r.p1.eq(g[32:64])]
            m.next = "PASS"
        with m.State("PASS"):
            _pass(u, m, c, r, ln, fx)
        with m.State("FLUSH"):
            quiet = r.idle & ~r.o_valid & u.rot_idle  # rotated keys: every head written
            m.d.comb += u.writer.flush.eq(quiet)
            with m.If(quiet & (u.writer.idle | (u.writer.w_en & u.writer.w_grant))):
                m.d.comb += u.done.eq(1)
                m.next = "IDLE"
    m.d.comb += u.busy.eq(~fsm.ongoing("IDLE"))


def _start(u: Any, m: Module, c: Any, r: _Regs) -> None:
    """Per-instruction setup: the first row's registers, the mask's row position."""
    m.d.sync += [r.k.eq(0), r.pas.eq(0), r.col.eq(0), r.pos.eq(0), r.half.eq(0)]
    m.d.sync += [r.first.eq(1), r.orow.eq(c.o_off), r.optr.eq(c.o_off), r.cfull.eq(0)]
    m.d.sync += [r.M.eq(0), r.ss.eq(0), r.sxr.eq(0), r.mx.eq(_MIN32), r.S.eq(0)]
    m.d.sync += r.qv.eq(c.qpos)
    m.d.sync += r.cshift.eq(bit_length(m, (c.cols - 1)[:16], "bl_d"))
    with m.If(~u.known | (c.rows == 0) | (c.cols == 0)):
        m.next = "FLUSH"
    with m.Elif(u.prelude):
        m.next = "PRE"
    with m.Else():
        m.next = "PASS"


def _drive_writer(u: Any, m: Module, r: _Regs, fx: dict[str, Value]) -> None:
    """The writer's request: the chain's softmax row factor (4 bytes before its row) first,
    else the output register (one register stage between the lanes and the writer)."""
    w = u.writer
    with m.If(r.fwrite):
        m.d.comb += [
            w.req.valid.eq(1),
            w.req.payload.addr.eq(r.orow_L - ROW_FACTOR_BYTES),
            w.req.payload.data.eq(fx["fac"]),
            w.req.payload.n.eq(ROW_FACTOR_BYTES),
        ]
    with m.Else():
        m.d.comb += [
            w.req.valid.eq(r.o_valid),
            w.req.payload.addr.eq(r.o_addr),
            w.req.payload.data.eq(r.o_data),
            w.req.payload.n.eq(r.o_n),
        ]
        with m.If(r.o_valid & w.req.ready):
            m.d.sync += r.o_valid.eq(0)  # a group taken in the same cycle sets it again


def _pass(u: Any, m: Module, c: Any, r: _Regs, ln: dict, fx: dict) -> None:
    """One group per cycle: statistics, or lanes out to the writer; pass and row ends."""
    w, i = u.writer, u.is_
    a0, a1, b0, b1 = u.streams
    rope = i["rope"]
    avail = a0.g.valid & (~u.uses_b | b0.g.valid) & (~rope | (a1.g.valid & b1.g.valid))
    is_out = r.pas == u.npass - 1
    nel, last = a0.g.payload.n, a0.g.payload.last
    nout = Signal(8)
    m.d.comb += nout.eq(nel << u.wsh_o)
    prefix = r.first & u.rowf & ~i["softmax"]
    stats_end = u.il & (r.pas == u.npass - 2)
    gate = Mux(is_out & u.il, r.cfull, 1) & Mux(
        last & (stats_end | (is_out & i["softmax"])), r.idle, 1
    )
    m.d.comb += [r.M_n.eq(ln["M"]), r.ss_n.eq(r.ss + ln["ss"])]
    sr = ~r.o_valid | (w.req.ready & ~r.fwrite)  # the output register takes a group
    # the first group leaves a fixed FILL cycles after the command (its words may straddle)
    hin = u.hadamard.i  # rotated keys: the RoPE lanes feed the Hadamard row buffer
    take = Mux(u.rot, hin.ready, sr)
    fire = (
        avail
        & gate
        & (~is_out | take)
        & (r.cyc - r.start >= FILL + 2 * u.shared + 2 * u.is_["rope"])
    )
    m.d.comb += [hin.valid.eq(fire & u.rot), hin.payload.eq(ln["rope16"])]
    with m.If(fire & is_out & ~u.rot):
        m.d.sync += [
            r.o_valid.eq(1),
            r.o_addr.eq(Mux(prefix, r.optr - ROW_FACTOR_BYTES, r.optr)),
            r.o_data.eq(Mux(prefix, Cat(fx["fac"], ln["data"]), ln["data"])),
            r.o_n.eq(nout + Mux(prefix, ROW_FACTOR_BYTES, 0)),
        ]
    with m.If(fire):
        m.d.comb += [a0.g.ready.eq(1), a1.g.ready.eq(rope), b0.g.ready.eq(u.uses_b)]
        m.d.comb += b1.g.ready.eq(rope)
        m.d.sync += r.col.eq(r.col + nel)
        with m.If(is_out):
            m.d.sync += [r.optr.eq(r.optr + nout), r.first.eq(0)]
            with m.If(i["softmax"]):
                m.d.sync += r.S.eq(r.S + ln["S"])
        with m.Elif(u.center & (r.pas == 0)):
            m.d.sync += r.sxr.eq(r.sxr + ln["sxr"])
        with m.Else():
            m.d.sync += [r.M.eq(r.M_n), r.ss.eq(r.ss_n), r.mx.eq(ln["mx"])]
        with m.If(last):
            _pass_end(u, m, c, r, ln, is_out, stats_end)


def _pass_end(u: Any, m: Module, c: Any, r: _Regs, ln: dict, is_out, stats_end) -> None:
    """A segment's last group: RoPE's next half head, or the pass's end (statistics to the
    chain, the output row released) and the next pass in the shared order."""
    i = u.is_
    with m.If(i["rope"] & (r.pos + u.hh < c.cols)):
        m.d.sync += [r.pos.eq(r.pos + u.hh), r.half.eq(~r.half)]
    with m.Else():
        _row_pass_end(u, m, c, r, ln, is_out, stats_end)


def _row_pass_end(u: Any, m: Module, c: Any, r: _Regs, ln: dict, is_out, stats_end) -> None:
    """A pass's end: statistics to the chain, the output row released, the next pass."""
    i = u.is_
    m.d.sync += [r.col.eq(0), r.pos.eq(0), r.half.eq(0)]
    with m.If(stats_end):
        m.d.comb += r.latch.eq(1)
        m.d.sync += [r.M.eq(0), r.ss.eq(0), r.sxr.eq(0)]
    with m.If(is_out):
        m.d.comb += r.release.eq(u.il)
        m.d.comb += [r.sm_latch.eq(i["softmax"]), r.sm_S.eq(r.S + ln["S"])]
        m.d.sync += [r.first.eq(1), r.orow.eq(r.orow + c.o_stride)]
        m.d.sync += r.optr.eq(r.orow + c.o_stride)
        with m.If(~u.il):
            m.d.sync += [r.mx.eq(_MIN32), r.S.eq(0), r.M.eq(0), r.ss.eq(0), r.sxr.eq(0)]

    def step() -> None:
        m.d.sync += r.qv.eq(r.qv + 1)
        with m.If(r.qrem + 1 == c.blk):
            m.d.sync += [r.qrem.eq(0), r.qb.eq(r.qb + 1)]
        with m.Else():
            m.d.sync += r.qrem.eq(r.qrem + 1)

    def end() -> None:
        m.next = "FLUSH"

    advance(m, r.k, r.pas, u.il, u.npass, c.rows, step, end)
