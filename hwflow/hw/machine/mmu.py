"""The matmul unit of the RTL machine (issue 7): one MM or MV instruction at a time around a
DSP-chain engine (:mod:`hwflow.hw.engine`), reading its operands from the on-chip buffers and
writing the results back, bit for bit as :meth:`hwflow.funcsim.FuncSim._matmul` does.

Interface (seams 1 and 2 of issue 7): ``cmd`` (a stream of :func:`~hwflow.hw.machine.decode.
cmd_layout` of the unit: the resolved instruction), ``done`` (one pulse per instruction, after
its last buffer write is visible), ``busy``; per buffer one read port ``rd_<buf>`` and one
write port ``wr_<buf>`` (:mod:`hwflow.hw.machine.mmu_ports`).

How an instruction runs (sequential: gather a beat, hand it to the engine, drain, write):

* the parameters at ``p_off`` (linear/head: guard; qk: mult, shift; pv: mult, shift, guard);
* per token pass (``engine.rows`` tokens) and row group (``chains*C/N`` output rows; qk/pv
  dense, N = M), per M-block of K: the activations of each token lane (bytes past ``k``
  zeroed), then the weights: linear/head the beat's record of the weight tile
  (:class:`hwflow.compiler.layout.BeatGeometry`: one span of packed INTk values, one of N:M
  indices; the records of a pass are read in order), widened to INT8 here; qk the K rows;
  pv the V block, transposed (one V row per key). qk/pv output row ``l`` of a group is the
  engine's lane ``l`` (segment ``l // chains`` of chain ``l % chains``); linear/head row ``r``
  of a stripe is chain ``r // (C/N)``'s segment ``r % (C/N)``, as the tile format puts it.
  pv's UINT8 probabilities: the MV engine gets a 9-bit activation lane
  (:attr:`hwflow.hw.params.EngineParams.act_bits`); the dual-INT8 MM engine cannot have one
  (the packed ``a << F`` would outgrow the DSP48E2's 27-bit pre-adder), so there each block
  is fed as three INT8 beats ``p >> 1``, ``p >> 1``, ``p & 1`` of the same weights (their
  sum is ``p``): pv on MM takes three times the beats :func:`hwflow.costs.matmul_cost`
  charges;
* the engine runs raw (accumulators out); the unit applies the numerics contract's
  requantization itself (:func:`hwflow.numerics.linear_out`: row stage with the A rows'
  factors or the unit factor and the guard, INT32 bias, channel stage with per-row mult/shift
  to 8, 16 or 32 bits; qk :func:`hwflow.numerics.requantize`) and writes each value with
  strobes.

Cycles: far from :func:`hwflow.costs.matmul_cost`, which assumes one beat per cycle: the unit
is sequential (a span read of 2-4 cycles per token lane, one or two per weight record, one per
K row (qk) or V row (pv) of every beat; linear/head: four reads of the group's per-row
parameters; about ten cycles per output value (requantization stages and a strobed write);
see ``sim/mmu_bench.py`` for the measured table).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from amaranth.hdl import Array, Cat, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out, connect, flipped

from hwflow.compiler.layout import BeatGeometry
from hwflow.config import HardwarePreset
from hwflow.errors import UnsupportedError
from hwflow.hw.engine import MatrixMatrixEngine, MatrixVectorEngine
from hwflow.hw.machine.decode import cmd_layout
from hwflow.hw.machine.mmu_arith import round_shift, saturate
from hwflow.hw.machine.mmu_ports import ADDR_BITS, ReadPort, SpanReader, SpanWriter, WritePort
from hwflow.hw.params import EngineParams
from hwflow.isa import MATMUL_FUNCS, ROW_FACTOR_BYTES, Buf, Unit
from hwflow.numerics import ROW_MULT_BITS

__all__ = ["MatmulUnit", "buffer_words", "unit_design"]

_LINEAR, _QK, _PV, _HEAD = (MATMUL_FUNCS.index(f) for f in ("linear", "qk", "pv", "head"))


def buffer_words(hw: HardwarePreset, word_bytes: int) -> dict[Buf, int]:
    """Words of each on-chip buffer of ``hw`` at ``word_bytes`` bytes per word."""
    return {b: hw.buffers.bytes(b.name.lower()) // word_bytes for b in Buf}


class MatmulUnit(wiring.Component):
    """The MM (``kind="mpe"``) or MV (``kind="mv"``) unit of ``hw``; ``word_bytes`` per
    buffer word (every buffer the same; default one HBM port beat)."""

    def __init__(
        self, hw: HardwarePreset, kind: Literal["mv", "mpe"], word_bytes: int | None = None
    ) -> None:
        ep = EngineParams.from_preset(hw, kind)
        # pv multiplies UINT8 probabilities: a 9-bit activation lane where the engine allows
        # it (no dual-INT8 packing), else three INT8 beats per block (see the module doc)
        self.ep = ep if ep.dual_int8 else replace(ep, act_bits=9)
        self.split_pv = self.ep.act_bits == 8
        self.kind = kind
        self.wb = word_bytes or hw.hbm.port_bits // 8
        if 8 not in self.ep.weight_bits:
            raise UnsupportedError(f"{hw.name}: the matmul unit feeds INT8 weights (weight_bits)")
        if self.ep.chain_length % self.ep.m or self.ep.m > self.wb:
            raise UnsupportedError(
                f"{hw.name}: the unit needs an M-block ({self.ep.m}) dividing the chain and "
                f"fitting one buffer word ({self.wb} bytes)"
            )
        geo = BeatGeometry.from_preset(hw)
        if geo.chains != self.ep.chains or any(
            self.ep.rows_per_beat(n) & (self.ep.rows_per_beat(n) - 1) for n in self.ep.n_modes
        ):
            raise UnsupportedError(
                f"{hw.name} {kind}: the unit reads one tile record per beat, so the engine's "
                f"chains ({self.ep.chains}) must be a stripe ({geo.chains}) and every row group "
                "a power of two"
            )
        if geo.chains * geo.chain_length > self.wb:
            raise UnsupportedError(f"{hw.name}: a beat's INT8 weights exceed one buffer word")
        self.words = buffer_words(hw, self.wb)
        unit = Unit.MM if kind == "mpe" else Unit.MV
        ports = {}
        for b in Buf:
            ports[f"rd_{b.name.lower()}"] = Out(ReadPort(self.words[b], self.wb))
            ports[f"wr_{b.name.lower()}"] = Out(WritePort(self.words[b], self.wb))
        super().__init__(
            {
                "cmd": In(stream.Signature(cmd_layout(unit))),
                "done": Out(1),
                "busy": Out(1),
                **ports,
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        ep, wb = self.ep, self.wb
        big_m, chl, nch, rt = ep.m, ep.chain_length, ep.chains, ep.rows
        lanes = ep.lanes
        ib = ep.index_bits
        mb = big_m.bit_length() - 1
        eng = (MatrixVectorEngine if self.kind == "mv" else MatrixMatrixEngine)(ep)
        m.submodules.engine = eng
        rd = SpanReader(self.words, wb)
        wr = SpanWriter(self.words, wb)
        m.submodules.rd, m.submodules.wr = rd, wr
        for b in Buf:
            n = b.name.lower()
            connect(m, flipped(getattr(self, f"rd_{n}")), getattr(rd, f"rd_{n}"))
            connect(m, flipped(getattr(self, f"wr_{n}")), getattr(wr, f"wr_{n}"))

        c = Signal(self.cmd.payload.shape())
        func = c.func
        is_lin = (func == _LINEAR) | (func == _HEAD)
        is_qk, is_pv = func == _QK, func == _PV

        # ---- per-instruction derived values (SETUP)
        nsel = Signal(range(len(ep.n_modes)))
        n_eff = Signal(range(big_m + 1))
        rpb = Signal(range(lanes + 1))  # rows per beat (group) at this N
        dense = Signal()
        wbits = Signal(4)
        blocks, stripes = Signal(17), Signal(17)
        rec_v, rec_i, rec = Signal(8), Signal(8), Signal(9)  # a beat record's bytes
        last_rows = Signal(range(lanes + 1))  # rows of the last stripe
        rec_vl, rec_il = Signal(8), Signal(8)  # its records' bytes
        wrec = Signal(ADDR_BITS)  # the next beat record of the tile
        sec_bias, sec_mult, sec_shift = (Signal(ADDR_BITS) for _ in range(3))
        prm = [Signal(signed(32), name=f"prm{i}") for i in range(3)]
        guard = Signal(signed(32))

        # ---- loop counters
        tbase, gbase, bbase = Signal(17), Signal(17), Signal(17)
        t = Signal(range(rt + 1))
        lidx = Signal(range(lanes + 1))
        j = Signal(range(big_m + 1))
        sub = Signal(2)  # pv: sub-beat 0..2

        # ---- beat registers
        act_raw = [Signal(8 * big_m, name=f"act{i}") for i in range(rt)]
        wv = [[Signal(8, name=f"wv{ci}_{s}") for s in range(chl)] for ci in range(nch)]
        wi = [[Signal(ib, name=f"wi{ci}_{s}") for s in range(chl)] for ci in range(nch)]

        # ---- accumulators of one group: [token lane][lane]
        accs = Array(Signal(signed(ep.acc_bits), name=f"acc{i}") for i in range(rt * lanes))
        dt, dl = Signal(range(rt + 1)), Signal(range(lanes + 1))

        # ---- post-processing registers
        g_bias = [Signal(signed(32), name=f"g_bias{i}") for i in range(lanes)]
        g_mult = [Signal(16, name=f"g_mult{i}") for i in range(lanes)]
        g_shift = [Signal(8, name=f"g_shift{i}") for i in range(lanes)]
        m_t, e_t = Signal(16), Signal(signed(16))
        bias_v, mult_v, shift_v = Signal(signed(32)), Signal(signed(33)), Signal(signed(32))
        acc_v = Signal(signed(ep.acc_bits))
        p1 = Signal(signed(ep.acc_bits + 17))
        s1 = Signal(signed(34))
        y = Signal(signed(ep.acc_bits + 1))
        y2 = Signal(signed(ep.acc_bits + 2))
        p2 = Signal(signed(ep.acc_bits + 2 + 33))
        out_v = Signal(signed(32))
        obytes = Signal(3)

        tok = tbase + t
        last_stripe = gbase + rpb >= c.cols
        cur_v = Mux(last_stripe, rec_vl, rec_v)
        cur_i = Mux(last_stripe, rec_il, rec_i)
        # linear/head: row r of a stripe sits in chain r // (C/N), segment r % (C/N): the
        # engine's lane (segment * chains + chain)
        lane_lin = Signal(range(lanes))
        with m.Switch(nsel):
            for k, n in enumerate(ep.n_modes):
                cpn = chl // n
                with m.Case(k):
                    m.d.comb += lane_lin.eq((lidx % cpn) * nch + lidx // cpn)
        row = gbase + lidx

        # ---- span reader requests: the FSM sets these with rd.go
        m.d.comb += wr.buf.eq(c.o_buf)

        def read(buf: object, addr: object, nbytes: object) -> list:
            return [rd.go.eq(1), rd.buf.eq(buf), rd.addr.eq(addr), rd.nbytes.eq(nbytes)]

        # a beat's slots (``wbits`` values or ``ib``-bit indices) from the read window
        nslot = nch * chl
        stream_bits = rd.win
        vals = [Signal(signed(8), name=f"val{i}") for i in range(nslot)]
        idxs = [Signal(ib, name=f"idx{i}") for i in range(nslot)]
        with m.Switch(wbits):
            for bits in ep.weight_bits:
                with m.Case(bits):
                    for i in range(nslot):
                        v = stream_bits[i * bits : (i + 1) * bits].as_signed()
                        m.d.comb += vals[i].eq(v)
        for i in range(nslot):
            m.d.comb += idxs[i].eq(stream_bits[i * ib : (i + 1) * ib])

        def place_record(which: list, src: list) -> None:
            """A tile record's slots: slot j to chain j // C, stage j % C."""
            for i in range(nslot):
                m.d.sync += which[i // chl][i % chl].eq(src[i])

        def place(which: list, src: list) -> None:
            """Row piece of lane ``lidx`` (N values) into its chain's segment slots."""
            with m.Switch(nsel):
                for k, n in enumerate(ep.n_modes):
                    with m.Case(k), m.Switch(lidx):
                        for lv in range(ep.rows_per_beat(n)):
                            with m.Case(lv):
                                ci, s = lv % nch, lv // nch
                                for i in range(n):
                                    m.d.sync += which[ci][s * n + i].eq(src[i])

        # ---- the engine's beat
        beat = eng.i.payload
        wsel8 = ep.weight_bits.index(8)
        for ti in range(rt):
            for i in range(big_m):
                byte = act_raw[ti][8 * i : 8 * i + 8]
                pv_act = Mux(sub == 2, byte[0], byte[1:]) if self.split_pv else byte
                m.d.comb += beat.act[ti][i].eq(Mux(is_pv, pv_act, byte.as_signed()))
        for ci in range(nch):
            m.d.comb += [beat.wval[ci].eq(Cat(*wv[ci])), beat.widx[ci].eq(Cat(*wi[ci]))]
        last_block = bbase + big_m >= c.k
        m.d.comb += [
            beat.nsel.eq(nsel),
            beat.wsel.eq(wsel8),
            beat.raw.eq(1),
            beat.paddr.eq(0),
            beat.last.eq(last_block & (~is_pv | (sub == 2) | (not self.split_pv))),
            eng.p.valid.eq(0),
        ]

        done = Signal()
        m.d.comb += self.done.eq(done)

        with m.FSM() as fsm:
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.sync += c.eq(self.cmd.payload)
                    m.next = "SETUP0"
            with m.State("SETUP0"):
                dense_now = ~is_lin | (c.n == c.m)
                m.d.sync += [
                    dense.eq(dense_now),
                    n_eff.eq(Mux(dense_now, big_m, c.n)),
                    wbits.eq(Mux(is_lin, c.wbits, 8)),
                    obytes.eq(c.obits >> 3),
                    tbase.eq(0),
                    gbase.eq(0),
                    wrec.eq(c.b_off),
                ]
                m.next = "SETUP1"
            with m.State("SETUP1"):
                with m.Switch(n_eff):
                    for k, n in enumerate(ep.n_modes):
                        with m.Case(n):
                            m.d.sync += [nsel.eq(k), rpb.eq(ep.rows_per_beat(n))]
                m.d.sync += [
                    blocks.eq((c.k + big_m - 1) >> mb),
                    rec_v.eq(nslot // 8 * wbits),
                    rec_i.eq(Mux(dense, 0, nslot * ib // 8)),
                ]
                m.next = "SETUP2"
            with m.State("SETUP2"):
                with m.Switch(nsel):
                    for k, n in enumerate(ep.n_modes):
                        sh = ep.rows_per_beat(n).bit_length() - 1
                        with m.Case(k):
                            m.d.sync += stripes.eq((c.cols + (1 << sh) - 1) >> sh)
                m.d.sync += rec.eq(rec_v + rec_i)
                low = c.cols & (rpb - 1)
                m.d.sync += last_rows.eq(Mux(low == 0, rpb, low))
                m.next = "SETUP3"
            with m.State("SETUP3"):  # the last stripe's records hold its rows only
                slots_l = last_rows * n_eff
                m.d.sync += [
                    rec_vl.eq((slots_l * wbits + 7) >> 3),
                    rec_il.eq(Mux(dense, 0, (slots_l * ib + 7) >> 3)),
                ]
                m.next = "SETUP4"
            with m.State("SETUP4"):
                full = (stripes - 1) * blocks * rec
                m.d.sync += sec_bias.eq(full + blocks * (rec_vl + rec_il))
                m.next = "SETUP5"
            with m.State("SETUP5"):
                m.d.sync += sec_mult.eq(sec_bias + Mux(c.bias, c.cols << 2, 0))
                m.next = "SETUP6"
            with m.State("SETUP6"):
                m.d.sync += sec_shift.eq(sec_mult + (c.cols << 1))
                with m.If((c.rows == 0) | (c.cols == 0)):
                    m.next = "DONE"
                with m.Elif(rd.idle):
                    m.d.comb += read(Buf.PARAM, c.p_off, 12)
                    m.next = "PARAMS"
            with m.State("PARAMS"), m.If(rd.valid):
                for i in range(3):
                    m.d.sync += prm[i].eq(rd.win[32 * i : 32 * i + 32])
                m.next = "PARAMS1"
            with m.State("PARAMS1"):
                m.d.sync += guard.eq(Mux(is_pv, prm[2], prm[0]))
                m.next = "GROUP"

            # ---------------------------------------------------------- one row group
            with m.State("GROUP"):
                m.d.sync += [bbase.eq(0), t.eq(0), dt.eq(0), dl.eq(0), lidx.eq(0)]
                with m.If(is_lin):
                    m.next = "PG0"
                with m.Else():
                    m.next = "OPERANDS"
            with m.State("OPERANDS"):
                with m.If(c.k == 0):  # no beats: every accumulator is 0
                    for a in accs:
                        m.d.sync += a.eq(0)
                    m.next = "POST"
                with m.Else():
                    m.next = "ACT"
            # linear/head: the group's per-row bias, mult and shift, one word-sized span at a
            # time (rows past ``cols`` read whatever follows; never used)
            spans = []
            for what, size in (("bias", 4), ("mult", 2), ("shift", 1)):
                for at in range(0, size * lanes, wb):
                    spans.append((what, size, at, min(wb, size * lanes - at)))
            sec = {"bias": sec_bias, "mult": sec_mult, "shift": sec_shift}
            for i, (what, size, at, nb) in enumerate(spans):
                nxt = f"PG{i + 1}" if i + 1 < len(spans) else "OPERANDS"
                with m.State(f"PG{i}"):
                    with m.If((what == "bias") & ~c.bias):
                        m.next = nxt
                    with m.Elif(rd.idle):
                        addr = c.b_off + sec[what] + gbase * size + at
                        m.d.comb += read(c.b_buf, addr, nb)
                        m.next = f"PG{i}_WAIT"
                with m.State(f"PG{i}_WAIT"), m.If(rd.valid):
                    regs = {"bias": g_bias, "mult": g_mult, "shift": g_shift}[what]
                    for e in range(nb // size):
                        m.d.sync += regs[at // size + e].eq(
                            rd.win[8 * size * e : 8 * size * (e + 1)]
                        )
                    m.next = nxt
            with m.State("ACT"):  # activations of token lane t for block bbase
                with m.If(tok >= c.rows):
                    with m.Switch(t):
                        for ti in range(rt):
                            with m.Case(ti):
                                m.d.sync += act_raw[ti].eq(0)
                    m.next = "ACT_NEXT"
                with m.Elif(rd.idle):
                    m.d.comb += read(c.a_buf, c.a_off + tok * c.a_stride + bbase, big_m)
                    m.next = "ACT_WAIT"
            with m.State("ACT_WAIT"), m.If(rd.valid):
                keep = Cat(*((bbase + i < c.k).replicate(8) for i in range(big_m)))
                with m.Switch(t):
                    for ti in range(rt):
                        with m.Case(ti):
                            m.d.sync += act_raw[ti].eq(rd.win[: 8 * big_m] & keep)
                m.next = "ACT_NEXT"
            with m.State("ACT_NEXT"):
                with m.If(t == rt - 1):
                    m.d.sync += [t.eq(0), lidx.eq(0), j.eq(0)]
                    m.next = "W"
                with m.Else():
                    m.d.sync += t.eq(t + 1)
                    m.next = "ACT"
            with m.State("W"):  # weights: dispatch by func
                with m.If(is_pv):
                    m.next = "PV"
                with m.Elif(is_lin):  # noqa: SIM117 - the beat record: values, then indices
                    with m.If(rd.idle):
                        m.d.comb += read(c.b_buf, wrec, cur_v)
                        m.next = "W_WAIT"
                with m.Elif(row >= c.cols):
                    m.next = "PUSH"
                with m.Elif(rd.idle):  # qk: the block of key row ``row``
                    m.d.comb += read(c.b_buf, c.b_off + row * c.b_stride + bbase, big_m)
                    m.next = "W_WAIT"
            with m.State("W_WAIT"), m.If(rd.valid):
                with m.If(is_lin):
                    place_record(wv, vals)
                    m.next = "W_DONE"
                with m.Else():
                    place(wv, vals)
                    m.next = "W_NEXT"
            with m.State("W_DONE"):
                with m.If(dense):
                    m.next = "PUSH"
                with m.Elif(rd.idle):
                    m.d.comb += read(c.b_buf, wrec + cur_v, cur_i)
                    m.next = "WI_WAIT"
            with m.State("WI_WAIT"), m.If(rd.valid):
                place_record(wi, idxs)
                m.next = "PUSH"
            with m.State("W_NEXT"):
                with m.If(lidx + 1 >= rpb):
                    m.next = "PUSH"
                with m.Else():
                    m.d.sync += lidx.eq(lidx + 1)
                    m.next = "W"
            with m.State("PV"):  # one V row (key bbase + j): lanes' columns gbase ..
                kk = bbase + j
                with m.If(kk >= c.k):
                    m.next = "PUSH"
                with m.Elif(rd.idle):
                    nb = ep.rows_per_beat(big_m)
                    m.d.comb += read(c.b_buf, c.b_off + kk * c.b_stride + gbase, nb)
                    m.next = "PV_WAIT"
            with m.State("PV_WAIT"), m.If(rd.valid):
                with m.Switch(j):
                    for jv in range(big_m):
                        with m.Case(jv):
                            for lv in range(ep.rows_per_beat(big_m)):
                                ci, s = lv % nch, lv // nch
                                byte = rd.win[8 * lv : 8 * lv + 8]
                                m.d.sync += wv[ci][s * big_m + jv].eq(byte)
                with m.If(j == big_m - 1):
                    m.next = "PUSH"
                with m.Else():
                    m.d.sync += j.eq(j + 1)
                    m.next = "PV"
            with m.State("PUSH"):
                m.d.comb += eng.i.valid.eq(1)
                with m.If(eng.i.ready):
                    m.d.sync += wrec.eq(wrec + cur_v + cur_i)
                    with m.If(is_pv & (sub != 2) & self.split_pv):
                        m.d.sync += sub.eq(sub + 1)
                    with m.Else():
                        m.d.sync += [sub.eq(0), t.eq(0)]
                        with m.If(last_block):
                            m.next = "DRAIN"
                        with m.Else():
                            m.d.sync += bbase.eq(bbase + big_m)
                            m.next = "ACT"
            with m.State("DRAIN"):  # the group's raw accumulators, token lane by token lane
                m.d.comb += eng.o.ready.eq(1)
                with m.If(eng.o.valid):
                    for r in range(ep.requantizers):
                        m.d.sync += accs[dt * lanes + dl + r].eq(eng.o.payload.data[r])
                    with m.If(dl + ep.requantizers >= rpb):
                        m.d.sync += [dl.eq(0), dt.eq(dt + 1)]
                    with m.Else():
                        m.d.sync += dl.eq(dl + ep.requantizers)
                    with m.If(eng.o.payload.last):
                        m.d.sync += [t.eq(0), lidx.eq(0)]
                        m.next = "POST"

            # ---------------------------------------------------------- requantize, write
            with m.State("POST"):  # value (token lane t, lane lidx)
                with m.If((tok >= c.rows) | (t >= rt)):
                    m.next = "GROUP_NEXT"
                with m.Elif((row >= c.cols) | (lidx >= rpb)):
                    m.d.sync += [t.eq(t + 1), lidx.eq(0)]
                    m.next = "POST_T"
                with m.Else():
                    m.d.sync += acc_v.eq(accs[t * lanes + Mux(is_lin, lane_lin, lidx)])
                    with m.If((lidx == 0) & c.arow & ~is_qk):
                        m.next = "RF"
                    with m.Elif(lidx == 0):
                        m.d.sync += [m_t.eq(1 << (ROW_MULT_BITS - 1)), e_t.eq(ROW_MULT_BITS - 1)]
                        m.next = "PRM"
                    with m.Else():
                        m.next = "PRM"
            with m.State("POST_T"):
                with m.If(t >= rt):
                    m.next = "GROUP_NEXT"
                with m.Else():
                    m.next = "POST"
            with m.State("RF"), m.If(rd.idle):
                addr = c.a_off + tok * c.a_stride - ROW_FACTOR_BYTES
                m.d.comb += read(c.a_buf, addr, ROW_FACTOR_BYTES)
                m.next = "RF_WAIT"
            with m.State("RF_WAIT"), m.If(rd.valid):
                m.d.sync += [m_t.eq(rd.win[:16]), e_t.eq(rd.win[16:32])]
                m.next = "PRM"
            with m.State("PRM"):  # per-row parameters: the group's, or the instruction's
                with m.If(is_lin):
                    m.d.sync += [
                        bias_v.eq(Mux(c.bias, Array(g_bias)[lidx], 0)),
                        mult_v.eq(Array(g_mult)[lidx]),
                        shift_v.eq(Array(g_shift)[lidx].as_signed()),
                    ]
                with m.Else():
                    m.d.sync += [bias_v.eq(0), mult_v.eq(prm[0]), shift_v.eq(prm[1])]
                m.next = "C1"
            with m.State("C1"):  # row stage product
                m.d.sync += [p1.eq(acc_v * m_t), s1.eq(e_t - guard)]
                m.next = "C2"
            with m.State("C2"):
                rs1 = round_shift(m, p1, s1, "rs_row")
                m.d.sync += y.eq(Mux(is_qk, acc_v, saturate(rs1, 32)))
                m.next = "C3"
            with m.State("C3"):
                m.d.sync += y2.eq(y + bias_v)
                m.next = "C4"
            with m.State("C4"):
                m.d.sync += p2.eq(y2 * mult_v)
                m.next = "C5"
            with m.State("C5"):
                rs2 = round_shift(m, p2, shift_v, "rs_ch")
                with m.Switch(c.obits):
                    for bits in (8, 16, 32):
                        with m.Case(bits):
                            m.d.sync += out_v.eq(saturate(rs2, bits))
                m.next = "WRITE"
            with m.State("WRITE"), m.If(wr.idle):  # the writer finishes on its own
                m.d.comb += [
                    wr.go.eq(1),
                    wr.addr.eq(c.o_off + tok * c.o_stride + row * obytes),
                    wr.value.eq(out_v),
                    wr.nbytes.eq(obytes),
                ]
                with m.If(lidx + 1 >= rpb):
                    m.d.sync += [lidx.eq(0), t.eq(t + 1)]
                    m.next = "POST_T"
                with m.Else():
                    m.d.sync += lidx.eq(lidx + 1)
                    m.next = "POST"
            with m.State("GROUP_NEXT"):
                with m.If(gbase + rpb < c.cols):
                    m.d.sync += gbase.eq(gbase + rpb)
                    m.next = "GROUP"
                with m.Elif(tbase + rt < c.rows):
                    m.d.sync += [gbase.eq(0), tbase.eq(tbase + rt), wrec.eq(c.b_off)]
                    m.next = "GROUP"
                with m.Else():
                    m.next = "DRAIN_WRITES"
            with m.State("DRAIN_WRITES"), m.If(wr.idle & ~wr.go):
                m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += done.eq(1)
                m.next = "IDLE"
        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        return m


def unit_design(hw: HardwarePreset, kind: Literal["mv", "mpe"]) -> tuple[str, str, float]:
    """(top module name, Verilog text, generation seconds) of ``hw``'s ``kind`` matmul unit:
    what :func:`hwflow.hw.cosim.run_bench` builds for ``sim/mmu_bench.py``."""
    import re
    import time

    from amaranth.back import verilog

    t0 = time.perf_counter()
    base = re.sub(r"\W", "_", hw.name)
    name = f"hwflow_{base}_{kind}_unit"
    text = verilog.convert(MatmulUnit(hw, kind), name=name, emit_src=False)
    return name, text, time.perf_counter() - t0
