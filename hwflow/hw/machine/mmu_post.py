"""The matmul unit's drain: the engine's raw accumulators, R per cycle, through the numerics
contract's requantization into the output buffer.

* :class:`ParamFetch` reads what the requantization needs, ahead of the drain: the
  instruction's parameters at ``p_off`` (linear/head: guard; qk: mult, shift; pv: mult,
  shift, guard), per token pass the A rows' row factors (``arow``; qk has no row stage), per
  row group of a linear/head op its rows' bias, mult and shift from the tile's trailing
  sections (a qk with ``brow``, rotated keys: its keys' row factors, read as one span from
  the K rows when they fit a buffer word), :data:`PARAM_BANKS` banks: the parameters of the next groups load while group g
  drains, so the fetch (a part per cycle) runs ahead through the engine's pipeline depth.
* the drain (:meth:`Post.build`) walks the engine's drain words in its order (per group,
  token lane by token lane, R consecutive rows per word) and pipelines each word's R values
  through the row stage (``sat32(round_shift(acc * m, e - guard))``; qk: skipped, or with
  ``brow`` the key's factor and the guard at ``p_off + 8``), the bias
  add and the channel stage (``saturate(round_shift(y * mult, shift), obits)``), one word per
  cycle, into the :class:`~hwflow.hw.machine.mmu_write.WriteCombiner`.
* k = 0 (no beats): the drain takes zero words instead of the engine's.
* pv bit-sliced on the dual-INT8 engine: token lane 0's word is held and combined with token
  lane 1's as ``2 * lane0 + lane1`` (module doc of :mod:`hwflow.hw.machine.mmu`).
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Module, Mux, Signal, Value, signed

from hwflow.hw.machine.mmu_arith import round_shift, saturate
from hwflow.hw.machine.mmu_loops import Loops
from hwflow.hw.machine.mmu_ports import SpanReader
from hwflow.hw.machine.mmu_read import PartReader
from hwflow.hw.machine.mmu_setup import Instr
from hwflow.hw.machine.mmu_write import WriteCombiner
from hwflow.isa import ROW_FACTOR_BYTES, Buf
from hwflow.numerics import ROW_MULT_BITS

__all__ = ["DRAIN_STAGES", "ParamFetch", "Post"]

#: Row groups whose parameters the fetch holds at once (the one draining and those ahead of
#: it): the fetch takes a cycle per part (three or four per group), the drain a row group
#: every max(K/M, D) cycles; four banks let it run ahead through the engine's pipeline depth,
#: so short groups drain back to back (two banks kept them 2..3 cycles apart).
PARAM_BANKS = 4
_BANK_BITS = PARAM_BANKS.bit_length() - 1

#: Register stages of the drain from taking a word off the engine to handing it to the write
#: combiner: the word with its parameters, the row-stage product, its rounding shift and
#: saturation, the bias add, the channel-stage product, its rounding shift and saturation.
DRAIN_STAGES = 6


class ParamFetch:
    """The requantization parameters, fetched ahead of the drain (module doc): the
    instruction's and the row factors through a sequential span reader, the groups' rows'
    bias/mult/shift as a stream of parts (a :class:`PartReader`, one part per cycle, the
    three sections each a cached stream) two groups deep."""

    def __init__(self, ins: Instr, words: dict[Buf, int], word_bytes: int) -> None:
        ep = ins.ep
        self.ins, self.wb = ins, word_bytes
        self.rd = SpanReader(words, word_bytes)
        self.spans = self._spans()
        self.pg = PartReader(words, word_bytes, 3, 1 + _BANK_BITS + len(self.spans).bit_length())
        self.prm = [Signal(signed(32), name=f"prm{i}") for i in range(3)]
        lanes, rt = ep.lanes, ep.rows
        self.rf_m = [[Signal(16, name=f"rfm{b}_{t}") for t in range(rt)] for b in range(2)]
        self.rf_e = [[Signal(signed(16), name=f"rfe{b}_{t}") for t in range(rt)] for b in range(2)]
        nb = range(PARAM_BANKS)
        self.bias = [[Signal(signed(32), name=f"gb{b}_{i}") for i in range(lanes)] for b in nb]
        self.mult = [[Signal(16, name=f"gm{b}_{i}") for i in range(lanes)] for b in nb]
        #: (qk of rotated keys: the keys' row factor mantissas in ``mult``, exponents in
        #: ``shift``, hence 16 bits)
        self.shift = [[Signal(16, name=f"gs{b}_{i}") for i in range(lanes)] for b in nb]
        self.prm_ok = Signal()
        self.fetched = Signal(24)  #: row groups whose parameters are in their bank
        self.rf_done = Signal(17)  #: passes whose row factors are in their bank

    def _spans(self) -> list[tuple[str, int, int, int]]:
        """(section, bytes per row, byte offset, bytes) of each read of a group's rows."""
        lanes, wb = self.ins.ep.lanes, self.wb
        return [
            (what, size, at, min(wb, size * lanes - at))
            for what, size in (("bias", 4), ("mult", 2), ("shift", 1))
            for at in range(0, size * lanes, wb)
        ]

    def build(self, m: Module, start: Value, go: Value, drained: Value, passes: Value) -> None:
        """Fetch (reset by ``start``, running iff ``go``) while at most one group (one pass)
        ahead of ``drained`` groups (``passes``) the drain finished."""
        self._scalars(m, start, go, passes)
        self._groups(m, start, go, drained)

    def _scalars(self, m: Module, start: Value, go: Value, passes: Value) -> None:
        """p_off's parameters, then per pass the A rows' row factors (bank: pass parity)."""
        ins, c, rd = self.ins, self.ins.c, self.rd
        m.submodules.prm_reader = rd
        tb, t, rfb = Signal(17), Signal(range(ins.ep.rows + 1)), Signal()
        use_rf = c.arow & ~ins.is_qk
        with m.FSM(name="fetch"):
            with m.State("IDLE"), m.If(start):
                m.d.sync += [tb.eq(0), rfb.eq(0), self.rf_done.eq(0), self.prm_ok.eq(0)]
                with m.If(go):
                    m.next = "PRM"
            with m.State("PRM"), m.If(rd.idle):
                m.d.comb += [rd.go.eq(1), rd.buf.eq(Buf.PARAM), rd.addr.eq(c.p_off)]
                m.d.comb += rd.nbytes.eq(12)
                m.next = "PRM_W"
            with m.State("PRM_W"), m.If(rd.valid):
                m.d.sync += [p.eq(rd.win[32 * i : 32 * i + 32]) for i, p in enumerate(self.prm)]
                m.d.sync += [self.prm_ok.eq(1), t.eq(0)]
                m.next = "RF"
            with m.State("RF"):
                tok = tb + t
                with m.If(~use_rf | (tb >= c.rows)):
                    m.next = "IDLE"
                with m.Elif(self.rf_done >= passes + 2):
                    pass
                with m.Elif((t >= ins.tstep) | (tok >= c.rows)):
                    m.d.sync += [
                        self.rf_done.eq(self.rf_done + 1),
                        rfb.eq(~rfb),
                        t.eq(0),
                        tb.eq(tb + ins.tstep),
                    ]
                with m.Elif(rd.idle):
                    m.d.comb += [rd.go.eq(1), rd.buf.eq(c.a_buf), rd.nbytes.eq(ROW_FACTOR_BYTES)]
                    m.d.comb += rd.addr.eq(c.a_off + tok * c.a_stride - ROW_FACTOR_BYTES)
                    m.next = "RF_W"
            with m.State("RF_W"), m.If(rd.valid):
                for b in range(2):
                    with m.If(rfb == b):
                        m.d.sync += Array(self.rf_m[b])[t].eq(rd.win[:16])
                        m.d.sync += Array(self.rf_e[b])[t].eq(rd.win[16:32])
                m.d.sync += t.eq(t + 1)
                m.next = "RF"

    def _groups(self, m: Module, start: Value, go: Value, drained: Value) -> None:
        """Linear/head: per row group its rows' bias, mult, shift (a zero part for a span
        past the group's rows or a bias the op lacks), bank: the group's number modulo
        :data:`PARAM_BANKS`."""
        ins, c, pg = self.ins, self.ins.c, self.pg
        m.submodules.group_reader = pg
        m.d.comb += [pg.buf.eq(c.b_buf), pg.clear.eq(start)]
        spans = self.spans
        lp = Loops("pg")
        fire = pg.req.valid & pg.req.ready
        krf = ins.keyrf
        parts = Mux(krf, Mux(ins.fspan_ok, 1, ins.rpb), len(spans))
        lp.build(m, start=start, go=go, fire=fire, rows=c.rows, tstep=ins.tstep,
                 cols=c.cols, rpb=ins.rpb, inner=1, istep=1, parts=parts)  # fmt: skip
        sec = {"bias": ins.sec_bias, "mult": ins.sec_mult, "shift": ins.sec_shift}
        req = pg.req.payload
        want = ins.is_lin | krf
        m.d.comb += pg.req.valid.eq(lp.run & want & (lp.gi < drained + PARAM_BANKS))
        with m.If(krf):  # the group's key factors: one span, or a part per key
            m.d.comb += [
                req.addr.eq(c.b_off - ROW_FACTOR_BYTES + (lp.gb + lp.j) * c.b_stride),
                req.nbytes.eq(Mux(ins.fspan_ok, ins.fspan, ROW_FACTOR_BYTES)),
                req.zero.eq(lp.gb + lp.j >= c.cols),
            ]
        with m.Else(), m.Switch(lp.j):
            for i, (what, size, at, nb) in enumerate(spans):
                with m.Case(i):
                    need = ins.rpb * size - at  # the group's rows only
                    skip = (at >= ins.rpb * size) | ((what == "bias") & ~c.bias)
                    m.d.comb += [
                        req.addr.eq(c.b_off + sec[what] + lp.gb * size + at),
                        req.nbytes.eq(Mux(need < nb, need, nb)),
                        req.zero.eq(skip),
                        req.sid.eq(("bias", "mult", "shift").index(what)),
                    ]
        m.d.comb += req.tag.eq(Cat(lp.last_j, lp.gi[:_BANK_BITS], lp.j))
        tag, win = pg.out_tag, pg.out_win
        regs = {"bias": self.bias, "mult": self.mult, "shift": self.shift}
        with m.If(start):
            m.d.sync += self.fetched.eq(0)
        with m.Elif(pg.out_valid & krf):
            self._key_factors(m, tag, win)
            with m.If(tag[0]):
                m.d.sync += self.fetched.eq(self.fetched + 1)
        with m.Elif(pg.out_valid):
            with m.Switch(tag[1 + _BANK_BITS :]):
                for i, (what, size, at, nb) in enumerate(spans):
                    with m.Case(i):
                        for b in range(PARAM_BANKS):
                            with m.If(tag[1 : 1 + _BANK_BITS] == b):
                                for e in range(nb // size):
                                    val = win[8 * size * e : 8 * size * (e + 1)]
                                    m.d.sync += regs[what][b][at // size + e].eq(val)
            with m.If(tag[0]):
                m.d.sync += self.fetched.eq(self.fetched + 1)

    def _key_factors(self, m: Module, tag: Value, win: Value) -> None:
        """qk of rotated keys: a group's key factors (``(m, e)``, 4 bytes before each key row)
        into its bank's ``mult`` (m) and ``shift`` (e) registers: from one span, key ``p`` at
        ``p * b_stride``, or part ``j`` holding key ``j``'s alone."""
        ins = self.ins
        rpb = ins.ep.rows_per_beat(ins.ep.m)
        for b in range(PARAM_BANKS):
            with m.If(tag[1 : 1 + _BANK_BITS] == b):
                with m.If(ins.fspan_ok):
                    for p in range(rpb):
                        f = (win >> (ins.pstep[p] << 3))[:32] if p else win[:32]
                        m.d.sync += [self.mult[b][p].eq(f[:16]), self.shift[b][p].eq(f[16:])]
                with m.Else():
                    j = tag[1 + _BANK_BITS :]
                    m.d.sync += Array(self.mult[b])[j].eq(win[:16])
                    m.d.sync += Array(self.shift[b])[j].eq(win[16:32])


class Post:
    """The drain (module doc); ``finished`` is high once every value is written."""

    def __init__(self, ins: Instr, words: dict[Buf, int], word_bytes: int) -> None:
        ep = ins.ep
        self.ins = ins
        self.fetch = ParamFetch(ins, words, word_bytes)
        self.comb = WriteCombiner(words, word_bytes, ep.requantizers * 4)
        self.finished = Signal()
        #: the drain holds an engine word and waits for its group's parameters: the group
        #: fetch then goes before the operand streams (else after them: it runs ahead)
        self.urgent = Signal()

    def build(self, m: Module, eng: object, start: Value, go: Value) -> None:
        ins, ep, c = self.ins, self.ins.ep, self.ins.c
        r_n = ep.requantizers
        m.submodules.combiner = wc = self.comb
        lp = Loops("d")
        f = self.fetch
        f.build(m, start, go, lp.gi, lp.ti)
        kzero = c.k == 0
        adv = Signal()
        rf_ok = ~c.arow | ins.is_qk | (f.rf_done > lp.ti)
        grp = ins.is_lin | ins.keyrf  # per row group parameters (linear/head; key factors)
        params_ok = f.prm_ok & rf_ok & (~grp | (f.fetched > lp.gi))
        m.d.comb += self.urgent.eq(eng.o.valid & grp & (f.fetched <= lp.gi))
        word_ok = kzero | eng.o.valid
        fire = lp.run & params_ok & word_ok & adv
        m.d.comb += eng.o.ready.eq(lp.run & params_ok & ~kzero & adv)
        nq = Signal(8)
        m.d.comb += nq.eq(ins.rpb >> (r_n.bit_length() - 1))
        lp.build(m, start=start, go=go, fire=fire, rows=c.rows, tstep=ins.tstep, cols=c.cols,
                 rpb=ins.rpb, inner=ep.rows, istep=1, parts=nq)  # fmt: skip
        rfb = Signal()  # the pass's row-factor bank
        with m.If(start):
            m.d.sync += rfb.eq(0)
        with m.Elif(fire & lp.last_j & lp.last_i & lp.last_g):
            m.d.sync += rfb.eq(~rfb)
        vals = [Mux(kzero, 0, eng.o.payload.data[r]) for r in range(r_n)]
        stages = self._stages(m, lp, vals, fire, adv, rfb)
        last = stages[-1]
        m.d.comb += [
            wc.buf.eq(c.o_buf),
            wc.valid.eq(last["v"]),
            wc.addr.eq(last["addr"]),
            adv.eq(~last["v"] | wc.ready),
        ]
        with m.Switch(ins.obytes):
            for ob in (1, 2, 4):
                with m.Case(ob):
                    m.d.comb += wc.data.eq(Cat(*(o[: 8 * ob] for o in last["out"])))
                    m.d.comb += wc.strb.eq(Cat(*(e.replicate(ob) for e in last["en"])))
        empty = ~Cat(*(s["v"] for s in stages)).any()
        m.d.comb += [
            wc.flush.eq(~lp.run & empty),
            self.finished.eq(~lp.run & empty & (wc.idle | wc.flushed)),
        ]

    def _stages(
        self, m: Module, lp: Loops, vals: list[Value], fire: Value, adv: Value, rfb: Value
    ) -> list[dict]:
        """The word's R values through the requantization stages (module doc)."""
        ins, ep, c, f = self.ins, self.ins.ep, self.ins.c, self.fetch
        r_n, ab = ep.requantizers, ep.acc_bits + 2
        # stage 0: the word, its parameters and its destination
        lane_t = Mux(ins.pv2, 0, lp.i)
        tok = lp.tb + lane_t
        row0 = lp.gb + lp.j * r_n
        bank = lp.gi[:_BANK_BITS]
        save = [Array(Signal(signed(ep.acc_bits), name=f"sv{r}_{q}") for q in range(ep.lanes // r_n)) for r in range(r_n)]  # fmt: skip
        unit_m, unit_e = 1 << (ROW_MULT_BITS - 1), ROW_MULT_BITS - 1
        use_rf = c.arow & ~ins.is_qk
        s0: dict = {"v": Signal(name="s0_v"), "addr": Signal(32, name="s0_addr")}
        m_t = Mux(rfb, Array(f.rf_m[1])[lane_t], Array(f.rf_m[0])[lane_t])
        e_t = Mux(rfb, Array(f.rf_e[1])[lane_t], Array(f.rf_e[0])[lane_t])
        guard = Mux(ins.is_pv | ins.keyrf, f.prm[2], f.prm[0])
        krf = ins.keyrf
        lanes: list[dict] = []
        for r in range(r_n):
            idx = lp.j * r_n + r
            sel = {k: Array(Array(reg[b])[idx] for b in range(PARAM_BANKS))[bank]
                   for k, reg in (("bias", f.bias), ("mult", f.mult), ("shift", f.shift))}  # fmt: skip
            acc = Mux(ins.pv2, (save[r][lp.j] << 1) + vals[r], vals[r])
            en = (tok < c.rows) & (row0 + r < c.cols) & (~ins.pv2 | (lp.i == 1))
            with m.If(fire & ins.pv2 & (lp.i == 0)):
                m.d.sync += save[r][lp.j].eq(vals[r])
            regs = {
                "acc": Signal(signed(ab), name=f"s0_acc{r}"),
                "en": Signal(name=f"s0_en{r}"),
                "m": Signal(16, name=f"s0_m{r}"),
                "e": Signal(signed(34), name=f"s0_e{r}"),
                "bias": Signal(signed(32), name=f"s0_bias{r}"),
                "mult": Signal(signed(33), name=f"s0_mult{r}"),
                "shift": Signal(signed(32), name=f"s0_shift{r}"),
            }
            with m.If(adv):
                m.d.sync += [
                    regs["acc"].eq(acc),
                    regs["en"].eq(fire & en),
                    regs["m"].eq(Mux(krf, sel["mult"], Mux(use_rf, m_t, unit_m))),
                    regs["e"].eq(
                        Mux(krf, sel["shift"].as_signed(), Mux(use_rf, e_t, unit_e)) - guard
                    ),
                    regs["bias"].eq(Mux(ins.is_lin & c.bias, sel["bias"], 0)),
                    regs["mult"].eq(Mux(ins.is_lin, sel["mult"].as_unsigned(), f.prm[0])),
                    regs["shift"].eq(Mux(ins.is_lin, sel["shift"].as_signed(), f.prm[1])),
                ]
            lanes.append(regs)
        with m.If(adv):
            m.d.sync += [
                s0["v"].eq(fire),
                s0["addr"].eq(c.o_off + tok * c.o_stride + row0 * ins.obytes),
            ]
        return self._requant(m, s0, lanes, adv)

    def _requant(self, m: Module, s0: dict, lanes: list[dict], adv: Value) -> list[dict]:
        """Stages 1-5: row-stage product; its rounding shift and INT32 saturation (qk: the
        accumulator); bias; channel-stage product; its rounding shift and saturation."""
        ins, ab = self.ins, self.ins.ep.acc_bits + 2
        stages = [s0]
        prev = s0
        for k in range(1, DRAIN_STAGES):
            cur = {"v": Signal(name=f"s{k}_v"), "addr": Signal(32, name=f"s{k}_addr")}
            with m.If(adv):
                m.d.sync += [cur["v"].eq(prev["v"]), cur["addr"].eq(prev["addr"])]
            stages.append(cur)
            prev = cur
        outs, ens = [], []
        for r, x in enumerate(lanes):

            def reg(k: int, name: str, shape: object, value: Value, r: int = r) -> Signal:
                s = Signal(shape, name=f"s{k}_{name}{r}")
                with m.If(adv):
                    m.d.sync += s.eq(value)
                return s

            p1 = reg(1, "p1", signed(ab + 17), x["acc"] * x["m"])
            s1 = reg(1, "sh", signed(34), x["e"])
            a1 = reg(1, "acc", signed(ab), x["acc"])
            rs1 = round_shift(m, p1, s1, f"rs_row{r}")
            y = reg(2, "y", signed(ab), Mux(ins.is_qk & ~ins.keyrf, a1, saturate(rs1, 32)))
            b1 = reg(1, "bias", signed(32), x["bias"])
            b2 = reg(2, "bias", signed(32), b1)
            y2 = reg(3, "y2", signed(ab + 1), y + b2)
            mu = [x["mult"]]
            for k in (1, 2, 3):
                mu.append(reg(k, "mult", signed(33), mu[-1]))
            p2 = reg(4, "p2", signed(ab + 34), y2 * mu[3])
            sh = [x["shift"]]
            for k in (1, 2, 3, 4):
                sh.append(reg(k, "shift", signed(32), sh[-1]))
            rs2 = round_shift(m, p2, sh[4], f"rs_ch{r}")
            out = Signal(signed(32), name=f"s5_out{r}")
            with m.If(adv), m.Switch(ins.c.obits):
                for bits in (8, 16, 32):
                    with m.Case(bits):
                        m.d.sync += out.eq(saturate(rs2, bits))
            en = [x["en"]]
            for k in range(1, DRAIN_STAGES):
                en.append(reg(k, "en", 1, en[-1]))
            outs.append(out)
            ens.append(en[-1])
        stages[-1]["out"], stages[-1]["en"] = outs, ens
        return stages
