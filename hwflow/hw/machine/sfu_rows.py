"""The SFU's per-row scalar pipeline: row statistics -> scalars -> the output pass.

Three register sets carry a row's state, so the scalar work of one row overlaps the passes
of the next (the order of :mod:`hwflow.hw.machine.sfu_seq`):

* ``acc``: the statistics the current statistics pass accumulates (row maximum ``M``, sum
  of squares ``ss``, LayerNorm row sum ``sxr``; softmax: maximum ``mx`` and numerator sum
  ``S``);
* ``L``: a finished row's statistics, latched at the end of its last statistics pass, and the
  scalars the engines compute from them (``(127 << 46) // M``; the norm's
  ``isqrt((d << 60) // ss')``);
* ``C``: the row whose output pass runs (its quantization reciprocal and row factor).

The *chain* moves ``L`` to ``C`` once the scalars are done and the previous output pass has
released ``C``. Softmax instead latches its row sum after the output pass; the chain then
divides and writes the row factor (4 bytes before the row) through the writer, while the
next row's passes run. Two :class:`~hwflow.hw.machine.sfu_math.Scalar` engines: ``e1``
(the quantization reciprocal, the softmax row sum's) and ``e2`` (the norm's division and
root), the norm's first two in parallel.
"""

from __future__ import annotations

from typing import Any

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed

from hwflow.hw.machine.sfu_math import bit_length, row_factor
from hwflow.numerics import NORM_FRAC, QROW_SHIFT, ROW_MULT_BITS

__all__ = ["RowState", "build_chain", "factors"]


class RowState:
    """The ``acc``, ``L`` and ``C`` register sets and the chain's handshakes."""

    def __init__(self) -> None:
        self.M, self.ss, self.sxr = Signal(48), Signal(64), Signal(signed(40))
        self.M_n, self.ss_n = Signal(48), Signal(64)  #: acc with the current group (comb)
        self.mx, self.S = Signal(signed(32), init=-(1 << 31)), Signal(32)
        self.M_L, self.ss_L, self.sxr_L = Signal(48), Signal(64), Signal(signed(40))
        self.recip_L, self.inv_L = Signal(56), Signal(41)
        self.S_L, self.orow_L = Signal(32), Signal(24)
        self.M_C, self.ss_C, self.sxr_C = Signal(48), Signal(64), Signal(signed(40))
        self.recip_C, self.inv_C = Signal(56), Signal(41)
        self.cfull = Signal()  #: C holds the row of the next output pass
        self.latch = Signal()  #: consumer: a row's statistics are complete (acc -> L)
        self.sm_latch = Signal()  #: consumer: a softmax row's output pass ended
        self.sm_S = Signal(32)  #: ... with this row sum
        self.release = Signal()  #: consumer: the output pass using C ended
        self.idle = Signal()  #: the chain takes a latch this cycle
        self.fwrite = Signal()  #: the chain asks the writer for a softmax row factor write
        self.orow = Signal(24)  #: the byte address of the output pass's row (consumer's)


def factors(u: Any, m: Module, c: Any, r: RowState) -> dict[str, Any]:
    """Row factors (numerics.quant_rows, norm_rows, recip_factor) of the ``C`` row (softmax:
    of the ``L`` row and ``e2``'s quotient) and the engines' operands from ``acc``."""
    rm, re = row_factor(m, r.M_C, "rf_m")
    bss = bit_length(m, Mux(r.ss_C == 0, 1, r.ss_C), "bl_ss")
    k = Signal(6)
    m.d.comb += k.eq(Mux(bss > 31, (bss - 31) >> 1, 0))
    m2, e2 = row_factor(m, rm * r.inv_C, "rf_n")
    en16, re16 = Signal(signed(16)), Signal(signed(16))
    m.d.comb += [en16.eq(e2 + re + NORM_FRAC + k), re16.eq(re)]
    sx = Mux(r.S_L == 0, 1, r.S_L)
    es = Signal(8)
    m.d.comb += es.eq(ROW_MULT_BITS - 1 + bit_length(m, sx, "bl_s"))
    sx0 = Mux(r.sm_S == 0, 1, r.sm_S)  # the row sum as it is latched
    es0 = Signal(8)
    m.d.comb += es0.eq(ROW_MULT_BITS - 1 + bit_length(m, sx0, "bl_s0"))
    q = u.e1.q
    over = q[ROW_MULT_BITS:].any()
    fac = Signal(32)
    with m.If(u.is_["softmax"]):
        m.d.comb += fac.eq(Cat(Mux(over, q >> 1, q)[:16], (es - over)[:16]))
    with m.Elif(u.is_["norm"]):
        m.d.comb += fac.eq(Cat(m2[:16], en16))
    with m.Else():
        m.d.comb += fac.eq(Cat(rm[:16], re16))
    ssa = Mux(r.ss_n == 0, 1, r.ss_n)
    bsa = bit_length(m, ssa, "bl_sa")
    ka = Signal(6)
    m.d.comb += ka.eq(Mux(bsa > 31, (bsa - 31) >> 1, 0))
    ssk = ssa >> (ka << 1)
    return {
        "fac": fac,
        "mx1": Mux(r.M_n == 0, 1, r.M_n),
        "ssn": Mux(ssk == 0, 1, ssk),
        "sm_num0": (Const(1, 1) << es0) + (sx0 >> 1),
        "sx0": sx0,
    }


def build_chain(u: Any, m: Module, c: Any, r: RowState, fx: dict[str, Any]) -> None:
    """The chain's state machine (see the module docstring). A finished row moves to ``C``
    in the cycle its last scalar is done when ``C`` is free (else it waits in ``FULL``)."""
    e1, e2, norm = u.e1, u.e2, u.is_["norm"]
    transfer, recip, inv = Signal(), Signal(56), Signal(41)
    m.d.comb += [recip.eq(r.recip_L), inv.eq(r.inv_L)]
    with m.If(transfer):
        m.d.sync += [r.M_C.eq(r.M_L), r.ss_C.eq(r.ss_L), r.sxr_C.eq(r.sxr_L)]
        m.d.sync += [r.recip_C.eq(recip), r.inv_C.eq(inv), r.cfull.eq(1)]
    with m.Elif(r.release):
        m.d.sync += r.cfull.eq(0)
    free = ~r.cfull | r.release
    with m.FSM(name="chain"):
        with m.State("IDLE"):
            m.d.comb += r.idle.eq(1)
            with m.If(r.latch):
                m.d.sync += [r.M_L.eq(r.M_n), r.ss_L.eq(r.ss_n), r.sxr_L.eq(r.sxr)]
                m.d.comb += [e1.start.eq(1), e1.a.eq(Const(127 << QROW_SHIFT)), e1.d.eq(fx["mx1"])]
                m.d.comb += [e2.start.eq(norm), e2.a.eq(c.cols << (2 * NORM_FRAC))]
                m.d.comb += e2.d.eq(fx["ssn"])
                m.next = "DIV"
            with m.Elif(r.sm_latch):
                m.d.sync += [r.S_L.eq(r.sm_S), r.orow_L.eq(r.orow)]
                m.d.comb += [e1.start.eq(1), e1.a.eq(fx["sm_num0"]), e1.d.eq(fx["sx0"])]
                m.next = "SMD"
        with m.State("DIV"), m.If(Mux(norm, e2.done, e1.done)):
            m.d.sync += r.recip_L.eq(e1.q)
            m.d.comb += [e2.start.eq(norm), e2.sqrt.eq(1), e2.a.eq(e2.q)]
            with m.If(norm):
                m.next = "SQ"
            with m.Elif(free):
                m.d.comb += [transfer.eq(1), recip.eq(e1.q)]
                m.next = "IDLE"
            with m.Else():
                m.next = "FULL"
        with m.State("SQ"), m.If(e2.done):
            m.d.sync += r.inv_L.eq(e2.q)
            with m.If(free):
                m.d.comb += [transfer.eq(1), inv.eq(e2.q)]
                m.next = "IDLE"
            with m.Else():
                m.next = "FULL"
        with m.State("FULL"), m.If(free):
            m.d.comb += transfer.eq(1)
            m.next = "IDLE"
        with m.State("SMD"), m.If(e1.done):
            m.d.comb += r.fwrite.eq(1)
            with m.If(~u.writer.req.ready):
                m.next = "SMW"
            with m.Else():
                m.next = "IDLE"
        with m.State("SMW"):
            m.d.comb += r.fwrite.eq(1)
            with m.If(u.writer.req.ready):
                m.next = "IDLE"
