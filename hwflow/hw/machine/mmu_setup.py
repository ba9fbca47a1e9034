"""The matmul unit's instruction register: the accepted command and the values derived from it
once (N mode, rows per row group, weight record sizes, tile section offsets), shared by the
unit's feed and drain (:mod:`hwflow.hw.machine.mmu`)."""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, Value
from amaranth.lib import data

from hwflow.hw.machine.mmu_ports import ADDR_BITS
from hwflow.hw.params import EngineParams
from hwflow.isa import MATMUL_FUNCS

__all__ = ["Instr"]

_LINEAR, _QK, _PV, _HEAD = (MATMUL_FUNCS.index(f) for f in ("linear", "qk", "pv", "head"))


class Instr:
    """Registers of one instruction. :meth:`load` (in the cycle the command is accepted) sets
    the command and everything derived from it combinationally; :meth:`sections` the tile's
    bias/mult/shift section offsets (combinational from the registers)."""

    def __init__(self, ep: EngineParams, layout: data.StructLayout, split_pv: bool) -> None:
        self.ep, self.split_pv = ep, split_pv
        lanes = ep.lanes
        self.c = Signal(layout)
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

    # ---- decoded function flags (combinational from the command register)
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
        dense = ~lin | (cmd.n == cmd.m)
        n_eff = Mux(dense, ep.m, cmd.n)
        wbits = Mux(lin, cmd.wbits, 8)
        nsel, rpb = Signal.like(self.nsel), Signal.like(self.rpb)
        with m.Switch(n_eff):
            for k, n in enumerate(ep.n_modes):
                with m.Case(n):
                    m.d.comb += [nsel.eq(k), rpb.eq(ep.rows_per_beat(n))]
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
