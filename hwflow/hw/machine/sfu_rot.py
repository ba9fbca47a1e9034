"""The SFU's rotated-keys path (issue 14; :func:`hwflow.reference._rotated`): RoPE at INT16,
the Hadamard transform per head, then q's or k's tail, bit for bit as funcsim.

The consumer's RoPE lanes (:func:`~hwflow.hw.machine.sfu_lanes.rope_lane` at 16 bits) hand
each half head's groups to the :class:`~hwflow.hw.machine.sfu_hadamard.Hadamard` row buffer
instead of the writer; once a head is transformed, the *tail* here writes it:

* q (:func:`hwflow.numerics.requantize` at the head's static scale): each chunk's INT8 codes
  ``sat8(round_shift(y * mult, shift))``, a chunk per cycle;
* k (:func:`hwflow.numerics.quant_rows` per (token, KV head)): the head's maximum ``M`` from
  the row buffer's last stage starts the scalar engine ``e1`` on ``(127 << 46) // M``
  (:func:`hwflow.costs.sfu_scalar_cycles`), then the codes ``sat8(round_shift(y * recip,
  46))``, the row factor of ``M`` (:func:`hwflow.numerics.row_factor`) in the 4 bytes before
  the head's codes.

A head's outputs go to its place in the output row: heads follow each other ``head_dim``
bytes apart (k: ``head_dim + 4``, each with its factor in front), rows ``o_stride`` apart.
"""

from __future__ import annotations

from typing import Any

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed

from hwflow.hw.machine.sfu_lanes import quant_lane
from hwflow.hw.machine.sfu_math import bit_length, clamp, round_shift, row_factor
from hwflow.isa import ROW_FACTOR_BYTES, Buf, SfuFunc
from hwflow.numerics import ACT_MIN, QROW_SHIFT

__all__ = ["build_rot"]


def build_rot(u: Any, m: Module, c: Any) -> None:
    """The tail in the SFU's module ``m`` (``u``: the unit, with its row buffer
    ``u.hadamard`` and ``u.rot_idle``, high while no head is inside). Built after the
    consumer: in OUT its writer requests override the consumer's (none in this mode)."""
    hb = u.hadamard
    m.d.comb += hb.ldim.eq(bit_length(m, u.hh, "bl_hh"))  # hd = 2 * hh
    w = hb.width
    o = hb.o.payload
    n = Signal(range(u.lanes + 1))  # elements per chunk
    m.d.comb += n.eq(Mux(u.hh < u.lanes, u.hh, u.lanes))
    big = Signal(w)
    m.d.comb += big.eq(Mux(hb.mx == 0, 1, hb.mx))
    recip = Signal(56)
    codes = []
    for q in range(u.lanes):
        y = o.data[w * q : w * (q + 1)].as_signed()
        qq = clamp(m, round_shift(y * u.rot_mult, u.rot_shift), ACT_MIN, 127)
        codes.append(Mux(u.rot_k, quant_lane(m, y, recip), qq)[:8])
    fm, fe = row_factor(m, big, "rot_rf")
    fe16 = Signal(signed(16))
    m.d.comb += fe16.eq(fe)
    fac = Cat(fm[:16], fe16)
    optr = Signal(24)  # where the next chunk's codes go
    rb = Signal(24)  # the row's first head's codes
    hx = Signal(16)  # the head's first element in the row
    hd = u.hh << 1
    p = u.cmd.payload
    with m.If(u.cmd.valid & u.cmd.ready):
        m.d.sync += [optr.eq(p.o_off), rb.eq(p.o_off), hx.eq(0)]
    _push_scales(u, m, c)
    e1, wr, sp = u.e1, u.writer, u.sp
    pre = u.rot_k & o.first  # the head's factor rides in front of its first chunk
    with m.FSM(name="rot"):
        with m.State("WAIT"):
            m.d.comb += u.rot_idle.eq(hb.idle)
            with m.If(u.rot & hb.o.valid):  # a head's first chunk: its maximum is final
                with m.If(u.rot_k):
                    m.d.comb += [e1.start.eq(1), e1.a.eq(Const(127 << QROW_SHIFT)), e1.d.eq(big)]
                    m.next = "DIV"
                with m.Elif(sp.g.valid):  # q: the head's mult, shift
                    m.d.comb += sp.g.ready.eq(1)
                    g = sp.g.payload.data
                    m.d.sync += [u.rot_mult.eq(g[:16]), u.rot_shift.eq(g[32:38])]
                    m.next = "OUT"
        with m.State("DIV"), m.If(e1.done):
            m.d.sync += recip.eq(e1.q)
            m.next = "OUT"
        with m.State("OUT"):
            m.d.comb += [
                wr.req.valid.eq(hb.o.valid),
                wr.req.payload.addr.eq(Mux(pre, optr - ROW_FACTOR_BYTES, optr)),
                wr.req.payload.data.eq(Mux(pre, Cat(fac, *codes), Cat(*codes))),
                wr.req.payload.n.eq(n + Mux(pre, ROW_FACTOR_BYTES, 0)),
                hb.o.ready.eq(wr.req.ready),
            ]
            with m.If(hb.o.valid & wr.req.ready):
                m.d.sync += optr.eq(optr + n)
                with m.If(o.last):
                    _next_head(m, c, u, optr + n, rb, hx, hd, optr)
                    m.next = "WAIT"


def _next_head(m: Module, c: Any, u: Any, end, rb, hx, hd, optr) -> None:
    """After a head's last chunk: the next head of the row, or the next row's first."""
    with m.If(hx + hd >= c.cols):
        m.d.sync += [hx.eq(0), rb.eq(rb + c.o_stride), optr.eq(rb + c.o_stride)]
    with m.Else():
        m.d.sync += [hx.eq(hx + hd), optr.eq(end + Mux(u.rot_k, ROW_FACTOR_BYTES, 0))]


def _push_scales(u: Any, m: Module, c: Any) -> None:
    """ropeq: per head of every row, the head's mult and shift (int32 at ``p_off + 8 h``) as
    a segment of the scale streamer ``u.sp`` (read ahead, taken as the head's tail starts)."""
    sp, p = u.sp, u.cmd.payload
    on = Signal()
    hx = Signal(16)  # the pushed head's first element in its row
    row = Signal(16)
    at = Signal(24)
    with m.If(u.cmd.valid & u.cmd.ready):
        hh = p.aux >> 1
        ok = (p.func == SfuFunc.ROPEQ) & (p.rows != 0) & (p.cols != 0) & (hh != 0)
        m.d.sync += [on.eq(ok & (hh <= u.rot_dim // 2)), hx.eq(0), row.eq(0), at.eq(p.p_off)]
    m.d.comb += [
        sp.seg.valid.eq(on),
        sp.seg.payload.buf.eq(Buf.PARAM),
        sp.seg.payload.addr.eq(at),
        sp.seg.payload.count.eq(2),
        sp.seg.payload.wsh.eq(2),
    ]
    with m.If(on & sp.seg.ready):
        with m.If(hx + (u.hh << 1) >= c.cols):
            m.d.sync += [hx.eq(0), at.eq(c.p_off), row.eq(row + 1)]
            with m.If(row + 1 >= c.rows):
                m.d.sync += on.eq(0)
        with m.Else():
            m.d.sync += [hx.eq(hx + (u.hh << 1)), at.eq(at + 8)]
