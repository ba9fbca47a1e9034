"""Instruction fetch: the template's words from HBM into the instruction memory.

The compiler places every template's words in the HBM ``program`` region
(:func:`hwflow.compiler.layout.place_program`); the host starts a step with the byte address
and word count of the template serving it. :class:`Fetch` copies those words into the
instruction memory (``buffers.instr_kib``, which the compiler checks every template fits) over
its own AXI4 read port, in bursts of at most ``hbm.max_burst_bytes``; then the dispatcher runs
from it.

:class:`InstrMem` holds beats of ``hbm.port_bits`` in two banks (even and odd beats), so one
read returns the two consecutive beats holding any instruction (at most ``MAX_INSTR_BITS``
bits, which never spans more than two beats): ``window`` is the instruction starting at the
32-bit word index presented on ``raddr`` in the previous cycle.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hwflow.hw.machine.axi import AXI_INCR, AxiRead
from hwflow.hw.machine.decode import MAX_INSTR_BITS
from hwflow.hw.machine.params import MachineParams

__all__ = ["Fetch", "InstrMem"]


class InstrMem(wiring.Component):
    """Two-bank instruction memory: write one beat per cycle (``w_line`` counts beats), read
    one instruction window. A bank word holds two beats, so the two bank words read at once
    cover any instruction that starts in the first of them."""

    def __init__(self, mp: MachineParams) -> None:
        self.wb = mp.beat_bytes
        self.lines = max(2, mp.instr_bytes // self.wb)  # beats
        self.per_line = 2 * self.wb // 4  # 32-bit words per bank word
        if 32 * (self.per_line + 1) < MAX_INSTR_BITS:
            raise ValueError("instruction memory beats too narrow for the widest instruction")
        self.line_bits = (self.lines - 1).bit_length()
        self.word_bits = self.line_bits + (self.wb // 4 - 1).bit_length()
        super().__init__(
            {
                "w_line": In(self.line_bits),
                "w_data": In(8 * self.wb),
                "w_en": In(1),
                "raddr": In(self.word_bits),
                "window": Out(MAX_INSTR_BITS),
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        depth = max(1, self.lines // 4)
        lg = (self.per_line - 1).bit_length()
        banks = []
        for parity in (0, 1):
            mem = Memory(shape=unsigned(16 * self.wb), depth=depth, init=[])
            m.submodules[f"bank{parity}"] = mem
            w = mem.write_port(granularity=8 * self.wb)
            line = self.w_line >> 1
            m.d.comb += [
                w.addr.eq(line >> 1),
                w.data.eq(self.w_data.replicate(2)),
                w.en.eq(
                    (self.w_en & (line[0] == parity)).replicate(2)
                    & Cat(~self.w_line[0], self.w_line[0])
                ),
            ]
            banks.append(mem.read_port(domain="sync", transparent_for=()))
        line = self.raddr >> lg
        m.d.comb += [banks[0].addr.eq((line + 1) >> 1), banks[1].addr.eq(line >> 1)]
        odd = Signal()
        off = Signal(lg)
        m.d.sync += [odd.eq(line[0]), off.eq(self.raddr[:lg])]
        pair = Mux(odd, Cat(banks[1].data, banks[0].data), Cat(banks[0].data, banks[1].data))
        m.d.comb += self.window.eq((pair >> (off << 5))[:MAX_INSTR_BITS])
        return m


class Fetch(wiring.Component):
    """Copies ``words`` 32-bit words from HBM byte ``addr`` (4-byte aligned) into the
    instruction memory on ``start``, from the beat holding ``addr`` on (the memory's first
    ``addr % beat / 4`` words precede the program); ``done`` pulses when the last beat is
    written."""

    def __init__(self, mp: MachineParams, line_bits: int) -> None:
        self.mp = mp
        super().__init__(
            {
                "start": In(1),
                "addr": In(mp.axi_addr_bits),
                "words": In(24),
                "done": Out(1),
                "axi": Out(AxiRead(mp.axi_addr_bits, mp.axi_data_bits)),
                "w_line": Out(line_bits),
                "w_data": Out(mp.axi_data_bits),
                "w_en": Out(1),
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        mp, axi = self.mp, self.axi
        wb = mp.beat_bytes
        lg = (wb - 1).bit_length()
        mbb = mp.max_burst_beats
        cur = Signal(mp.axi_addr_bits)
        ar_left = Signal(24)  # beats still to request
        rx_left = Signal(24)  # beats still to receive
        room = mbb - ((cur >> lg) & (mbb - 1))
        beats = Mux(ar_left < room, ar_left, room)
        m.d.comb += [
            axi.araddr.eq(cur),
            axi.arlen.eq(beats - 1),
            axi.arsize.eq(lg),
            axi.arburst.eq(AXI_INCR),
            axi.aruser.eq(Cat(Const(wb - 1, lg), 0, 1)),  # whole beats, each its own start
            axi.arvalid.eq(ar_left != 0),
            axi.rready.eq(1),
            self.w_data.eq(axi.rdata),
            self.w_en.eq(axi.rvalid & (rx_left != 0)),
        ]
        with m.If(axi.arvalid & axi.arready):
            m.d.sync += [cur.eq(cur + (beats << lg)), ar_left.eq(ar_left - beats)]
        m.d.sync += self.done.eq(0)
        with m.If(self.w_en):
            m.d.sync += [self.w_line.eq(self.w_line + 1), rx_left.eq(rx_left - 1)]
            with m.If(rx_left == 1):
                m.d.sync += self.done.eq(1)
        with m.If(self.start):  # from the beat holding ``addr`` (top skips its leading words)
            n = ((self.addr[:lg] >> 2) + self.words + (wb // 4 - 1)) >> (lg - 2)
            m.d.sync += [
                cur.eq(self.addr & ~(wb - 1)),
                ar_left.eq(n),
                rx_left.eq(n),
                self.w_line.eq(0),
            ]
            with m.If(n == 0):
                m.d.sync += self.done.eq(1)
        return m
