"""The SFU's output writer: byte runs at arbitrary addresses in, strobed word writes out.

A request is up to ``max_bytes`` bytes at a byte address (a group of output elements, with
the row factor in front of a row's first group). The writer keeps one partly filled word and
merges consecutive requests into it, so a row written in order costs one word write per
``word_bytes`` bytes; a request reaching into the next word writes the full one out and keeps
the rest (a word completed exactly is written at once); a request into a different word first writes the held one (one cycle without
accepting). ``flush`` writes the held word out; ``idle`` says nothing is held.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hwflow.hw.machine.sfu_stream import ADDR_BITS

__all__ = ["Writer", "write_layout"]


def write_layout(max_bytes: int) -> data.StructLayout:
    """One write request: byte address, bytes (first at ``addr``), byte count."""
    return data.StructLayout(
        {"addr": ADDR_BITS, "data": 8 * max_bytes, "n": max_bytes.bit_length()}
    )


class Writer(wiring.Component):
    """Merges byte runs into strobed word writes (``w_*``, routed by the SFU to a buffer)."""

    def __init__(self, word_bytes: int, max_bytes: int) -> None:
        if max_bytes > word_bytes:
            raise ValueError(f"a write of {max_bytes!r} bytes must fit a {word_bytes}-byte word")
        self.wb, self.mb = word_bytes, max_bytes
        self.wsh = word_bytes.bit_length() - 1
        super().__init__(
            {
                "req": In(stream.Signature(write_layout(max_bytes))),
                "flush": In(1),
                "idle": Out(1),
                "w_addr": Out(ADDR_BITS - self.wsh),
                "w_data": Out(8 * word_bytes),
                "w_strb": Out(word_bytes),
                "w_en": Out(1),
                "w_grant": In(1),
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        wb = self.wb
        held = Signal()
        idx = Signal(ADDR_BITS - self.wsh)
        hdata = Signal(8 * wb)
        hstrb = Signal(wb)
        r = self.req.payload
        lo = r.addr[self.wsh :]
        off = r.addr[: self.wsh]
        bmask = Signal(self.mb)
        m.d.comb += bmask.eq((Const(1, self.mb + 1) << r.n) - 1)
        sdata = Signal(16 * wb)
        sstrb = Signal(2 * wb)
        m.d.comb += [sdata.eq(r.data << (off << 3)), sstrb.eq(bmask << off)]
        spill = sstrb[wb:].any()
        same = held & (idx == lo)
        mdata = Signal(8 * wb)
        mstrb = Signal(wb)
        for i in range(wb):  # merge the request's first-word bytes into the held word
            keep = same & hstrb[i] & ~sstrb[i]
            m.d.comb += [
                mdata[8 * i : 8 * i + 8].eq(
                    Mux(keep, hdata[8 * i : 8 * i + 8], sdata[8 * i : 8 * i + 8])
                ),
                mstrb[i].eq(sstrb[i] | (same & hstrb[i])),
            ]
        m.d.comb += self.idle.eq(~held)
        with m.If(self.req.valid & held & (idx != lo)):  # a jump: write the held word first
            m.d.comb += [
                self.w_en.eq(1),
                self.w_addr.eq(idx),
                self.w_data.eq(hdata),
                self.w_strb.eq(hstrb),
            ]
            with m.If(self.w_grant & ~sstrb[wb - 1]):  # the request starts the next held word
                m.d.comb += self.req.ready.eq(1)
                m.d.sync += [idx.eq(lo), hdata.eq(sdata[: 8 * wb]), hstrb.eq(sstrb[:wb])]
            with m.Elif(self.w_grant):
                m.d.sync += held.eq(0)
        with m.Elif(self.req.valid & sstrb[wb - 1]):  # first word complete: write, keep the rest
            m.d.comb += [
                self.w_en.eq(1),
                self.w_addr.eq(lo),
                self.w_data.eq(mdata),
                self.w_strb.eq(mstrb),
                self.req.ready.eq(self.w_grant),
            ]
            with m.If(self.w_grant):
                m.d.sync += [
                    held.eq(spill),
                    idx.eq(lo + 1),
                    hdata.eq(sdata[8 * wb :]),
                    hstrb.eq(sstrb[wb:]),
                ]
        with m.Elif(self.req.valid):
            m.d.comb += self.req.ready.eq(1)
            m.d.sync += [held.eq(1), idx.eq(lo), hdata.eq(mdata), hstrb.eq(mstrb)]
        with m.Elif(self.flush & held):
            m.d.comb += [
                self.w_en.eq(1),
                self.w_addr.eq(idx),
                self.w_data.eq(hdata),
                self.w_strb.eq(hstrb),
            ]
            with m.If(self.w_grant):
                m.d.sync += held.eq(0)
        return m
