"""Buffer ports of the matmul unit (seam 2 of issue 7) and its byte-span reader and writer.

``ReadPort``/``WritePort`` are the unit-side signatures of an on-chip buffer's ports, with
exactly the member names the top level's ``bus.py`` defines (defined here until it lands):
read: ``addr`` (word index), ``en``, ``grant`` (same cycle), ``data`` (the cycle after a
granted request); write: ``addr``, ``data``, ``strb`` (byte enables), ``en``, ``grant``.

Instruction byte addresses are arbitrary, so the unit reads and writes byte spans:
:class:`SpanReader` returns the ``word_bytes`` bytes starting at any byte address (one or two
word reads) and :class:`SpanWriter` writes up to four bytes at any byte address with strobes
(one or two word writes). Both drive one port of the buffer the request names.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hwflow.isa import Buf

__all__ = ["ADDR_BITS", "ReadPort", "SpanReader", "SpanWriter", "WritePort"]

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


class SpanWriter(wiring.Component):
    """On ``go`` (``buf``, byte ``addr``, ``value``, ``nbytes`` in 1..4), write the value's low
    ``nbytes`` bytes little-endian at ``addr`` with strobes (one or two words); ``done``
    pulses in the cycle after the last word write was granted (the bytes are then visible)."""

    def __init__(self, words: dict[Buf, int], word_bytes: int) -> None:
        self.wb = word_bytes
        super().__init__(
            {
                "go": In(1),
                "buf": In(3),
                "addr": In(ADDR_BITS),
                "value": In(32),
                "nbytes": In(range(5)),
                "idle": Out(1),
                "done": Out(1),
                **{f"wr_{b.name.lower()}": Out(WritePort(words[b], word_bytes)) for b in Buf},
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        wb, sb = self.wb, _shift_bits(self.wb)
        buf = Signal(3)
        waddr = Signal(ADDR_BITS - sb)
        data = Signal(16 * wb)  # two words
        strb = Signal(2 * wb)
        en = Signal()
        hi = Signal()  # writing the second word
        ports = [getattr(self, f"wr_{b.name.lower()}") for b in Buf]
        grant = Array(p.grant for p in ports)[buf]
        cur_d = data.word_select(hi, 8 * wb)
        cur_s = strb.word_select(hi, wb)
        for i, p in enumerate(ports):
            m.d.comb += [
                p.en.eq(en & (buf == i)),
                p.addr.eq(waddr + hi),
                p.data.eq(cur_d),
                p.strb.eq(cur_s),
            ]
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.idle.eq(1)
                with m.If(self.go):
                    off = self.addr[:sb]
                    mask = Signal(4)
                    with m.Switch(self.nbytes):
                        for n in range(1, 5):
                            with m.Case(n):
                                m.d.comb += mask.eq((1 << n) - 1)
                    m.d.sync += [
                        buf.eq(self.buf),
                        waddr.eq(self.addr[sb:]),
                        hi.eq(0),
                        data.eq(Cat(self.value, Const(0, 16 * wb - 32)) << (off * 8)),
                        strb.eq(Cat(mask, Const(0, unsigned(2 * wb - 4))) << off),
                    ]
                    m.next = "WRITE"
            with m.State("WRITE"):
                m.d.comb += en.eq(cur_s.any())
                with m.If(grant | ~cur_s.any()):
                    with m.If(hi | ~strb[wb:].any()):
                        m.next = "DONE"
                    with m.Else():
                        m.d.sync += hi.eq(1)
            with m.State("DONE"):
                m.d.comb += self.done.eq(1)
                m.next = "IDLE"
        return m
