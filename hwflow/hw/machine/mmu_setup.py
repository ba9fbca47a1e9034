"""The matmul unit's instruction register: the accepted command and the values derived from it
once (N mode, rows per row group, weight record sizes, tile section offsets), shared by the
unit's feed and drain (:mod:`hwflow.hw.machine.mmu`)."""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, Value
from amaranth.lib import data

from hwflow.hw.machine.mmu_ports import ADDR_BITS
from hwflow.hw.params import EngineParams
from hwflow.isa import MATMUL_FUNCS, ROW_FACTOR_BYTES

__all__ = ["KEY_FLAG", "Instr"]

#: The MM/MV field saying the K rows of a qk carry row factors (rotated keys, issue 14)
KEY_FLAG = "brow"

_LINEAR, _QK, _PV, _HEAD = (MATMUL_FUNCS.index(f) for f in ("linear", "qk", "pv", "head"))


class Instr:
    """Registers of one instruction. :meth:`load` (in the cycle the command is accepted) sets
    the command and everything derived from it combinationally; :meth:`sections` the tile's
    bias/mult/shift section offsets (combinational from the registers)."""

    def __init__(
        self, ep: EngineParams, layout: data.StructLayout, split_pv: bool, word_bytes: int
    ) -> None:
        self.ep, self.split_pv, self.wb = ep, split_pv, word_bytes
        lanes = ep.lanes
        self.c = Signal(layout)
        #: keys (qk: K indices) one beat advances: M, pv's N (:func:`hwflow.costs.pv_nm`)
        self.kstep = Signal(range(ep.m + 1))
        #: qk / pv: the bytes of one beat's weight pieces (qk: the group's key rows' M-blocks;
        #: pv: N keys' row pieces), from the first piece's first byte to the last's last
        self.span = Signal(32)
        #: ``span`` fits one buffer word: one part per beat (else a part per piece)
        self.span_ok = Signal()
        #: ``p * b_stride`` (low bits): where piece p of a beat's span starts
        self.pstep = [Signal(word_bytes.bit_length(), name=f"pstep{p}") for p in range(self.pieces)]
        self.nsel = Signal(range(max(2, len(ep.n_modes))))
        self.n_eff = Signal(range(ep.m + 1))
        self.rpb = Signal(range(lanes + 1))  #: rows per row group at this N
        self.dense = Signal()
        self.wbits = Signal(4)
        self.obytes = Signal(3)
        self.rec_v, self.rec_i = Signal(8), Signal(8)  #: a full stripe's record bytes
        self.rec_vl, self.rec_il = Signal(8), Signal(8)  #: the last stripe's
        self.sec_bias, self.sec_mult, self.sec_shift = (Signal(ADDR_BITS) for _ in range(3))
        self.sec_gmult = Signal(ADDR_BITS)
        self.grouped = Signal()  #: a linear/head op with weight groups (``wgroup`` > 0)
        #: qk of rotated keys: the bytes from a row group's first key factor to its last
        #: key's factor end, and whether they fit one buffer word (one read per group)
        self.fspan = Signal(32)
        self.fspan_ok = Signal()

    # ---- decoded function flags (combinational from the command register)
    @property
    def pieces(self) -> int:
        """Most pieces a beat's span holds: qk's key rows, pv's keys."""
        return max(self.ep.m, self.ep.rows_per_beat(self.ep.m))

    @property
    def is_lin(self) -> Value:
        return (self.c.func == _LINEAR) | (self.c.func == _HEAD)

    @property
    def is_qk(self) -> Value:
        return self.c.func == _QK

    @property
    def is_pv(self) -> Value:
        return self.c.func == _PV

    @property
    def keyrf(self) -> Value:
        """qk of rotated keys: each key row carries a row factor (``KEY_FLAG``), applied in
        the scores' row stage (:func:`hwflow.reference._rotated_scores`)."""
        return self.is_qk & getattr(self.c, KEY_FLAG)

    @property
    def pv2(self) -> Value:
        """pv on the dual-INT8 MM engine: bit-sliced, one token per pass (module doc)."""
        return self.is_pv & self.split_pv

    @property
    def tstep(self) -> Value:
        return Mux(self.pv2, 1, self.ep.rows)

    def load(self, m: Module, cmd: data.View) -> None:
        """Register ``cmd`` and its derived values (call inside the accepting condition)."""
        ep = self.ep
        nslot = ep.chains * ep.chain_length
        lin = (cmd.func == _LINEAR) | (cmd.func == _HEAD)
        pv = cmd.func == _PV
        dense = ~lin | (cmd.n == cmd.m)
        n_pv = Const(ep.n_modes[-1])  # hwflow.costs.pv_nm: the smallest mode that fits
        for n in reversed(ep.n_modes):
            n_pv = Mux(cmd.cols >= ep.rows_per_beat(n), n, n_pv)
        n_eff = Mux(pv, n_pv, Mux(dense, ep.m, cmd.n))
        wbits = Mux(lin, cmd.wbits, 8)
        nsel, rpb = Signal.like(self.nsel), Signal.like(self.rpb)
        with m.Switch(n_eff):
            for k, n in enumerate(ep.n_modes):
                with m.Case(n):
                    m.d.comb += [nsel.eq(k), rpb.eq(ep.rows_per_beat(n))]
        pv_span = Signal(32)  # N pieces of a row group's columns, a key apart
        with m.Switch(n_eff):
            for n in ep.n_modes:
                with m.Case(n):
                    m.d.comb += pv_span.eq((n - 1) * cmd.b_stride + ep.rows_per_beat(n))
        qk_span = (ep.rows_per_beat(ep.m) - 1) * cmd.b_stride + ep.m  # M-blocks, a row apart
        fspan = (ep.rows_per_beat(ep.m) - 1) * cmd.b_stride + ROW_FACTOR_BYTES
        m.d.sync += [self.fspan.eq(fspan), self.fspan_ok.eq(fspan <= self.wb)]
        span = Mux(pv, pv_span, qk_span)
        m.d.sync += [
            self.kstep.eq(Mux(pv, n_eff, ep.m)),
            self.span.eq(span),
            self.span_ok.eq(span <= self.wb),
            *(s.eq(p * cmd.b_stride) for p, s in enumerate(self.pstep)),
        ]
        low = cmd.cols & (rpb - 1)
        last_rows = Mux(low == 0, rpb, low)
        slots_l = last_rows * n_eff
        m.d.sync += [
            self.c.eq(cmd),
            self.grouped.eq(lin & (cmd.wgroup != 0)),
            self.dense.eq(dense),
            self.n_eff.eq(n_eff),
            self.wbits.eq(wbits),
            self.obytes.eq(cmd.obits >> 3),
            self.nsel.eq(nsel),
            self.rpb.eq(rpb),
            self.rec_v.eq(nslot // 8 * wbits),
            self.rec_i.eq(Mux(dense, 0, nslot * ep.index_bits // 8)),
            self.rec_vl.eq((slots_l * wbits + 7) >> 3),
            self.rec_il.eq(Mux(dense, 0, (slots_l * ep.index_bits + 7) >> 3)),
        ]

    @property
    def gmask(self) -> Value:
        """Byte offsets within a weight group (``G - 1``; 0 without a group)."""
        return (Const(1, 9) << self.c.wgroup) - 1

    def sections(self, m: Module) -> None:
        """The tile's section offsets (:meth:`hwflow.compiler.layout.TileSpec.sections`)."""
        ep, c = self.ep, self.c
        mb = ep.m.bit_length() - 1
        blocks = (c.k + ep.m - 1) >> mb
        stripes = Signal(17)
        with m.Switch(self.nsel):
            for k, n in enumerate(ep.n_modes):
                sh = ep.rows_per_beat(n).bit_length() - 1
                with m.Case(k):
                    m.d.comb += stripes.eq((c.cols + (1 << sh) - 1) >> sh)
        full = (stripes - 1) * blocks * (self.rec_v + self.rec_i)
        bias = full + blocks * (self.rec_vl + self.rec_il)
        mult = bias + Mux(c.bias, c.cols << 2, 0)
        m.d.comb += [
            self.sec_bias.eq(bias),
            self.sec_mult.eq(mult),
            self.sec_shift.eq(mult + (c.cols << 1)),
            self.sec_gmult.eq(mult + (c.cols << 1) + c.cols),
        ]
