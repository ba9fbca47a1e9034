"""The on-chip buffers and their ports (seam 2 of the machine).

A unit reaches a buffer through a :class:`ReadPort` and/or a :class:`WritePort` (unit side:
``Out`` members are driven by the unit). Read: the unit holds ``en`` and ``addr`` (a word
index) until ``grant``; ``data`` is valid in the cycle after the grant. Write: the unit holds
``en``, ``addr``, ``data`` and ``strb`` (one byte enable per byte) until ``grant``; the word
is written at the end of the granted cycle.

A :class:`BufferBank` is one buffer: a simple dual-port ``amaranth.lib.memory.Memory`` (one
read port of 1-cycle latency, not transparent; one write port with byte enables) behind two
fixed-priority arbiters, one for its readers and one for its writers, each in the order given
(the machine uses LD > ST > MM > MV > SFU, the host's debug port last). The read data goes to
every reader; only the one granted in the cycle before uses it.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["BufferBank", "ReadPort", "WritePort"]


class ReadPort(wiring.Signature):
    """A unit's read port onto one buffer (unit side), ``addr_bits`` word index bits,
    ``word_bytes`` bytes per word."""

    def __init__(self, addr_bits: int, word_bytes: int) -> None:
        self.addr_bits, self.word_bytes = addr_bits, word_bytes
        super().__init__(
            {
                "addr": Out(addr_bits),
                "en": Out(1),
                "grant": In(1),
                "data": In(8 * word_bytes),
            }
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ReadPort) and (self.addr_bits, self.word_bytes) == (
            other.addr_bits,
            other.word_bytes,
        )

    def __hash__(self) -> int:
        return hash((ReadPort, self.addr_bits, self.word_bytes))


class WritePort(wiring.Signature):
    """A unit's write port onto one buffer (unit side)."""

    def __init__(self, addr_bits: int, word_bytes: int) -> None:
        self.addr_bits, self.word_bytes = addr_bits, word_bytes
        super().__init__(
            {
                "addr": Out(addr_bits),
                "data": Out(8 * word_bytes),
                "strb": Out(word_bytes),
                "en": Out(1),
                "grant": In(1),
            }
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WritePort) and (self.addr_bits, self.word_bytes) == (
            other.addr_bits,
            other.word_bytes,
        )

    def __hash__(self) -> int:
        return hash((WritePort, self.addr_bits, self.word_bytes))


class BufferBank(wiring.Component):
    """One buffer of ``depth`` words of ``word_bytes`` with ``readers`` read ports and
    ``writers`` write ports, each list in priority order (index 0 wins)."""

    def __init__(self, depth: int, word_bytes: int, readers: int, writers: int) -> None:
        self.depth, self.word_bytes = depth, word_bytes
        self.addr_bits = max(1, (depth - 1).bit_length())
        rp, wp = ReadPort(self.addr_bits, word_bytes), WritePort(self.addr_bits, word_bytes)
        super().__init__(
            {
                "rd": In(rp).array(max(readers, 1)),
                "wr": In(wp).array(max(writers, 1)),
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.submodules.mem = mem = Memory(
            shape=unsigned(8 * self.word_bytes), depth=self.depth, init=[]
        )
        rd = mem.read_port(domain="sync", transparent_for=())
        wr = mem.write_port(granularity=8)
        self._arbitrate(m, self.rd, rd.addr, None)
        m.d.comb += [p.data.eq(rd.data) for p in self.rd]
        m.d.comb += rd.en.eq(1)
        self._arbitrate(m, self.wr, wr.addr, wr)
        return m

    @staticmethod
    def _arbitrate(m: Module, ports: list, addr: object, wr: object | None) -> None:
        """Fixed priority: the first requesting port gets the memory port this cycle."""
        taken = 0
        for p in ports:
            m.d.comb += p.grant.eq(p.en & ~taken)
            taken = taken | p.en
        sel_addr = 0
        for p in reversed(ports):
            sel_addr = Mux(p.en, p.addr, sel_addr)
        m.d.comb += addr.eq(sel_addr)
        if wr is not None:
            data, en = 0, 0
            for p in reversed(ports):
                data = Mux(p.en, p.data, data)
                en = Mux(p.en, p.strb, en)
            m.d.comb += [wr.data.eq(data), wr.en.eq(en)]
