"""The matmul unit's feed: operand streams from the buffers into the engine, one beat per cycle
when the buffer ports allow.

Each token lane t has its own activation stream (A: the M-byte block of token row t at every
beat) and each of the ``nb`` = ``rows_per_beat(M)`` weight readers its own B stream: linear /
head reader 0 reads the tile's beat records in order (one part per record, two when a record
of values and indices exceeds a buffer word); qk reader 0 the row group's key rows' M-blocks
as one part (their span, a row stride apart, fits a word; else reader l the key row of lane
l); pv reader 0 the N keys' pieces of the group's V columns as one part (their span, a key
apart; else one part per key, gathered by a collector). pv beats advance N keys
(:func:`hwflow.costs.pv_nm`): an activation block stays for its M/N beats. Every stream is a :class:`~hwflow.hw.machine.
mmu_loops.Loops` nest feeding a :class:`~hwflow.hw.machine.mmu_read.PartReader` whose windows
wait in a FIFO; the stream runs ahead while its FIFO has room (a credit counter), so the
reads of the next blocks, groups and passes overlap the current beats. A beat goes to the
engine when every active FIFO holds its part (or, for beats of several parts, when the
collector has gathered them). A one-part qk/pv beat's pieces start ``p * b_stride`` bytes
into the window; every engine slot picks its byte there.

Linear/head: row r of a stripe (the tile's record holds the rows in order) runs on chain
``r % chains``, segment ``r // chains``: the engine's lane r, so a row group's results drain
in row order (:attr:`hwflow.hw.params.EngineParams.drain_order`). qk/pv: lane l of a group
is output row (key / V column) ``gb + l``; pv's lane r holds column ``gb + r``'s weights of
the beat's N keys at the stages of its segment, each stage's index the key's place in the
activation block.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Module, Mux, Signal, Value, signed
from amaranth.lib.fifo import SyncFIFO

from hwflow.hw.machine.mmu_loops import Loops
from hwflow.hw.machine.mmu_read import PartReader
from hwflow.hw.machine.mmu_setup import Instr
from hwflow.isa import Buf

__all__ = ["FIFO_DEPTH", "Feed"]

#: Windows a stream may read ahead of the engine (its FIFO's depth).
FIFO_DEPTH = 4


def _credit(m: Module, name: str, push: Value, pop: Value, start: Value) -> Signal:
    """High while fewer than :data:`FIFO_DEPTH` windows are requested and not yet popped."""
    n = Signal(range(FIFO_DEPTH + 1), name=f"{name}_inflight")
    with m.If(start):
        m.d.sync += n.eq(0)
    with m.Else():
        m.d.sync += n.eq(n + push - pop)
    room = Signal(name=f"{name}_room")
    m.d.comb += room.eq(n < FIFO_DEPTH)
    return room


class Feed:
    """Builds the feed into module ``m`` (see the module doc); ``readers`` are the part
    readers (token lanes first) for the unit's port arbitration."""

    def __init__(self, ins: Instr, words: dict[Buf, int], word_bytes: int) -> None:
        ep = ins.ep
        self.ins, self.wb = ins, word_bytes
        self.nb = ep.rows_per_beat(ep.m)
        mbits = ep.m.bit_length()
        #: bits of a part's key within its block (pv; also its index in a beat's parts)
        self.kbits = (ep.m - 1).bit_length()
        # B tag: linear: part index (1) + the record's value bytes (8); pv: part index,
        # the beat ends its activation block (1), the beat's first key in the block
        self.btag = max(9, 2 * self.kbits + 1)
        self.ra = [PartReader(words, word_bytes, 1, 2 + mbits) for _ in range(ep.rows)]
        self.rb = [PartReader(words, word_bytes, 1, self.btag) for _ in range(self.nb)]
        self.rg = PartReader(words, word_bytes, 1, 1)  # the group multipliers
        self.readers = [*self.ra, *self.rb, self.rg]
        self.fa = [SyncFIFO(width=8 * ep.m + 2 + mbits, depth=FIFO_DEPTH) for _ in self.ra]
        self.fb = [SyncFIFO(width=8 * word_bytes + self.btag, depth=FIFO_DEPTH) for _ in self.rb]
        self.fg = SyncFIFO(width=8 * ep.lanes, depth=FIFO_DEPTH)

    def build(self, m: Module, eng: object, start: Value, go: Value) -> None:
        """The streams (reset by ``start``; they run iff ``go``), the FIFOs and the beat."""
        ins = self.ins
        for i, r in enumerate(self.readers):
            m.submodules[f"reader{i}"] = r
            m.d.comb += r.clear.eq(start)
        for i, f in enumerate([*self.fa, *self.fb, self.fg]):
            m.submodules[f"fifo{i}"] = f
        m.d.comb += [r.buf.eq(ins.c.a_buf) for r in self.ra]
        m.d.comb += [r.buf.eq(ins.c.b_buf) for r in [*self.rb, self.rg]]
        take = Signal()
        m.d.comb += take.eq(eng.i.valid & eng.i.ready)
        single = ins.rec_v + ins.rec_i <= self.wb
        self.multi = (ins.is_lin & ~single) | (ins.is_pv & ~ins.span_ok)
        #: the beat ends its activation block (pv: the last of its M/N beats; else every one)
        self.block_end = Signal()
        a_pop = Signal()
        m.d.comb += a_pop.eq(take & (~ins.is_pv | self.block_end))
        for t in range(len(self.ra)):
            self._a_stream(m, t, start, go, a_pop)
        coll_pop = Signal()
        for lane in range(self.nb):
            pop = Mux(self.multi, coll_pop if lane == 0 else 0, take)
            self._b_stream(m, lane, start, go, pop, single)
        g_pop = Signal()
        self._g_stream(m, start, go, g_pop)
        self._beat(m, eng, take, coll_pop, g_pop)

    def _a_stream(self, m: Module, t: int, start: Value, go: Value, take: Value) -> None:
        """Token lane t: the M-byte block of token row ``tb + t`` for every block's beats
        (``take``: the block's last beat went)."""
        ins, c, big_m = self.ins, self.ins.c, self.ins.ep.m
        r, f = self.ra[t], self.fa[t]
        lp = Loops(f"a{t}")
        fire = r.req.valid & r.req.ready
        room = _credit(m, f"a{t}", fire, take, start)
        lp.build(m, start=start, go=go, fire=fire, rows=c.rows, tstep=ins.tstep, cols=c.cols,
                 rpb=ins.rpb, inner=c.k, istep=big_m, parts=1)  # fmt: skip
        tok = lp.tb + t
        left = c.k - lp.i
        kb = Mux(left >= big_m, big_m, left)
        glast = lp.last_i | (((lp.i + big_m) & ins.gmask) == 0)  # the block ends a group
        m.d.comb += [
            r.req.valid.eq(lp.run & room),
            r.req.payload.addr.eq(c.a_off + tok * c.a_stride + lp.i),
            r.req.payload.nbytes.eq(big_m),
            r.req.payload.zero.eq((tok >= c.rows) | (ins.pv2 & (t != 0))),
            r.req.payload.sid.eq(0),
            r.req.payload.tag.eq(Cat(lp.last_i, glast, kb)),
            f.w_en.eq(r.out_valid),
            f.w_data.eq(Cat(r.out_win[: 8 * big_m], r.out_tag)),
            f.r_en.eq(take),
        ]

    def _b_stream(
        self, m: Module, lane: int, start: Value, go: Value, pop: Value, single: Value
    ) -> None:
        """Weight reader ``lane``: records (linear/head), key rows (qk), V rows (pv)."""
        ins, c, big_m = self.ins, self.ins.c, self.ins.ep.m
        r, f = self.rb[lane], self.fb[lane]
        lp = Loops(f"b{lane}")
        fire = r.req.valid & r.req.ready
        room = _credit(m, f"b{lane}", fire, pop, start)
        if lane == 0:
            pv_parts = Mux(ins.span_ok, 1, ins.n_eff)
            parts = Mux(ins.is_lin, Mux(single, 1, 2), Mux(ins.is_pv, pv_parts, 1))
            active = 1
        else:  # qk's key rows one part each when they do not fit one word together
            parts, active = 1, ins.is_qk & ~ins.span_ok  # (registers: after ``start``)
        lp.build(m, start=start, go=go, fire=fire, rows=c.rows, tstep=ins.tstep,
                 cols=c.cols, rpb=ins.rpb, inner=c.k, istep=ins.kstep, parts=parts)  # fmt: skip
        # linear/head: the next record (its offset in the tile: ``start`` comes with the
        # command, before the command register holds ``b_off``); a pass restarts at 0
        wrel = Signal(32, name=f"b{lane}_wrel")
        wrec = c.b_off + wrel
        cur_v = Mux(lp.last_g, ins.rec_vl, ins.rec_v)
        cur_i = Mux(lp.last_g, ins.rec_il, ins.rec_i)
        with m.If(start):
            m.d.sync += wrel.eq(0)
        with m.Elif(fire & lp.last_j):
            with m.If(lp.last_i & lp.last_g):
                m.d.sync += wrel.eq(0)
            with m.Else():
                m.d.sync += wrel.eq(wrel + cur_v + cur_i)
        row, key = lp.gb + lane, lp.i + lp.j
        kmask = big_m - 1
        block_end = lp.last_i | (((lp.i + ins.kstep) & kmask) == 0)
        req = r.req.payload
        with m.If(ins.is_lin):
            m.d.comb += [
                req.addr.eq(Mux(lp.j == 0, wrec, wrec + cur_v)),
                req.nbytes.eq(Mux(lp.j != 0, cur_i, Mux(single, cur_v + cur_i, cur_v))),
                req.tag.eq(Cat(lp.j[0], cur_v)),
            ]
        with m.Elif(ins.is_qk):  # the group's key rows' M-blocks in one span, or lane's row
            m.d.comb += [
                req.addr.eq(c.b_off + row * c.b_stride + lp.i),
                req.nbytes.eq(Mux(ins.span_ok, ins.span, big_m)),
                req.zero.eq(row >= c.cols),
            ]
        with m.Else():  # pv: N keys' pieces of the group's columns in one span, or a key's
            m.d.comb += [
                req.addr.eq(c.b_off + key * c.b_stride + lp.gb),
                req.nbytes.eq(Mux(ins.span_ok, ins.span, ins.rpb)),
                req.zero.eq(key >= c.k),
                req.tag.eq(Cat(lp.j[: self.kbits], block_end, lp.i[: self.kbits])),
            ]
        m.d.comb += [
            r.req.valid.eq(lp.run & active & room),
            f.w_en.eq(r.out_valid),
            f.w_data.eq(Cat(r.out_win, r.out_tag)),
            f.r_en.eq(pop),
        ]

    def _g_stream(self, m: Module, start: Value, go: Value, pop: Value) -> None:
        """A weight-grouped op's group multipliers: per pass, row group and weight group the
        group's part of the tile's ``gmult`` section (the row group's rows' multipliers,
        consecutive: :class:`hwflow.compiler.layout.TileSpec`), in order."""
        ins, c = self.ins, self.ins.c
        r, f = self.rg, self.fg
        lp = Loops("g")
        fire = r.req.valid & r.req.ready
        room = _credit(m, "g", fire, pop, start)
        lp.build(m, start=start, go=go, fire=fire, rows=c.rows, tstep=ins.tstep, cols=c.cols,
                 rpb=ins.rpb, inner=c.k, istep=ins.gmask + 1, parts=1)  # fmt: skip
        rel = Signal(32, name="g_rel")
        nbytes = Mux(lp.last_g, c.cols - lp.gb, ins.rpb)
        with m.If(start):
            m.d.sync += rel.eq(0)
        with m.Elif(fire):
            with m.If(lp.last_i & lp.last_g):
                m.d.sync += rel.eq(0)
            with m.Else():
                m.d.sync += rel.eq(rel + nbytes)
        m.d.comb += [
            r.req.valid.eq(lp.run & ins.grouped & room),
            r.req.payload.addr.eq(c.b_off + ins.sec_gmult + rel),
            r.req.payload.nbytes.eq(nbytes),
            f.w_en.eq(r.out_valid),
            f.w_data.eq(r.out_win[: 8 * ins.ep.lanes]),
            f.r_en.eq(pop),
        ]

    def _beat(self, m: Module, eng: object, take: Value, coll_pop: Signal, g_pop: Signal) -> None:
        """Present a beat when every part is there (see the module doc)."""
        ins, ep, wb = self.ins, self.ins.ep, self.wb
        big_m = ep.m
        heads_a = [f.r_data for f in self.fa]
        g_need = ins.grouped & heads_a[0][8 * big_m + 1]  # the beat ends a weight group
        a_ok = Cat(*(f.r_rdy for f in self.fa)).all() & (~g_need | self.fg.r_rdy)
        b_rdy = [f.r_rdy for f in self.fb]
        b_single = Mux(ins.is_qk & ~ins.span_ok, Cat(*b_rdy).all(), b_rdy[0])
        coll_valid = Signal()
        b_ok = Mux(self.multi, coll_valid, b_single)
        m.d.comb += eng.i.valid.eq(a_ok & b_ok)
        # the collector of multi-part beats (linear with wide records, pv a part per key)
        head0 = self.fb[0].r_data
        win0, tag0 = head0[: 8 * wb], head0[8 * wb :]
        coll_v, coll_i = Signal(8 * wb), Signal(8 * wb)
        pv_w = [Signal(8, name=f"pvw{s}") for s in range(ep.chains * ep.chain_length)]
        kb = self.kbits
        coll_tag = Signal(kb + 1)  # pv: the collected beat's block end and first key
        collect = self.multi & b_rdy[0] & (~coll_valid | take)
        m.d.comb += coll_pop.eq(collect)
        with m.If(take):
            m.d.sync += coll_valid.eq(0)
        with m.If(collect):
            with m.If(ins.is_lin):
                with m.If(tag0[0]):
                    m.d.sync += [coll_i.eq(win0), coll_valid.eq(1)]
                with m.Else():
                    m.d.sync += coll_v.eq(win0)
            with m.Else():
                self._pv_part(m, pv_w, win0, tag0[:kb])
                with m.If(tag0[:kb] == ins.n_eff - 1):
                    m.d.sync += [coll_valid.eq(1), coll_tag.eq(tag0[kb:])]
        pv_tag = Mux(self.multi, coll_tag, tag0[kb:])
        koff = pv_tag[1:]  # the beat's first key within its activation block
        m.d.comb += self.block_end.eq(pv_tag[0])
        cur_v = tag0[1:]
        win_v = Mux(self.multi, coll_v, win0)
        win_i = Mux(self.multi, coll_i, win0 >> (cur_v * 8))
        lin_v, lin_i = self._linear(m, win_v, win_i)
        qk_v = self._qk(m)
        sp_v = self._span(m, win0)
        pv_i = self._pv_index(m, koff)
        spanned = ~ins.is_lin & ins.span_ok
        beat = eng.i.payload
        for ci in range(ep.chains):
            for s in range(ep.chain_length):
                at = ci * ep.chain_length + s
                w = Mux(ins.is_qk, qk_v[at], pv_w[at])
                w = Mux(ins.is_lin, lin_v[at], Mux(spanned, sp_v[at], w))
                m.d.comb += beat.wval[ci][8 * s : 8 * s + 8].eq(w)
                ib = ep.index_bits
                idx = Mux(ins.is_pv, pv_i[at], lin_i[at])
                m.d.comb += beat.widx[ci][ib * s : ib * s + ib].eq(idx)
        self._act(m, beat, heads_a)
        m.d.comb += [
            beat.nsel.eq(ins.nsel),
            beat.wsel.eq(ep.weight_bits.index(8)),
            beat.raw.eq(1),
            beat.paddr.eq(0),
            beat.last.eq(heads_a[0][8 * big_m] & (~ins.is_pv | self.block_end)),
            beat.wgrp.eq(ins.grouped),
            beat.glast.eq(heads_a[0][8 * big_m + 1]),
            g_pop.eq(take & g_need),
            eng.p.valid.eq(0),
        ]
        gw = self.fg.r_data  # lane l: chain l % chains, slot l // chains
        for lane in range(ep.lanes):
            ci, s = lane % ep.chains, lane // ep.chains
            m.d.comb += eng.gmult[ci][8 * s : 8 * s + 8].eq(gw[8 * lane : 8 * lane + 8])

    def _pv_slots(self, n: int) -> list[tuple[int, int, int]]:
        """pv at N = ``n``: (engine slot, key p of the beat's N, column r of the row group)
        of every slot: row r on chain r % chains, segment r // chains, stage p."""
        ep = self.ins.ep
        return [
            ((r % ep.chains) * ep.chain_length + (r // ep.chains) * n + p, p, r)
            for r in range(ep.rows_per_beat(n))
            for p in range(n)
        ]

    def _pv_part(self, m: Module, pv_w: list[Signal], win: Value, key: Value) -> None:
        """pv part ``key`` (the V row piece of the beat's key ``key``): byte r is column r's
        weight at stage ``key`` of its segment."""
        ep = self.ins.ep
        with m.Switch(self.ins.nsel):
            for k, n in enumerate(ep.n_modes):
                with m.Case(k), m.Switch(key):
                    for j in range(n):
                        with m.Case(j):
                            for at, p, r in self._pv_slots(n):
                                if p == j:
                                    m.d.sync += pv_w[at].eq(win[8 * r : 8 * r + 8])

    def _pv_index(self, m: Module, koff: Value) -> list[Signal]:
        """pv: each slot's index, its key within the activation block (``koff + p``)."""
        ep = self.ins.ep
        out = [Signal(ep.index_bits, name=f"pvi{s}") for s in range(ep.chains * ep.chain_length)]
        with m.Switch(self.ins.nsel):
            for k, n in enumerate(ep.n_modes):
                with m.Case(k):
                    for at, p, _ in self._pv_slots(n):
                        m.d.comb += out[at].eq(koff + p)
        return out

    def _span(self, m: Module, win: Value) -> list[Signal]:
        """A one-part beat of qk or pv: piece p of the span starts ``p * b_stride`` bytes
        into ``win``; qk: piece l is lane l's key block (M bytes), pv: piece p key p's V
        columns (``rpb`` bytes). Each slot picks its byte of the window."""
        ins, ep, wb = self.ins, self.ins.ep, self.wb
        nslot = ep.chains * ep.chain_length
        wbytes = Array(win[8 * i : 8 * i + 8] for i in range(wb))
        src = [Signal(range(wb), name=f"sp_at{s}") for s in range(nslot)]
        qk = {}
        for lane in range(self.nb):
            for j in range(ep.m):
                qk[(lane % ep.chains) * ep.chain_length + (lane // ep.chains) * ep.m + j] = (
                    lane,
                    j,
                )
        with m.If(ins.is_qk):
            for at, (lane, j) in qk.items():
                m.d.comb += src[at].eq(ins.pstep[lane] + j)
        with m.Else(), m.Switch(ins.nsel):
            for k, n in enumerate(ep.n_modes):
                with m.Case(k):
                    for at, p, r in self._pv_slots(n):
                        m.d.comb += src[at].eq(ins.pstep[p] + r)
        out = [Signal(8, name=f"sp_v{s}") for s in range(nslot)]
        for at in range(nslot):
            m.d.comb += out[at].eq(wbytes[src[at]])
        return out

    def _linear(self, m: Module, win_v: Value, win_i: Value) -> tuple[list, list]:
        """A record's slots (values widened to INT8, indices) placed at (chain, stage): row r
        of the stripe on chain r % chains, segment r // chains."""
        ins, ep = self.ins, self.ins.ep
        nslot, ib = ep.chains * ep.chain_length, ep.index_bits
        vals = [Signal(signed(8), name=f"lv{i}") for i in range(nslot)]
        with m.Switch(ins.wbits):
            for bits in ep.weight_bits:
                with m.Case(bits):
                    for i in range(nslot):
                        m.d.comb += vals[i].eq(win_v[i * bits : (i + 1) * bits].as_signed())
        out_v = [Signal(8, name=f"pl_v{i}") for i in range(nslot)]
        out_i = [Signal(ib, name=f"pl_i{i}") for i in range(nslot)]
        with m.Switch(ins.nsel):
            for k, n in enumerate(ep.n_modes):
                with m.Case(k):
                    for s in range(nslot):
                        row, i = divmod(s, n)
                        at = (row % ep.chains) * ep.chain_length + (row // ep.chains) * n + i
                        m.d.comb += [
                            out_v[at].eq(vals[s]),
                            out_i[at].eq(win_i[s * ib : (s + 1) * ib]),
                        ]
        return out_v, out_i

    def _qk(self, m: Module) -> list[Value]:
        """qk: lane l's key block (reader l's window) at chain l % chains, segment l //
        chains (dense: N = M)."""
        ep = self.ins.ep
        out: list[Value] = [0] * (ep.chains * ep.chain_length)
        for lane in range(self.nb):
            win = self.fb[lane].r_data
            ci, s = lane % ep.chains, lane // ep.chains
            for j in range(ep.m):
                out[ci * ep.chain_length + s * ep.m + j] = win[8 * j : 8 * j + 8]
        return out

    def _act(self, m: Module, beat: object, heads: list[Value]) -> None:
        """Token lanes' activations (bytes past k zeroed); pv: UINT8 (bit-sliced on a
        dual-INT8 engine: lane 0 ``p >> 1``, lane 1 ``p & 1`` of token lane 0)."""
        ins, ep = self.ins, self.ins.ep
        big_m = ep.m
        for ti, head in enumerate(heads):
            kb = head[8 * big_m + 2 :]
            for i in range(big_m):
                byte = Mux(kb > i, head[8 * i : 8 * i + 8], 0)
                if ins.split_pv:
                    b0 = Mux(heads[0][8 * big_m + 2 :] > i, heads[0][8 * i : 8 * i + 8], 0)
                    pv_act = b0[1:] if ti == 0 else b0[0]
                else:
                    pv_act = byte
                m.d.comb += beat.act[ti][i].eq(Mux(ins.is_pv, pv_act, byte.as_signed()))
