"""Buffer ports of the matmul unit (seam 2 of issue 7) and its sequential byte-span reader.

``ReadPort``/``WritePort`` are the unit-side signatures of an on-chip buffer's ports, with
exactly the member names the top level's ``bus.py`` defines (defined here until it lands):
read: ``addr`` (word index), ``en``, ``grant`` (same cycle), ``data`` (the cycle after a
granted request); write: ``addr``, ``data``, ``strb`` (byte enables), ``en``, ``grant``.

Instruction byte addresses are arbitrary, so the unit reads byte spans: :class:`SpanReader`
returns the ``word_bytes`` bytes starting at any byte address (one or two word reads; the
drain's few scalar reads); the operand streams use the pipelined
:class:`~hwflow.hw.machine.mmu_read.PartReader`, the writes the
:class:`~hwflow.hw.machine.mmu_write.WriteCombiner`.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hwflow.isa import Buf

__all__ = ["ADDR_BITS", "ReadPort", "SpanReader", "WritePort"]

#: Width of the unit's internal byte addresses (instruction offsets are 24 bits; strided row
#: addresses may exceed them, the buffer then wraps as a word index does).
ADDR_BITS = 32


class ReadPort(wiring.Signature):
    """Unit side of a buffer read port: ``words`` words of ``word_bytes`` bytes."""

    def __init__(self, words: int, word_bytes: int) -> None:
        super().__init__(
            {
                "addr": Out(range(words)),
                "en": Out(1),
                "grant": In(1),
                "data": In(8 * word_bytes),
            }
        )


class WritePort(wiring.Signature):
    """Unit side of a buffer write port (byte enables ``strb``)."""

    def __init__(self, words: int, word_bytes: int) -> None:
        super().__init__(
            {
                "addr": Out(range(words)),
                "data": Out(8 * word_bytes),
                "strb": Out(word_bytes),
                "en": Out(1),
                "grant": In(1),
            }
        )


def _shift_bits(word_bytes: int) -> int:
    if word_bytes & (word_bytes - 1):
        raise ValueError(f"word_bytes {word_bytes} must be a power of two")
    return word_bytes.bit_length() - 1


class SpanReader(wiring.Component):
    """On ``go`` (one cycle; ``buf``, byte ``addr``, ``nbytes`` <= ``word_bytes``), read the
    word(s) covering the span; ``valid`` pulses with ``win`` = the ``word_bytes`` bytes from
    ``addr`` on (bytes past ``nbytes`` are whatever the second word holds). ``go`` is taken
    only when ``idle``."""

    def __init__(self, words: dict[Buf, int], word_bytes: int) -> None:
        self.wb = word_bytes
        self.words = words
        super().__init__(
            {
                "go": In(1),
                "buf": In(3),
                "addr": In(ADDR_BITS),
                "nbytes": In(range(word_bytes + 1)),
                "idle": Out(1),
                "valid": Out(1),
                "win": Out(8 * word_bytes),
                **{f"rd_{b.name.lower()}": Out(ReadPort(words[b], word_bytes)) for b in Buf},
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        wb, sb = self.wb, _shift_bits(self.wb)
        buf = Signal(3)
        waddr = Signal(ADDR_BITS - sb)
        off = Signal(sb)
        two = Signal()
        d0 = Signal(8 * wb)
        en = Signal()
        ports = [getattr(self, f"rd_{b.name.lower()}") for b in Buf]
        # the request goes out in the cycle of ``go`` already (from the inputs), later from
        # the registers
        now = Signal()
        cur_buf = Mux(now, self.buf, buf)
        cur_addr = Mux(now, self.addr[sb:], waddr)
        grant = Array(p.grant for p in ports)[cur_buf]
        rdata = Array(p.data for p in ports)[buf]
        for i, p in enumerate(ports):
            m.d.comb += [p.en.eq(en & (cur_buf == i)), p.addr.eq(cur_addr)]
        m.d.comb += self.win.eq((Cat(d0, rdata) >> (off * 8))[: 8 * wb])
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.idle.eq(1)
                with m.If(self.go):
                    end = self.addr[:sb] + self.nbytes
                    m.d.comb += [now.eq(1), en.eq(1)]
                    m.d.sync += [
                        buf.eq(self.buf),
                        waddr.eq(self.addr[sb:]),
                        off.eq(self.addr[:sb]),
                        two.eq(end > wb),
                    ]
                    m.next = "REQ0"
                    with m.If(grant):
                        m.next = "DATA0"
            with m.State("REQ0"):
                m.d.comb += en.eq(1)
                with m.If(grant):
                    m.next = "DATA0"
            with m.State("DATA0"):  # word 0 arrives; a one-word span is complete
                m.d.sync += d0.eq(rdata)
                with m.If(two):
                    m.d.sync += waddr.eq(waddr + 1)
                    m.next = "REQ1"
                with m.Else():
                    m.d.comb += self.win.eq(rdata >> (off * 8))
                    m.d.comb += self.valid.eq(1)
                    m.next = "IDLE"
            with m.State("REQ1"):
                m.d.comb += en.eq(1)
                with m.If(grant):
                    m.next = "DATA1"
            with m.State("DATA1"):
                m.d.comb += self.valid.eq(1)
                m.next = "IDLE"
        return m
