"""The SFU's operand streamer: byte-addressed segments in, element groups out.

A *segment* is ``count`` elements of ``1 << wsh`` bytes starting at an arbitrary byte address
of one buffer (a row of an operand, a half head of RoPE, the norm's gains). The streamer reads
the buffer words covering each segment in order (one read per cycle while its word FIFO has
room, so it runs ahead of the consumer and across segment boundaries), and its aligner cuts
the words into *groups* of up to ``lanes`` elements (the last group of a segment may be
shorter), one group per cycle: the group's bytes are the two words at the FIFO head shifted
by the byte pointer, so a group may straddle two words and a segment may start anywhere.
Segments never share a group; ``last`` marks a segment's final group. A segment marked
``reuse`` whose first word is the previous segment's last word (same buffer) takes that word
from the FIFO instead of reading it again (RoPE's half heads and the cos/sin rows, which
would otherwise read each word up to four times through one read port).
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Module, Mux, Signal
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["ADDR_BITS", "COUNT_BITS", "Streamer", "group_layout", "seg_layout"]

ADDR_BITS = 24  #: byte address width inside the SFU (the ISA's operand offsets are 24 bits)
COUNT_BITS = 16  #: elements per segment (the ISA's ``cols``)


def seg_layout() -> data.StructLayout:
    """One segment command: buffer id, byte address, element count (> 0), log2 element bytes,
    and whether it may reuse the previous segment's last word (in the FIFO: whether it does)."""
    return data.StructLayout(
        {"buf": 3, "addr": ADDR_BITS, "count": COUNT_BITS, "wsh": 2, "reuse": 1}
    )


def group_layout(group_bytes: int, lanes: int) -> data.StructLayout:
    """One group: its bytes (element i at bytes ``[i << wsh, (i+1) << wsh)``), element count,
    whether it ends its segment."""
    return data.StructLayout({"data": 8 * group_bytes, "n": lanes.bit_length(), "last": 1})


class Streamer(wiring.Component):
    """Reads segments from the buffers and hands out aligned element groups.

    ``req_*``: the word request (the SFU routes it to buffer ``req_buf``'s read port);
    ``rd_data``: the data of the request granted in the previous cycle (from ``pend_buf``).
    """

    def __init__(self, word_bytes: int, lanes: int, depth: int = 4, seg_depth: int = 4) -> None:
        if word_bytes & (word_bytes - 1) or word_bytes < 4 * lanes or depth & (depth - 1):
            raise ValueError(
                f"word_bytes {word_bytes!r} must be a power of two >= 4 * lanes ({4 * lanes}), "
                f"depth {depth!r} a power of two"
            )
        self.wb, self.lanes, self.depth, self.seg_depth = word_bytes, lanes, depth, seg_depth
        self.wsh_word = word_bytes.bit_length() - 1
        super().__init__(
            {
                "seg": In(stream.Signature(seg_layout())),
                "g": Out(stream.Signature(group_layout(4 * lanes, lanes))),
                "req_en": Out(1),
                "req_buf": Out(3),
                "req_word": Out(ADDR_BITS - self.wsh_word),
                "req_grant": In(1),
                "pend_buf": Out(3),
                "rd_data": In(8 * word_bytes),
                "idle": Out(1),
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        width = seg_layout().size
        m.submodules.rq = rq = fifo.SyncFIFO(width=width, depth=self.seg_depth)
        m.submodules.aq = aq = fifo.SyncFIFO(width=width, depth=self.seg_depth)
        stored = self._share(m)
        m.d.comb += [
            self.seg.ready.eq(rq.w_rdy & aq.w_rdy),
            rq.w_data.eq(stored.as_value()),
            aq.w_data.eq(stored.as_value()),
            rq.w_en.eq(self.seg.valid & self.seg.ready),
            aq.w_en.eq(self.seg.valid & self.seg.ready),
        ]
        words = Array(Signal(8 * self.wb, name=f"w{i}") for i in range(self.depth))
        count = Signal(range(self.depth + 1))
        pend = Signal()
        pops = Signal(range(3))
        rd = Signal(range(self.depth))
        self._reader(m, rq, count, pend)
        self._aligner(m, aq, words, rd, count, pops)
        m.d.sync += pend.eq(self.req_en & self.req_grant)
        with m.If(pend):  # the slot after the last held word (pops do not move it)
            m.d.sync += words[(rd + count) % self.depth].eq(self.rd_data)
        m.d.sync += count.eq(count + pend - pops)
        m.d.comb += self.idle.eq(~rq.r_rdy & ~aq.r_rdy & (count == 0) & ~pend & ~self._busy)
        return m

    def _share(self, m: Module) -> data.View:
        """The pushed segment with ``reuse`` true only if it starts in the previous one's last
        word of the same buffer."""
        seg = self.seg.payload
        first = seg.addr[self.wsh_word :]
        end = seg.addr + (seg.count << seg.wsh) - 1
        pbuf, plast = Signal(3), Signal(ADDR_BITS - self.wsh_word)
        with m.If(self.seg.valid & self.seg.ready):
            m.d.sync += [pbuf.eq(seg.buf), plast.eq(end[self.wsh_word : ADDR_BITS])]
        stored = Signal(seg_layout())
        m.d.comb += [
            stored.eq(seg),
            stored.reuse.eq(seg.reuse & (seg.buf == pbuf) & (first == plast)),
        ]
        return stored

    def _reader(self, m: Module, rq: fifo.SyncFIFO, count: Signal, pend: Signal) -> None:
        """Issue the word reads of each segment in order while the word FIFO has room."""
        seg = data.View(seg_layout(), rq.r_data)
        word = Signal(ADDR_BITS - self.wsh_word)
        last = Signal(ADDR_BITS - self.wsh_word)
        buf = Signal(3)
        active = Signal()
        self._busy = active
        end = seg.addr + (seg.count << seg.wsh) - 1
        m.d.comb += [
            self.req_en.eq(active & (count + pend < self.depth)),
            self.req_buf.eq(buf),
            self.req_word.eq(word),
        ]
        final = self.req_en & self.req_grant & (word == last)
        first = seg.addr[self.wsh_word :]
        lastw = end[self.wsh_word : ADDR_BITS]
        with m.If(rq.r_rdy & (~active | final)):  # next segment, without a gap
            m.d.comb += rq.r_en.eq(1)
            m.d.sync += [
                active.eq(~(seg.reuse & (first == lastw))),  # all in the reused word
                buf.eq(seg.buf),
                word.eq(first + seg.reuse),
                last.eq(lastw),
            ]
        with m.Elif(self.req_en & self.req_grant):
            m.d.sync += word.eq(word + 1)
            with m.If(word == last):
                m.d.sync += active.eq(0)
        pbuf = Signal(3)
        m.d.sync += pbuf.eq(buf)
        m.d.comb += self.pend_buf.eq(pbuf)

    def _aligner(
        self,
        m: Module,
        aq: fifo.SyncFIFO,
        words: Array,
        rd: Signal,
        count: Signal,
        pops: Signal,
    ) -> None:
        """Cut the head words into groups: shift the two head words by the byte pointer."""
        seg = data.View(seg_layout(), aq.r_data)
        wb = self.wb
        ptr = Signal(range(wb))
        left = Signal(COUNT_BITS)
        wsh = Signal(2)
        started = Signal()
        n = Signal(range(self.lanes + 1))
        m.d.comb += n.eq(Mux(left < self.lanes, left, self.lanes))
        gbytes = Signal(range(4 * self.lanes + 1))
        m.d.comb += gbytes.eq(n << wsh)
        span = Signal()
        m.d.comb += span.eq(ptr + gbytes > wb)
        pair = Cat(words[rd], words[(rd + 1) % self.depth])
        shifted = Signal(2 * 8 * wb)
        m.d.comb += shifted.eq(pair >> (ptr << 3))
        last = Signal()
        m.d.comb += [
            last.eq(left == n),
            self.g.valid.eq(started & (count >= 1 + span)),
            self.g.payload.data.eq(shifted[: 8 * 4 * self.lanes]),
            self.g.payload.n.eq(n),
            self.g.payload.last.eq(last),
        ]
        load = Signal()  # take the next segment (none started, or the last group leaves)
        m.d.comb += load.eq(aq.r_rdy & (~started | (self.g.valid & self.g.ready & last)))
        nxt = ptr + gbytes
        # a finished segment's last word stays (``kept``) until the next segment says whether
        # it reuses it
        kept = Signal()
        drop = Signal()
        m.d.comb += drop.eq(load & ~seg.reuse & (kept | (self.g.valid & self.g.ready & last)))
        with m.If(self.g.valid & self.g.ready & last):
            m.d.sync += kept.eq(~load)
        with m.Elif(load):
            m.d.sync += kept.eq(0)
        with m.If(self.g.valid & self.g.ready):
            m.d.sync += left.eq(left - n)
            with m.If(last):
                m.d.comb += pops.eq(span + drop)
            with m.Elif(nxt >= wb):
                m.d.comb += pops.eq(1)
                m.d.sync += ptr.eq(nxt - wb)
            with m.Else():
                m.d.sync += ptr.eq(nxt)
        with m.If(load & ~(self.g.valid & self.g.ready)):
            m.d.comb += pops.eq(drop)
        with m.If(load):
            m.d.comb += aq.r_en.eq(1)
            m.d.sync += [
                ptr.eq(seg.addr[: self.wsh_word]),
                left.eq(seg.count),
                wsh.eq(seg.wsh),
            ]  # after the consumption above: its updates yield
        with m.If(load):
            m.d.sync += started.eq(1)
        with m.Elif(self.g.valid & self.g.ready & last):
            m.d.sync += started.eq(0)
        m.d.sync += rd.eq((rd + pops) % self.depth)
