"""The SFU's consumer: takes element groups, keeps the row statistics, writes the output.

Built into :class:`~hwflow.hw.machine.sfu.Sfu`'s module by :func:`build_consumer` (split out
to keep the unit's file short). States: ``IDLE`` (accept a command), ``START`` (per
instruction setup; the producer starts), ``PRE`` (the parameter words at ``p_off``), ``QB``
(softmax block mask: ``qpos // blk``), ``PASS`` (one group per cycle; a row's passes and rows
follow each other without a gap), ``S1``..``S3`` (per-row scalars of the quantizing
functions), ``SM`` (softmax: the reciprocal of the row sum, then the row factor write),
``FLUSH`` (the writer's last word, then ``done``).
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
from hwflow.hw.machine.sfu_math import bit_length, row_factor
from hwflow.numerics import NORM_FRAC, QROW_SHIFT, ROW_MULT_BITS

__all__ = ["build_consumer"]

_MIN32 = -(1 << 31)


class _Regs:
    """The consumer's registers (one namespace, so the helpers stay short)."""

    def __init__(self) -> None:
        self.row = Signal(16)
        self.pas = Signal(2)
        self.col = Signal(16)
        self.pos = Signal(16)
        self.half = Signal()
        self.first = Signal()
        self.optr = Signal(24)
        self.orow = Signal(24)
        self.qv = Signal(17)
        self.qb = Signal(16)
        self.qrem = Signal(16)
        self.M = Signal(48)
        self.ss = Signal(64)
        self.sxr = Signal(signed(40))
        self.mx = Signal(signed(32))
        self.S = Signal(32)
        self.p0 = Signal(signed(32))
        self.p1 = Signal(signed(32))
        self.recip = Signal(56)
        self.t = Signal(80)
        self.inv = Signal(41)
        self.cshift = Signal(5)
        self.cyc = Signal(32)
        self.start = Signal(32)


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
    for lane in range(u.lanes):
        ok = lane < n
        xr, xc, y = norm_lane(
            m,
            _elem(a0.data, lane, 4),
            r.p0[:6],
            u.center,
            c.cols,
            r.cshift,
            r.sxr,
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
        q8 = quant_lane(m, v, r.recip)
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
        out["silu"].append(silu_lane(m, g16, r.p0, r.p1[:6], sig)[:16])
        out["add"].append(add_lane(m, _elem(a0.data, lane, 4), _elem(b0.data, lane, 4))[:32])
        out["mov"].append(a0.data[8 * lane : 8 * lane + 8])
    data = Const(0, 32 * u.lanes)
    for name, parts in out.items():
        data = Mux(i[name], Cat(*parts), data)
    return {"data": data, "M": M, "mx": mx, "sxr": sxr, "ss": ss, "S": S}


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


def _factors(u: Any, m: Module, c: Any, r: _Regs) -> dict[str, Value]:
    """Per-row scalar operands and the row factors (numerics.quant_rows, norm_rows,
    recip_factor) from the row registers and the scalar engine's result."""
    rm, re = row_factor(m, r.M, "rf_m")
    ssx = Mux(r.ss == 0, 1, r.ss)
    bss = bit_length(m, ssx, "bl_ss")
    k = Signal(6)
    m.d.comb += k.eq(Mux(bss > 31, (bss - 31) >> 1, 0))
    ssk = ssx >> (k << 1)
    m2, e2 = row_factor(m, rm * r.inv, "rf_n")
    en = Signal(signed(12))
    m.d.comb += en.eq(e2 + re + NORM_FRAC + k)
    sx = Mux(r.S == 0, 1, r.S)
    bs = bit_length(m, sx, "bl_s")
    es = Signal(8)
    m.d.comb += es.eq(ROW_MULT_BITS - 1 + bs)
    q = u.scalar.q
    over = q[ROW_MULT_BITS:].any()
    fac = Signal(32)
    re16, en16 = Signal(signed(16)), Signal(signed(16))
    m.d.comb += [re16.eq(re), en16.eq(en)]
    with m.If(u.is_["softmax"]):
        m.d.comb += fac.eq(Cat(Mux(over, q >> 1, q)[:16], (es - over)[:16]))
    with m.Elif(u.is_["norm"]):
        m.d.comb += fac.eq(Cat(m2[:16], en16))
    with m.Else():
        m.d.comb += fac.eq(Cat(rm[:16], re16))
    return {
        "fac": fac,
        "mx1": Mux(r.M == 0, 1, r.M),
        "ssn": Mux(ssk == 0, 1, ssk),
        "sm_num": (Const(1, 1) << es) + (sx >> 1),
        "sx": sx,
    }


def build_consumer(u: Any, m: Module, c: Any) -> None:
    """Instantiate the consumer's registers, lanes and state machine in ``m``."""
    r = _Regs()
    a0, a1, b0, b1 = u.streams
    ln = _lanes(u, m, c, r)
    fx = _factors(u, m, c, r)
    sc, w = u.scalar, u.writer
    m.d.sync += r.cyc.eq(r.cyc + 1)
    m.d.comb += [u.rec_start.eq(r.start), u.rec_end.eq(r.cyc)]
    rope = u.is_["rope"]
    avail = a0.g.valid & (~u.uses_b | b0.g.valid) & (~rope | (a1.g.valid & b1.g.valid))
    is_out = r.pas == u.npass - 1
    nel = a0.g.payload.n
    nout = Signal(8)
    m.d.comb += nout.eq(nel << u.wsh_o)
    prefix = r.first & u.rowf & ~u.is_["softmax"]

    def row_reset(row: Value, orow: Value) -> list:
        return [
            r.M.eq(0),
            r.ss.eq(0),
            r.sxr.eq(0),
            r.mx.eq(_MIN32),
            r.S.eq(0),
            r.pas.eq(0),
            r.col.eq(0),
            r.pos.eq(0),
            r.half.eq(0),
            r.first.eq(1),
            r.row.eq(row),
            r.orow.eq(orow),
            r.optr.eq(orow),
        ]

    def next_row() -> None:
        m.d.sync += row_reset(r.row + 1, r.orow + c.o_stride)
        m.d.sync += r.qv.eq(r.qv + 1)
        with m.If(r.qrem + 1 == c.blk):
            m.d.sync += [r.qrem.eq(0), r.qb.eq(r.qb + 1)]
        with m.Else():
            m.d.sync += r.qrem.eq(r.qrem + 1)
        with m.If(r.row + 1 == c.rows):
            m.next = "FLUSH"
        with m.Else():
            m.next = "PASS"

    def take() -> None:
        m.d.comb += [a0.g.ready.eq(1), a1.g.ready.eq(rope), b0.g.ready.eq(u.uses_b)]
        m.d.comb += b1.g.ready.eq(rope)

    with m.FSM(name="cons") as fsm:
        with m.State("IDLE"):
            m.d.comb += u.cmd.ready.eq(1)
            with m.If(u.cmd.valid):
                m.d.sync += [u.c.eq(u.cmd.payload), r.start.eq(r.cyc)]
                m.next = "START"
        with m.State("START"):
            m.d.comb += u.go.eq(1)
            m.d.sync += row_reset(0, c.o_off)
            m.d.sync += [r.qv.eq(c.qpos), r.qb.eq(0), r.qrem.eq(0)]
            m.d.sync += r.cshift.eq(bit_length(m, (c.cols - 1)[:16], "bl_d"))
            with m.If(~u.known | (c.rows == 0) | (c.cols == 0)):
                m.next = "FLUSH"
            with m.Elif(u.prelude):
                m.next = "PRE"
            with m.Elif(u.is_["softmax"] & (c.mask == 2)):
                m.next = "QB"
            with m.Else():
                m.next = "PASS"
        with m.State("PRE"), m.If(b0.g.valid):
            m.d.comb += b0.g.ready.eq(1)
            m.d.sync += [r.p0.eq(b0.g.payload.data[:32]), r.p1.eq(b0.g.payload.data[32:64])]
            m.next = "PASS"
        with m.State("QB"):
            m.d.comb += [sc.start.eq(1), sc.a.eq(c.qpos), sc.d.eq(c.blk)]
            m.next = "QBW"
        with m.State("QBW"), m.If(sc.done):
            m.d.sync += [r.qb.eq(sc.q), r.qrem.eq(sc.rem)]
            m.next = "PASS"
        with m.State("PASS"):
            _pass(u, m, c, r, ln, fx, avail, is_out, nout, prefix, take, next_row)
        _scalar_states(u, m, c, r, fx, next_row)
        with m.State("FLUSH"):
            m.d.comb += w.flush.eq(1)
            with m.If(w.idle):
                m.d.comb += u.done.eq(1)
                m.next = "IDLE"
    m.d.comb += u.busy.eq(~fsm.ongoing("IDLE"))


def _pass(u, m, c, r, ln, fx, avail, is_out, nout, prefix, take, next_row) -> None:
    """One group per cycle: statistics, or lanes out to the writer; pass and row ends."""
    w, i = u.writer, u.is_
    a0 = u.streams[0]
    m.d.comb += [
        w.req.valid.eq(avail & is_out),
        w.req.payload.addr.eq(Mux(prefix, r.optr - 4, r.optr)),
        w.req.payload.data.eq(Mux(prefix, Cat(fx["fac"], ln["data"]), ln["data"])),
        w.req.payload.n.eq(nout + Mux(prefix, 4, 0)),
    ]
    fire = avail & (~is_out | w.req.ready)
    with m.If(fire):
        take()
        m.d.sync += r.col.eq(r.col + a0.g.payload.n)
        with m.If(is_out):
            m.d.sync += [r.optr.eq(r.optr + nout), r.first.eq(0)]
            with m.If(i["softmax"]):
                m.d.sync += r.S.eq(r.S + ln["S"])
        with m.Elif(u.center & (r.pas == 0)):
            m.d.sync += r.sxr.eq(r.sxr + ln["sxr"])
        with m.Else():
            m.d.sync += [r.M.eq(ln["M"]), r.ss.eq(r.ss + ln["ss"]), r.mx.eq(ln["mx"])]
        with m.If(a0.g.payload.last):
            _segment_end(u, m, c, r, is_out, next_row)


def _segment_end(u, m, c, r, is_out, next_row) -> None:
    i = u.is_
    with m.If(i["rope"] & (r.pos + u.hh < c.cols)):
        m.d.sync += [r.pos.eq(r.pos + u.hh), r.half.eq(~r.half)]
    with m.Elif(is_out):
        with m.If(i["softmax"]):
            m.next = "SM"
        with m.Else():
            next_row()
    with m.Else():
        m.d.sync += [r.pas.eq(r.pas + 1), r.col.eq(0)]
        with m.If((r.pas == u.npass - 2) & (i["norm"] | i["mul"] | i["reluq"])):
            m.next = "S1"


def _scalar_states(u, m, c, r, fx, next_row) -> None:
    """Per-row scalars: ``(127 << 46) // M``; norm: ``isqrt((d << 60) // ss')``; softmax:
    the reciprocal of the row sum and the row factor write."""
    sc, w = u.scalar, u.writer
    with m.State("S1"):
        m.d.comb += [sc.start.eq(1), sc.a.eq(Const(127 << QROW_SHIFT)), sc.d.eq(fx["mx1"])]
        m.next = "S1W"
    with m.State("S1W"), m.If(sc.done):
        m.d.sync += r.recip.eq(sc.q)
        with m.If(u.is_["norm"]):
            m.next = "S2"
        with m.Else():
            m.next = "PASS"
    with m.State("S2"):
        m.d.comb += [sc.start.eq(1), sc.a.eq(c.cols << (2 * NORM_FRAC)), sc.d.eq(fx["ssn"])]
        m.next = "S2W"
    with m.State("S2W"), m.If(sc.done):
        m.d.sync += r.t.eq(sc.q)
        m.next = "S3"
    with m.State("S3"):
        m.d.comb += [sc.start.eq(1), sc.sqrt.eq(1), sc.a.eq(r.t)]
        m.next = "S3W"
    with m.State("S3W"), m.If(sc.done):
        m.d.sync += r.inv.eq(sc.q)
        m.next = "PASS"
    with m.State("SM"):
        m.d.comb += [sc.start.eq(1), sc.a.eq(fx["sm_num"]), sc.d.eq(fx["sx"])]
        m.next = "SMW"
    with m.State("SMW"), m.If(sc.done):
        m.next = "SMF"
    with m.State("SMF"):
        m.d.comb += [
            w.req.valid.eq(1),
            w.req.payload.addr.eq(r.orow - 4),
            w.req.payload.data.eq(fx["fac"]),
            w.req.payload.n.eq(4),
        ]
        with m.If(w.req.ready):
            next_row()
