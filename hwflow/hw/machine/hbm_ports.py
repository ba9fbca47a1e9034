"""The machine's wide AXI4 ports on the HBM's per-channel AXI4 ports (the board boundary).

Inside the machine, fetch, LD and ST each speak AXI4 one buffer word wide (``MachineParams.
beat_bytes``; :mod:`hwflow.hw.machine.params`). An HBM pseudo-channel's port is
``port_bits`` wide and takes bursts of at most ``port_burst_bytes`` (Xilinx PG276; the
preset's ``hbm.port_bits`` / ``hbm.max_burst_bytes``). A word lies in one interleave granule,
so in one channel (:func:`hwflow.isa.hbm_channel`: granule ``addr // interleave_bytes``
modulo ``channels``); the channel's own byte address is its granules side by side
(:func:`channel_address`). This module converts between the two:

* :class:`ReadSplitter`: wide read bursts from ``sources`` managers (fetch, LD) become, word
  by word, channel bursts of ``min(word, port_burst_bytes)`` bytes on the word's channel (one
  per cycle). Each channel assembles its words' port beats into a word register; an order
  FIFO of (channel, last, source) per word returns the words to their manager in request
  order (AXI4 read data of one ID is in order, IHI0022 A5.3.1), whichever channel finishes
  first.
* :class:`WriteSplitter`: a wide write burst's words go to their channels the same way: the
  AW side issues the channel bursts and queues each word's channel for the W side, which
  hands the word (data and strobes) to that channel's register, sent there a port beat per
  cycle; a word's write response is its channel bursts' (counted per channel: a channel
  answers in order), the wide burst's once its last word's are in.

Throughput: a channel moves a port beat per cycle, so a word takes ``word / port`` cycles in
its channel (u280: 2,048 / 64 = 32) and the channels work in parallel, up to the words in
flight (the order FIFO, ``outstanding * max_burst_beats`` words). The splitters issue one
channel burst per cycle (u280: a word is 4 bursts of 512 bytes). The user sideband of the
wide ports (the simulated HBM's hints) is not forwarded.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from hwflow.hw.hier import Hierarchy, place
from hwflow.hw.machine.axi import AXI_INCR, AxiRead, AxiWrite
from hwflow.hw.machine.params import MachineParams

__all__ = ["ReadSplitter", "WriteSplitter", "channel_addr_bits", "channel_address"]


def _module(mp: MachineParams, part: str) -> str:
    """Verilog module name of a channel leaf (its shape depends on the word and port)."""
    return f"hwflow_hbm_{part}_w{mp.beat_bytes}_p{mp.port_bits // 8}_b{mp.port_burst_bytes}"


def channel_addr_bits(mp: MachineParams) -> int:
    """Bits of a byte address inside one channel."""
    return mp.axi_addr_bits - (mp.channels - 1).bit_length()


def channel_address(mp: MachineParams, addr: object) -> tuple[object, object]:
    """(channel, byte address in the channel) of HBM byte ``addr`` (a value): granule
    ``addr // g`` is in channel ``granule % channels`` at its offset ``granule // channels``
    there (:func:`hwflow.isa.hbm_channel`)."""
    lg = (mp.interleave_bytes - 1).bit_length()
    lc = (mp.channels - 1).bit_length()
    ch = addr[lg : lg + lc] if lc else 0
    local = Cat(addr[:lg], addr[lg + lc :])[: channel_addr_bits(mp)]
    return ch, local


class _Geometry:
    """Sizes of the conversion: word bytes, channel bursts per word and port beats per
    channel burst and per word."""

    def __init__(self, mp: MachineParams) -> None:
        self.wb = mp.beat_bytes
        self.pb = mp.port_bits // 8
        self.burst = min(self.wb, mp.port_burst_bytes)
        self.bursts = self.wb // self.burst  # channel bursts per word
        self.beats = self.burst // self.pb  # port beats per channel burst
        self.lanes = self.wb // self.pb  # port beats per word
        self.lg = (self.wb - 1).bit_length()
        self.depth = max(2, mp.outstanding * mp.max_burst_beats)


class _Walker:
    """The address side shared by both splitters: takes one wide burst (``start``), walks its
    words and issues each word's channel bursts, one per cycle, on the channel's address
    channel (``prefix`` ``ar``/``aw``); ``word_done`` is high in the cycle a word's last
    channel burst is accepted, with ``ch`` its channel and ``last`` its burst's end."""

    def __init__(self, m: Module, mp: MachineParams, g: _Geometry, ports: list, prefix: str,
                 room: object) -> None:  # fmt: skip
        self.busy = Signal(name=f"{prefix}_busy")
        self.cur = Signal(mp.axi_addr_bits, name=f"{prefix}_cur")
        self.left = Signal(9, name=f"{prefix}_left")  # words of the burst still to issue
        j = Signal(range(max(g.bursts, 2)), name=f"{prefix}_j")
        ch, local = channel_address(mp, self.cur)
        self.ch = Signal(max(1, (mp.channels - 1).bit_length()), name=f"{prefix}_ch")
        m.d.comb += self.ch.eq(ch)
        self.last = self.left == 1
        ready = Array(getattr(p, f"{prefix}ready") for p in ports)[self.ch]
        go = self.busy & room
        for c, p in enumerate(ports):
            m.d.comb += [
                getattr(p, f"{prefix}addr").eq(local + j * g.burst),
                getattr(p, f"{prefix}len").eq(g.beats - 1),
                getattr(p, f"{prefix}size").eq((g.pb - 1).bit_length()),
                getattr(p, f"{prefix}burst").eq(AXI_INCR),
                getattr(p, f"{prefix}valid").eq(go & (self.ch == c)),
            ]
        fire = go & ready
        self.word_done = Signal(name=f"{prefix}_word_done")
        m.d.comb += self.word_done.eq(fire & (j == g.bursts - 1))
        with m.If(fire):
            m.d.sync += j.eq(j + 1)
            with m.If(self.word_done):
                m.d.sync += [j.eq(0), self.cur.eq(self.cur + g.wb), self.left.eq(self.left - 1)]
                with m.If(self.last):
                    m.d.sync += self.busy.eq(0)

    def start(self, m: Module, g: _Geometry, addr: object, length: object) -> None:
        """Take a wide burst of ``length + 1`` words from byte ``addr`` (its word's start)."""
        m.d.sync += [
            self.busy.eq(1),
            self.cur.eq(addr & ~(g.wb - 1)),
            self.left.eq(length + 1),
        ]


class _ReadLane(wiring.Component):
    """One channel's read side: its port beats into a word register, lane by lane (a signal
    per lane: whole-signal assignments keep the elaboration linear); ``full`` once the word
    is complete, emptied by ``pop``."""

    def __init__(self, g: _Geometry) -> None:
        self.g = g
        super().__init__(
            {
                "rdata": In(8 * g.pb),
                "rvalid": In(1),
                "rready": Out(1),
                "pop": In(1),
                "full": Out(1),
                "word": Out(8 * g.wb),
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        g = self.g
        lanes = [Signal(8 * g.pb, name=f"lane{k}") for k in range(g.lanes)]
        lane = Signal(range(max(g.lanes, 2)))
        m.d.comb += [self.rready.eq(~self.full), self.word.eq(Cat(*lanes))]
        with m.If(self.rvalid & ~self.full):
            with m.Switch(lane):
                for k in range(g.lanes):
                    with m.Case(k):
                        m.d.sync += lanes[k].eq(self.rdata)
            m.d.sync += lane.eq(lane + 1)
            with m.If(lane == g.lanes - 1):
                m.d.sync += [lane.eq(0), self.full.eq(1)]
        with m.If(self.pop):
            m.d.sync += self.full.eq(0)
        return m


class _WriteLane(wiring.Component):
    """One channel's write side: a word (data, strobes) loaded by ``load`` when not ``full``,
    sent on the channel a port beat per cycle (``plast`` at each channel burst's end)."""

    def __init__(self, g: _Geometry) -> None:
        self.g = g
        super().__init__(
            {
                "load": In(1),
                "wdata": In(8 * g.wb),
                "wstrb": In(g.wb),
                "full": Out(1),
                "pdata": Out(8 * g.pb),
                "pstrb": Out(g.pb),
                "plast": Out(1),
                "pready": In(1),
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        g = self.g
        data = [Signal(8 * g.pb, name=f"data{k}") for k in range(g.lanes)]
        strb = [Signal(g.pb, name=f"strb{k}") for k in range(g.lanes)]
        lane = Signal(range(max(g.lanes, 2)))
        with m.Switch(lane):  # the lane's port beat
            for k in range(g.lanes):
                with m.Case(k):
                    m.d.comb += [self.pdata.eq(data[k]), self.pstrb.eq(strb[k])]
        m.d.comb += self.plast.eq(lane % g.beats == g.beats - 1)
        with m.If(self.full & self.pready):
            m.d.sync += lane.eq(lane + 1)
            with m.If(lane == g.lanes - 1):
                m.d.sync += [lane.eq(0), self.full.eq(0)]
        with m.If(self.load & ~self.full):
            m.d.sync += self.full.eq(1)
            for k in range(g.lanes):
                m.d.sync += [
                    data[k].eq(self.wdata.word_select(k, 8 * g.pb)),
                    strb[k].eq(self.wstrb.word_select(k, g.pb)),
                ]
        return m


class ReadSplitter(wiring.Component):
    """Wide AXI4 read ports ``s<i>`` (subordinate side, ``sources`` of them; lower index
    first when several wait) on channel read ports ``ch<c>`` (manager side)."""

    def __init__(self, mp: MachineParams, sources: int = 1, hier: Hierarchy | None = None) -> None:
        self.mp, self.sources, self.hier = mp, sources, hier
        cb = channel_addr_bits(mp)
        super().__init__(
            {
                **{
                    f"s{i}": In(AxiRead(mp.axi_addr_bits, mp.axi_data_bits)) for i in range(sources)
                },
                **{f"ch{c}": Out(AxiRead(cb, mp.port_bits)) for c in range(mp.channels)},
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        mp, g = self.mp, _Geometry(self.mp)
        srcs = [getattr(self, f"s{i}") for i in range(self.sources)]
        chans = [getattr(self, f"ch{c}") for c in range(mp.channels)]
        sb = max(1, (self.sources - 1).bit_length())
        cw = max(1, (mp.channels - 1).bit_length())
        m.submodules.order = order = SyncFIFOBuffered(width=cw + 1 + sb, depth=g.depth)
        walk = _Walker(m, mp, g, chans, "ar", order.w_rdy)
        src = Signal(sb)
        m.d.comb += [
            order.w_data.eq(Cat(walk.ch, walk.last, src)),
            order.w_en.eq(walk.word_done),
        ]
        before = Const(0, 1)  # a lower-index source asks too
        for i, s in enumerate(srcs):
            with m.If(~walk.busy & s.arvalid & ~before):
                m.d.comb += s.arready.eq(1)
                walk.start(m, g, s.araddr, s.arlen)
                m.d.sync += src.eq(i)
            before = before | s.arvalid
        full = self._assemble(m, g, chans)
        self._return(m, g, srcs, full, order)
        return m

    def _assemble(self, m: Module, g: _Geometry, chans: list) -> list[_ReadLane]:
        """Per channel, a :class:`_ReadLane` (a module of its own with ``hier``)."""
        out = []
        for c, p in enumerate(chans):
            lane = place(m, self.hier, f"rlane{c}", _module(self.mp, "rlane"),
                         lambda: _ReadLane(g))  # fmt: skip
            m.d.comb += [lane.rdata.eq(p.rdata), lane.rvalid.eq(p.rvalid), p.rready.eq(lane.rready)]
            out.append(lane)
        return out

    def _return(
        self, m: Module, g: _Geometry, srcs: list, full: list[_ReadLane], order: object
    ) -> None:
        """The order FIFO's head word to its source once its channel has assembled it."""
        cw = max(1, (self.mp.channels - 1).bit_length())
        h_ch, h_last = order.r_data[:cw], order.r_data[cw]
        h_src = order.r_data[cw + 1 :]
        fulls = Array(lane.full for lane in full)
        data = Signal(8 * g.wb)
        with m.Switch(h_ch):
            for c, lane in enumerate(full):
                with m.Case(c):
                    m.d.comb += data.eq(lane.word)
        ready = Array(s.rready for s in srcs)[h_src]
        valid = order.r_rdy & fulls[h_ch]
        for i, s in enumerate(srcs):
            m.d.comb += [
                s.rdata.eq(data),
                s.rlast.eq(h_last),
                s.rvalid.eq(valid & (h_src == i)),
            ]
        pop = valid & ready
        m.d.comb += order.r_en.eq(pop)
        for c, lane in enumerate(full):
            m.d.comb += lane.pop.eq(pop & (h_ch == c))


class WriteSplitter(wiring.Component):
    """A wide AXI4 write port ``s`` (subordinate side) on channel write ports ``ch<c>``."""

    def __init__(self, mp: MachineParams, hier: Hierarchy | None = None) -> None:
        self.mp, self.hier = mp, hier
        cb = channel_addr_bits(mp)
        super().__init__(
            {
                "s": In(AxiWrite(mp.axi_addr_bits, mp.axi_data_bits)),
                **{f"ch{c}": Out(AxiWrite(cb, mp.port_bits)) for c in range(mp.channels)},
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        mp, g, s = self.mp, _Geometry(self.mp), self.s
        chans = [getattr(self, f"ch{c}") for c in range(mp.channels)]
        cw = max(1, (mp.channels - 1).bit_length())
        m.submodules.route = route = SyncFIFOBuffered(width=cw, depth=g.depth)
        m.submodules.resp = resp = SyncFIFOBuffered(width=cw + 1, depth=g.depth)
        walk = _Walker(m, mp, g, chans, "aw", route.w_rdy & resp.w_rdy)
        m.d.comb += [
            route.w_data.eq(walk.ch),
            route.w_en.eq(walk.word_done),
            resp.w_data.eq(Cat(walk.ch, walk.last)),
            resp.w_en.eq(walk.word_done),
            s.awready.eq(~walk.busy),
        ]
        with m.If(s.awvalid & ~walk.busy):
            walk.start(m, g, s.awaddr, s.awlen)
        self._data(m, g, chans, route)
        self._responses(m, g, chans, resp)
        return m

    def _data(self, m: Module, g: _Geometry, chans: list, route: object) -> None:
        """Each wide W beat into its channel's register (once that one is sent), then out of
        it a port beat per cycle (``wlast`` at each channel burst's end)."""
        s = self.s
        lanes = []
        for c, p in enumerate(chans):
            lane = place(m, self.hier, f"wlane{c}", _module(self.mp, "wlane"),
                         lambda: _WriteLane(g))  # fmt: skip
            m.d.comb += [
                lane.wdata.eq(s.wdata),
                lane.wstrb.eq(s.wstrb),
                lane.pready.eq(p.wready),
                p.wdata.eq(lane.pdata),
                p.wstrb.eq(lane.pstrb),
                p.wlast.eq(lane.plast),
                p.wvalid.eq(lane.full),
                p.bready.eq(1),
            ]
            lanes.append(lane)
        fulls = Array(lane.full for lane in lanes)
        ok = route.r_rdy & ~fulls[route.r_data]
        m.d.comb += [s.wready.eq(ok), route.r_en.eq(ok & s.wvalid)]
        for c, lane in enumerate(lanes):
            m.d.comb += lane.load.eq(ok & s.wvalid & (route.r_data == c))

    def _responses(self, m: Module, g: _Geometry, chans: list, resp: object) -> None:
        """Per channel, write responses received and not yet claimed; the head word claims
        its ``bursts`` of them, and the wide burst's response goes out with its last word."""
        s = self.s
        cw = max(1, (self.mp.channels - 1).bit_length())
        h_ch, h_last = resp.r_data[:cw], resp.r_data[cw]
        width = (g.depth * g.bursts).bit_length() + 1
        counts = [Signal(width, name=f"bcnt{c}") for c in range(len(chans))]
        have = Array(counts)[h_ch] >= g.bursts
        pop = resp.r_rdy & have & (~h_last | s.bready)
        m.d.comb += [resp.r_en.eq(pop), s.bvalid.eq(resp.r_rdy & have & h_last)]
        for c, (p, n) in enumerate(zip(chans, counts, strict=True)):
            take = Mux(pop & (h_ch == c), g.bursts, 0)
            m.d.sync += n.eq(n + p.bvalid - take)
