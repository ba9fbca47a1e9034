"""The matmul unit's write combiner: chunks of output bytes (at most a word, at any byte
address, with byte enables) into strobed buffer word writes, one chunk per cycle.

A pending word collects consecutive chunks; it is written when a chunk moves past it (into
the next word or elsewhere) or on ``flush`` (``flushed``: the last pending word is written
this cycle, so it is visible after it). A chunk that straddles two words writes the
first and keeps the second pending. Only a chunk that both straddles and lands away from the
pending word needs two writes: it waits one cycle (``ready`` low). ``ready`` is also low
while a needed write is not granted.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hwflow.hw.machine.mmu_ports import ADDR_BITS, WritePort
from hwflow.isa import Buf

__all__ = ["WriteCombiner"]


def _bytes_mask(strb: Signal) -> Signal:
    return Cat(*(s.replicate(8) for s in strb))


class WriteCombiner(wiring.Component):
    """Chunks of up to ``chunk`` bytes into buffer ``buf`` (see the module doc)."""

    def __init__(self, words: dict[Buf, int], word_bytes: int, chunk: int) -> None:
        if chunk > word_bytes:
            raise ValueError(f"a chunk of {chunk} bytes exceeds the {word_bytes}-byte word")
        self.wb, self.chunk = word_bytes, chunk
        super().__init__(
            {
                "buf": In(3),
                "valid": In(1),
                "addr": In(ADDR_BITS),
                "data": In(8 * chunk),
                "strb": In(chunk),
                "flush": In(1),
                "ready": Out(1),
                "idle": Out(1),
                "flushed": Out(1),
                **{f"wr_{b.name.lower()}": Out(WritePort(words[b], word_bytes)) for b in Buf},
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        wb = self.wb
        sb = wb.bit_length() - 1
        w0, off = self.addr[sb:], self.addr[:sb]
        img = Cat(self.data, Const(0, 16 * wb - 8 * self.chunk)) << (off * 8)
        sm = Cat(self.strb, Const(0, 2 * wb - self.chunk)) << off
        lo_d, hi_d = img[: 8 * wb], img[8 * wb : 16 * wb]
        lo_s, hi_s = sm[:wb], sm[wb : 2 * wb]
        pv, pa = Signal(), Signal(ADDR_BITS - sb)
        pd, ps = Signal(8 * wb), Signal(wb)
        lo_m = _bytes_mask(lo_s)
        merged_d = (pd & ~lo_m) | (lo_d & lo_m)
        merged_s = ps | lo_s
        has_hi, any_in = hi_s.any(), (lo_s | hi_s).any()
        same = pv & (pa == w0)

        # the write of this cycle (if any)
        en, waddr, wdata, wstrb = Signal(), Signal(ADDR_BITS - sb), Signal(8 * wb), Signal(wb)
        ports = [getattr(self, f"wr_{b.name.lower()}") for b in Buf]
        grant = Array(p.grant for p in ports)[self.buf]
        for i, p in enumerate(ports):
            m.d.comb += [
                p.en.eq(en & (self.buf == i)),
                p.addr.eq(waddr),
                p.data.eq(wdata),
                p.strb.eq(wstrb),
            ]
        m.d.comb += self.idle.eq(~pv)
        chunk = self.valid & any_in
        with m.If(chunk & same):
            with m.If(has_hi):  # write the completed word, keep the straddling rest
                m.d.comb += [en.eq(1), waddr.eq(pa), wdata.eq(merged_d), wstrb.eq(merged_s)]
                m.d.comb += self.ready.eq(grant)
                with m.If(grant):
                    m.d.sync += [pa.eq(w0 + 1), pd.eq(hi_d), ps.eq(hi_s)]
            with m.Else():
                m.d.comb += self.ready.eq(1)
                m.d.sync += [pd.eq(merged_d), ps.eq(merged_s)]
        with m.Elif(chunk & pv):  # elsewhere: write the pending word first
            m.d.comb += [en.eq(1), waddr.eq(pa), wdata.eq(pd), wstrb.eq(ps)]
            m.d.comb += self.ready.eq(grant & ~has_hi)
            with m.If(grant):
                m.d.sync += [pa.eq(w0), pd.eq(lo_d), ps.eq(lo_s), pv.eq(~has_hi)]
        with m.Elif(chunk):
            with m.If(has_hi):
                m.d.comb += [en.eq(1), waddr.eq(w0), wdata.eq(lo_d), wstrb.eq(lo_s)]
                m.d.comb += self.ready.eq(grant)
                with m.If(grant):
                    m.d.sync += [pa.eq(w0 + 1), pd.eq(hi_d), ps.eq(hi_s), pv.eq(1)]
            with m.Else():
                m.d.comb += self.ready.eq(1)
                m.d.sync += [pa.eq(w0), pd.eq(lo_d), ps.eq(lo_s), pv.eq(1)]
        with m.Else():
            m.d.comb += self.ready.eq(1)
            with m.If(self.flush & pv):
                m.d.comb += [en.eq(1), waddr.eq(pa), wdata.eq(pd), wstrb.eq(ps)]
                m.d.comb += self.flushed.eq(grant)
                with m.If(grant):
                    m.d.sync += pv.eq(0)
        return m
