"""The matmul unit's pipelined operand reader and its buffer-port arbitration.

A :class:`PartReader` turns a stream of byte-span requests ("parts": up to one buffer word of
bytes at any byte address) into the realigned windows, in order, one request per cycle when
the port allows: a part inside one word costs one port read, a part straddling two words two,
and a word the same *stream* (``sid``) read last, or the word before it when it read the two
in a row, costs none (a per-stream cache of the last two consecutive words, so a stream of
consecutive parts, such as a weight tile's records, reads each buffer word once, and a
token's activation row spanning two words is read once per pass, not again for every row
group). A ``zero``
part reads nothing and yields zeros (operands past an extent). The window of a part leaves
one cycle after its last word read was granted (the buffer's read latency); the reader never
stalls its output, so whoever sends it requests must have room for the windows (the feed's
credit counters).
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Module, Mux, Signal, Value, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hwflow.hw.machine.mmu_ports import ADDR_BITS, ReadPort
from hwflow.isa import Buf

__all__ = ["PartReader", "arbitrate_reads", "part_layout"]


def part_layout(word_bytes: int, streams: int, tag_bits: int) -> data.StructLayout:
    """One request: byte ``addr``, ``nbytes`` (<= a word), ``zero`` (read nothing), stream
    ``sid`` (its cache entry), ``tag`` (passed through with the window)."""
    return data.StructLayout(
        {
            "addr": unsigned(ADDR_BITS),
            "nbytes": range(word_bytes + 1),
            "zero": 1,
            "sid": range(max(2, streams)),
            "tag": unsigned(max(1, tag_bits)),
        }
    )


class PartReader(wiring.Component):
    """Pipelined reader of parts from buffer ``buf`` (held for an instruction); ``clear``
    empties the caches (a new instruction: buffers may have changed)."""

    def __init__(
        self, words: dict[Buf, int], word_bytes: int, streams: int = 1, tag_bits: int = 1
    ) -> None:
        self.wb, self.streams, self.tag_bits = word_bytes, max(1, streams), max(1, tag_bits)
        super().__init__(
            {
                "buf": In(3),
                "clear": In(1),
                "req": In(stream.Signature(part_layout(word_bytes, streams, tag_bits))),
                "out_valid": Out(1),
                "out_win": Out(8 * word_bytes),
                "out_tag": Out(self.tag_bits),
                **{f"rd_{b.name.lower()}": Out(ReadPort(words[b], word_bytes)) for b in Buf},
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        wb = self.wb
        sb = wb.bit_length() - 1
        req = self.req.payload
        ports = [getattr(self, f"rd_{b.name.lower()}") for b in Buf]
        n = self.streams
        tags = Array(Signal(ADDR_BITS - sb, name=f"tag{s}") for s in range(n))
        tval = Array(Signal(name=f"tval{s}") for s in range(n))
        cdata = Array(Signal(8 * wb, name=f"cdata{s}") for s in range(n))
        # the word before the cached one (tag - 1), when the stream read the two in a row
        pval = Array(Signal(name=f"pval{s}") for s in range(n))
        pdata = Array(Signal(8 * wb, name=f"pdata{s}") for s in range(n))

        w0 = req.addr[sb:]
        two = req.addr[:sb] + req.nbytes > wb
        hit0 = tval[req.sid] & (tags[req.sid] == w0)
        hitp = tval[req.sid] & pval[req.sid] & (tags[req.sid] == w0 + 1)  # w0 is the previous
        need0 = ~req.zero & ~hit0 & ~hitp
        need1 = ~req.zero & two & ~hitp
        phase = Signal()  # the second word of a part that reads both
        want = self.req.valid & (phase | need0 | need1)
        raddr = Mux(phase | ~need0, w0 + 1, w0)
        grant = Array(p.grant for p in ports)[self.buf]
        for i, p in enumerate(ports):
            m.d.comb += [p.en.eq(want & (self.buf == i)), p.addr.eq(raddr)]
        last_read = phase | ~(need0 & need1)
        no_read = self.req.valid & ~want
        took = want & grant
        m.d.comb += self.req.ready.eq(no_read | (took & last_read))
        shift = tval[req.sid] & (raddr == tags[req.sid] + 1)  # the cached word becomes previous
        with m.If(took):
            m.d.sync += [tags[req.sid].eq(raddr), tval[req.sid].eq(1), phase.eq(~last_read)]
            m.d.sync += pval[req.sid].eq(shift)
        with m.If(self.clear):
            m.d.sync += [t.eq(0) for t in tval]

        # one cycle later: the word arrives (or a cached / zero part completes)
        f_valid, f_rd, f_last, f_two, f_zero = (Signal(name=f"f_{x}") for x in "vrltz")
        f_shift, f_prev = Signal(name="f_shift"), Signal(name="f_prev")
        f_off = Signal(sb)
        f_sid = Signal(range(max(2, n)))
        f_tag = Signal(self.tag_bits)
        m.d.sync += [
            f_valid.eq(took | no_read),
            f_rd.eq(took),
            f_last.eq(no_read | last_read),
            f_two.eq((took | no_read) & two),  # (a cached two-word part reads nothing)
            f_zero.eq(req.zero),
            f_shift.eq(took & shift),
            f_prev.eq(hitp),
            f_off.eq(req.addr[:sb]),
            f_sid.eq(req.sid),
            f_tag.eq(req.tag),
        ]
        rdata = Array(p.data for p in ports)[self.buf]
        cd, pd = cdata[f_sid], pdata[f_sid]
        with m.If(f_valid & f_rd):
            m.d.sync += cd.eq(rdata)
            with m.If(f_shift):
                m.d.sync += pd.eq(cd)
        one = Mux(f_rd, rdata, Mux(f_prev, pd, cd)) >> (f_off * 8)
        both = (Mux(f_prev, Cat(pd, cd), Cat(cd, rdata)) >> (f_off * 8))[: 8 * wb]
        m.d.comb += [
            self.out_valid.eq(f_valid & f_last),
            self.out_win.eq(Mux(f_zero, 0, Mux(f_two, both, one))),
            self.out_tag.eq(f_tag),
        ]
        return m


def arbitrate_reads(m: Module, unit: object, requesters: list[object]) -> None:
    """Share the unit's read ports among ``requesters`` (components with ``rd_<buf>`` ports,
    or ``(component, gate)``: that entry requests only while ``gate``; a component may sit at
    two places under complementary gates), fixed priority in list order; every requester sees
    the read data (only the one granted in the cycle before uses it)."""
    entries = [r if isinstance(r, tuple) else (r, None) for r in requesters]
    for b in Buf:
        name = f"rd_{b.name.lower()}"
        u = getattr(unit, name)
        taken = 0
        addr = 0
        grants: dict[int, Value] = {}
        for r, gate in reversed(entries):
            p = getattr(r, name)
            addr = Mux(p.en & (1 if gate is None else gate), p.addr, addr)
        for r, gate in entries:
            p = getattr(r, name)
            en = p.en if gate is None else p.en & gate
            grants[id(r)] = grants.get(id(r), 0) | (en & ~taken)
            taken = taken | en
        for r, _ in entries:
            p = getattr(r, name)
            if id(r) in grants:
                m.d.comb += [p.grant.eq(u.grant & grants.pop(id(r))), p.data.eq(u.data)]
        m.d.comb += [u.en.eq(taken), u.addr.eq(addr)]
