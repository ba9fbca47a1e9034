"""Instruction fetch: the template's words from HBM into the instruction memory.

The compiler places every template's words in the HBM ``program`` region
(:func:`hwflow.compiler.layout.place_program`); the host starts a step with the byte address
and word count of the template serving it. :class:`Fetch` copies those words into the
instruction memory (``buffers.instr_kib``, which the compiler checks every template fits) over
its own AXI4 read port, in bursts of at most ``hbm.max_burst_bytes``; then the dispatcher runs
from it.

:class:`InstrMem` has the shape :func:`hwflow.hw.memories.instr_memory` counts for the resource
estimate: two banks (even and odd rows) of 16-word rows, so one read returns the two
consecutive rows holding any instruction (at most ``MAX_INSTR_BITS`` bits): ``window`` is the
instruction starting at the 32-bit word index presented on ``raddr`` in the previous cycle.
:class:`Fetch` writes a beat into it a row pair per cycle.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hwflow.errors import UnsupportedError
from hwflow.hw.machine.axi import AXI_INCR, AxiRead
from hwflow.hw.machine.decode import MAX_INSTR_BITS
from hwflow.hw.machine.params import MachineParams
from hwflow.hw.memories import instr_memory

__all__ = ["Fetch", "InstrMem"]


class InstrMem(wiring.Component):
    """Two-bank instruction memory of the shape :func:`hwflow.hw.memories.instr_memory`
    counts (the one definition): rows of ``INSTR_ROW_WORDS`` 32-bit words, even rows in bank 0
    and odd rows in bank 1, so one read of both banks returns the two consecutive rows that
    hold any instruction starting in the first. Written a row pair per cycle (``w_line`` is
    the pair, the bank address; ``w_data`` the two rows, the even one low); ``window`` is the
    instruction starting at the 32-bit word index presented on ``raddr`` in the previous
    cycle."""

    def __init__(self, mp: MachineParams) -> None:
        shape = instr_memory(mp.instr_bytes)
        self.depth = shape.depth  # row pairs (bank words)
        self.row_bits = shape.width
        self.per_line = shape.width // 32  # 32-bit words per row
        if 32 * (self.per_line + 1) < MAX_INSTR_BITS:
            raise ValueError("instruction memory rows too narrow for the widest instruction")
        self.line_bits = max(1, (self.depth - 1).bit_length())
        self.word_bits = self.line_bits + 1 + (self.per_line - 1).bit_length()
        super().__init__(
            {
                "w_line": In(self.line_bits),
                "w_data": In(2 * self.row_bits),
                "w_en": In(1),
                "raddr": In(self.word_bits),
                "window": Out(MAX_INSTR_BITS),
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        lg = (self.per_line - 1).bit_length()
        banks = []
        for parity in (0, 1):
            mem = Memory(shape=unsigned(self.row_bits), depth=self.depth, init=[])
            m.submodules[f"bank{parity}"] = mem
            w = mem.write_port()
            m.d.comb += [
                w.addr.eq(self.w_line),
                w.data.eq(self.w_data.word_select(parity, self.row_bits)),
                w.en.eq(self.w_en),
            ]
            banks.append(mem.read_port(domain="sync", transparent_for=()))
        row = self.raddr >> lg
        m.d.comb += [banks[0].addr.eq((row + 1) >> 1), banks[1].addr.eq(row >> 1)]
        odd = Signal()
        off = Signal(lg)
        m.d.sync += [odd.eq(row[0]), off.eq(self.raddr[:lg])]
        pair = Mux(odd, Cat(banks[1].data, banks[0].data), Cat(banks[0].data, banks[1].data))
        m.d.comb += self.window.eq((pair >> (off << 5))[:MAX_INSTR_BITS])
        return m


class Fetch(wiring.Component):
    """Copies ``words`` 32-bit words from HBM byte ``addr`` (4-byte aligned) into the
    instruction memory on ``start``, from the beat holding ``addr`` on (the memory's first
    ``addr % beat / 4`` words precede the program); ``done`` pulses when the last beat is
    written. A beat holds ``beat / pair`` row pairs of the memory (``pair`` = two rows,
    :func:`hwflow.hw.memories.instr_memory`): the first is written in the cycle the beat
    arrives, the others on the cycles after it (the R channel waits meanwhile), so with a beat
    of one pair (tiny) a beat is written per cycle."""

    def __init__(self, mp: MachineParams, line_bits: int) -> None:
        self.mp = mp
        self.pair_bits = 2 * instr_memory(mp.instr_bytes).width
        self.pairs = mp.axi_data_bits // self.pair_bits  # row pairs per beat
        if self.pairs < 1 or mp.axi_data_bits % self.pair_bits:
            raise UnsupportedError(
                f"preset {mp.preset}: a {mp.beat_bytes}-byte HBM beat must hold whole "
                f"instruction-memory row pairs of {self.pair_bits // 8} bytes"
            )
        super().__init__(
            {
                "start": In(1),
                "addr": In(mp.axi_addr_bits),
                "words": In(24),
                "done": Out(1),
                "axi": Out(AxiRead(mp.axi_addr_bits, mp.axi_data_bits)),
                "w_line": Out(line_bits),
                "w_data": Out(self.pair_bits),
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
        ]
        with m.If(axi.arvalid & axi.arready):
            m.d.sync += [cur.eq(cur + (beats << lg)), ar_left.eq(ar_left - beats)]
        self._rows(m, rx_left)
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

    def _rows(self, m: Module, rx_left: Signal) -> None:
        """The R channel into the memory, a row pair per cycle: a beat's first pair at once,
        the rest from ``held`` (``rem`` pairs left) while ``rready`` is low."""
        axi, k = self.axi, self.pairs
        held = Signal(self.mp.axi_data_bits)
        rem = Signal(range(k))
        idx = Signal(range(k))
        take = axi.rvalid & axi.rready & (rx_left != 0)
        m.d.comb += axi.rready.eq(rem == 0)
        if k > 1:
            m.d.comb += self.w_data.eq(
                Mux(rem == 0, axi.rdata[: self.pair_bits], held.word_select(idx, self.pair_bits))
            )
        else:
            m.d.comb += self.w_data.eq(axi.rdata)
        m.d.comb += self.w_en.eq(take | (rem != 0))
        m.d.sync += self.done.eq(0)
        with m.If(self.w_en):
            m.d.sync += self.w_line.eq(self.w_line + 1)
        last = Signal()  # the held beat is the transfer's last
        with m.If(take):
            m.d.sync += [rx_left.eq(rx_left - 1), last.eq(rx_left == 1)]
            if k > 1:
                m.d.sync += [held.eq(axi.rdata), rem.eq(k - 1), idx.eq(1)]
            else:
                with m.If(rx_left == 1):
                    m.d.sync += self.done.eq(1)
        if k > 1:
            with m.If(rem != 0):
                m.d.sync += [rem.eq(rem - 1), idx.eq(idx + 1)]
                with m.If((rem == 1) & last):
                    m.d.sync += self.done.eq(1)
