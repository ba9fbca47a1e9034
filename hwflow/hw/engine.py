"""The matrix-vector (decode) and matrix-matrix (prefill) engines: sparse DSP chains.

Microarchitecture (the one :mod:`hwflow.costs` describes and charges)
---------------------------------------------------------------------
A *beat* (input stream ``i``) carries one M-wide INT8 activation block per token lane and, for
each of ``chains`` chains, C = ``chain_length`` packed weight values with their
``log2(M)``-bit in-block indices. The beat's ``nsel`` picks N from :attr:`EngineParams.n_modes`:
every chain is cut by reduction points into C/N segments of N stages, each computing the
partial dot product of one output row over the block (dense: N = M, indices implicit).
The cascade itself is never cut (it maps onto an unbroken PCOUT->PCIN DSP column): a
reduction point is a tap. Accumulators at the segment ends sum the chain's prefix sums over
the row group's blocks, and a segment's result is the difference of its end's and the
previous end's accumulators, formed as the results are captured.

The design is hierarchical (:mod:`hwflow.hw.hier`): one :class:`ChainSlice` per chain (weight
widening, index mux, DSP chain(s), accumulators, deskew, the per-chain segment select), one
:class:`DrainColumn` per requantizer and token lane (the output buffer), one
:class:`~hwflow.hw.requant.Requantizer` per requantizer; the top holds the control pipeline,
the issue logic, the parameter memory and the output FIFO.

Cycle by cycle, for a row group whose last beat is handed over in cycle t:

====================  =======================================================================
t+1                   operand stage: weights widened (INT2/3/4/8 -> INT8), indices decoded,
                      activations selected through the index mux (per slot and token lane)
t+2+j                 stage j's A/B(/D) input registers, after a systolic skew of j cycles
t+3+j                 stage j's M (product) register
t+4+j                 stage j's P register: ``P[j-1] + M`` (cascade, PCIN; a prefix sum)
t+5+j                 accumulator at each possible segment end j: ``(first ? 0 : acc) + P[j]``
t+4+C                 deskewed: every accumulator delayed to the chain's end
t+5+C                 captured: the output buffer (one shift register per requantizer and
                      token lane) loads every lane's ``acc[end] - acc[previous end]``
t+5+C+q               drain step q (0 <= q < D): R lanes leave the buffer; their parameter
                      word was read the cycle before
t+6+C+q .. t+10+C+q   requantizer: bias add, multiply (partial products, their sum),
                      rounding add, shift; saturate into the FIFO
t+12+C+q              the drain word on the output FIFO (``o``)
====================  =======================================================================

Weight groups (a beat's ``wgrp``; :func:`hwflow.numerics.weight_matmul`): the segment-end
accumulators restart at every weight group (G/M beats) instead of every row group; when a
group's last beat (``glast``) reaches t+4+C, each chain's segments at the beat's N (per token
lane) are registered (the segment difference and its N pick are the slice's longest path),
then multiplied by their rows' group multipliers (the ``gmult`` port, valid with that
beat and delayed with it; one DSP48E2 per slot and token lane, its M register: t+6+C,
counted by :func:`hwflow.config.engine_dsps`) and added into
the row accumulators (its P register: t+7+C, restarted by the row group's first group); the
row group is captured from those at t+8+C, :data:`hwflow.costs.GROUP_STAGES` later than an
ungrouped one, and drains the same way. (An ungrouped row group ending right after a grouped
one waits GROUP_STAGES cycles more, so that captures stay a drain apart and in order.)

A row group at N has ``chains*C/N`` rows x ``rows`` token lanes of results: D =
:meth:`EngineParams.drain_cycles` words of R values, token lane by token lane. So a group's
first word leaves ``C + 12`` cycles (:func:`hwflow.costs.chain_latency`) after its last beat
and its last word D - 1 cycles later.

Flow control (no global stall: every register of the datapath moves every cycle, bubbles
carry ``valid = 0``). Only the input refuses beats (``i.ready`` low), for two reasons,
both decided from counters at the input:

* *drain spacing*: a group's capture must not overwrite the buffer before the previous group
  has drained, so a group's last beat is accepted only D cycles or more after the previous
  group's (D of the previous group), and after a group of B beats whose drain is D > B the
  input waits D - B cycles, so that in a run of equal groups each result occupies the input
  for max(B, D) cycles, as costs.matmul_cost charges. (When a drain-bound op is followed by
  one with fewer beats per group, B' < B, the later op's first group waits B - B' cycles
  more than matmul_cost charges: the one case where the per-op cost is optimistic.)
* *output credits*: the output FIFO has :attr:`EngineParams.fifo_depth` words; a group's last
  beat is accepted only when 2 x ``drain_max`` credits are free (a credit returns when a
  word leaves on ``o``; a last beat takes its D credits). The check reads a flag registered
  the cycle before, from the count less a last beat's D not yet subtracted, and it allows
  for one more end in that cycle: conservative by at most ``drain_max + 1`` words, which
  the FIFO's depth covers, so an always-ready output never withholds a credit, and a slow
  output only delays the input, never the pipeline. (Every decision of the input is read
  from registers: ``ready`` is one LUT deep.)

Requantization parameters (multiplier, shift, bias per lane) live in an on-chip parameter
memory of ``param_depth`` row-group entries of ``lanes / R`` words (sized from the preset's
parameter buffer), written through the ``p`` stream one word of R lanes per beat (``p`` is
always ready); a row group's last beat names its entry (``paddr``). Loading entries ahead of
use, and not overwriting one still in flight, is the driver's job (as for every on-chip
buffer), so the parameters never throttle the chain. ``first`` is implicit: the beat after a
``last`` beat (or after reset) starts a new row group.

With ``dual_int8`` every activation is clamped to ``DUAL_ACT_MIN`` = -127 on entry
(:func:`hwflow.hw.params.dual_act_clamp`): that keeps the DSP pre-adder's ``(a << F) + d``
inside its 27 bits, so every stage stays one DSP48E2 with its cascade.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import (
    Cat,
    ClockSignal,
    Elaboratable,
    Instance,
    Module,
    Mux,
    Shape,
    Signal,
    Value,
    signed,
    unsigned,
)
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hwflow.config import HardwarePreset
from hwflow.costs import GROUP_STAGES
from hwflow.errors import UnsupportedError
from hwflow.hw.dsp import DspChain, unpack_dual
from hwflow.hw.hier import Hierarchy, place
from hwflow.hw.params import DUAL_ACT_MIN, EngineParams
from hwflow.hw.requant import Requantizer
from hwflow.hw.tools import ROOT
from hwflow.hw.widen import WeightWidener
from hwflow.numerics import GROUP_MULT_BITS

#: Bits of a group partial sum on the group multiplier's A port: ``|p| <= G * 128 * 127 <
#: 2**21`` for every group the ISA encodes (G <= 128, 3-bit ``wgroup``; activations down to
#: -128, weights in -127..127; :func:`hwflow.numerics.group_partial_bits`), so the slice is
#: exact; 22 bits fit the DSP48E1's 25-bit A port as well as the DSP48E2's 27, so the
#: synthesis stand-in (:mod:`hwflow.hw.synth`) maps it onto one DSP as the device does.
GROUP_PARTIAL_BITS = 22

#: The hand-written block RAM of the parameter memory.
RAM_VERILOG = ROOT / "rtl" / "hwflow_sdp_ram.v"

__all__ = [
    "ChainEngine",
    "ChainSlice",
    "DrainColumn",
    "MatrixMatrixEngine",
    "MatrixVectorEngine",
]


def _ctl_layout(p: EngineParams) -> data.StructLayout:
    return data.StructLayout(
        {
            "valid": 1,
            "first": 1,
            "last": 1,
            "raw": 1,
            "wgrp": 1,
            "glast": 1,
            "gfirst": 1,
            "nsel": p.beat_layout["nsel"].shape,
            "paddr": p.beat_layout["paddr"].shape,
        }
        | {f: p.beat_layout[f].shape for f in ("tmult", "tshift") if p.per_token}
    )


def _entry_layout(p: EngineParams) -> data.StructLayout:
    """One parameter-memory word: the parameters of R lanes."""
    return data.StructLayout(
        {name: p.params_layout[name].shape for name in ("mult", "shift", "bias")}
    )


def _by_mode(
    m: Module, nsel: Value, p: EngineParams, table: dict[int, int], width: int = 1
) -> Signal:
    """A signal that is ``table[N]`` for the selected N mode (0 for an nsel past the modes)."""
    out = Signal(width)
    with m.Switch(nsel):
        for k, n in enumerate(p.n_modes):
            with m.Case(k):
                m.d.comb += out.eq(int(table[n]))
        with m.Default():
            m.d.comb += out.eq(0)
    return out


class ChainSlice(wiring.Component):
    """One chain of the engine, a leaf module instantiated ``chains`` times.

    Operand stage (weight widening, index mux), the DSP chain(s) (one per token lane, or one
    per two with ``dual_int8``), the segment-end accumulators (enabled per end by the top:
    ``acc_en``/``acc_first`` bit e belongs to :attr:`EngineParams.seg_ends` [e]), their
    deskew, and ``seg[t]``: segment s of this chain at each N mode it exists for, slot by slot
    (:func:`_slot_cases`; the difference of two deskewed prefix accumulators), combinational
    for the output buffer's capture, which picks the capture's N."""

    def __init__(self, p: EngineParams) -> None:
        self.p = p
        ends = len(p.seg_ends)
        super().__init__(
            {
                "act": In(p.beat_layout["act"].shape),
                "wval": In(unsigned(p.chain_length * 8)),
                "widx": In(unsigned(p.chain_length * p.index_bits)),
                "wsel": In(p.beat_layout["wsel"].shape),
                "dense": In(1),
                "acc_en": In(ends),
                "acc_first": In(ends),
                # one port per (token lane, slot and mode): the top reads each apart
                "seg": Out(signed(p.acc_bits)).array(p.rows, sum(map(len, _slot_cases(p)))),
                # the weight-group stage (module doc): N of the group ending at the chain's
                # end, its multipliers (per slot), multiply, accumulate (restart first)
                "gsel": In(p.beat_layout["nsel"].shape),
                "gmult": In(unsigned(p.slots * GROUP_MULT_BITS)),
                "gmul": In(1),
                "gacc": In(1),
                "gfirst": In(1),
                "gseg": Out(signed(p.acc_bits)).array(p.rows, p.slots),
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        p = self.p
        c_len, mb, lb = p.chain_length, p.m, p.index_bits
        wid = WeightWidener(slots=c_len, bits=p.weight_bits)
        m.submodules.widen = wid
        m.d.comb += [wid.packed.eq(self.wval), wid.sel.eq(self.wsel)]
        groups = p.rows // 2 if p.dual_int8 else p.rows
        dsp = [
            DspChain(
                length=c_len,
                acc_bits=p.acc_bits,
                dual=p.dual_int8,
                field=p.dual_field,
                a_bits=p.act_bits,
            )
            for _ in range(groups)
        ]
        for g, ch in enumerate(dsp):
            m.submodules[f"dsp{g}"] = ch
        for i in range(c_len):
            idx = Mux(self.dense, i % mb, self.widx[i * lb : (i + 1) * lb])
            w = Signal(signed(8), name=f"w{i}", reset_less=True)
            m.d.sync += w.eq(wid.values[i])
            acts = []
            for t in range(p.rows):
                a = Signal(signed(p.act_bits), name=f"a{i}_{t}", reset_less=True)
                m.d.sync += a.eq(self.act[t][idx])
                acts.append(a)
            for g, ch in enumerate(dsp):
                m.d.comb += ch.b[i].eq(w)
                if p.dual_int8:
                    m.d.comb += [ch.a[i].eq(acts[2 * g]), ch.d[i].eq(acts[2 * g + 1])]
                else:
                    m.d.comb += ch.a[i].eq(acts[g])

        # accumulators of prefix sums at segment ends, then deskew to the chain's end
        final: list[dict[int, Signal]] = [{} for _ in range(p.rows)]
        for e, j in enumerate(p.seg_ends):
            sums: list[tuple[int, Value]] = []
            for g, ch in enumerate(dsp):
                if p.dual_int8:
                    hi, lo = unpack_dual(ch.p[j], p.dual_field)
                    sums += [(2 * g, hi), (2 * g + 1, lo)]
                else:
                    sums.append((g, ch.p[j]))
            for t, val in sums:
                acc = Signal(signed(p.acc_bits), name=f"acc{t}_{j}", reset_less=True)
                with m.If(self.acc_en[e]):
                    m.d.sync += acc.eq(Mux(self.acc_first[e], 0, acc) + val)
                for k in range(c_len - 1 - j):
                    nxt = Signal(signed(p.acc_bits), name=f"dsk{t}_{j}_{k}", reset_less=True)
                    m.d.sync += nxt.eq(acc)
                    acc = nxt
                final[t][j] = acc

        # segment s at each N it exists for: prefix(end) - prefix(previous end); the drain
        # column picks the capture's N (so the pick merges into its load multiplexer)
        for t in range(p.rows):
            at = 0
            for s_, cases in enumerate(_slot_cases(p)):
                for _k, n in cases:
                    end = final[t][s_ * n + n - 1]
                    seg = end - final[t][s_ * n - 1] if s_ else end
                    m.d.comb += self.seg[t][at].eq(seg)
                    at += 1
        self._groups(m)
        return m

    def _groups(self, m: Module) -> None:
        """The weight-group stage: per token lane and slot, the ending group's partial sum
        (the segment at the group's N) times the row's multiplier (one DSP48E2: the M
        register), added into the row accumulator (its P register), restarted by the row
        group's first group."""
        p = self.p
        gb = GROUP_MULT_BITS
        for t in range(p.rows):
            at = 0
            for s_, cases in enumerate(_slot_cases(p)):
                # registered: the segment difference and its N pick alone take ~5 ns
                part = Signal(signed(GROUP_PARTIAL_BITS), name=f"gp{t}_{s_}", reset_less=True)
                with m.Switch(self.gsel):
                    for k, _n in cases:
                        with m.Case(k):
                            m.d.sync += part.eq(self.seg[t][at])
                        at += 1
                    with m.Default():
                        m.d.sync += part.eq(0)
                g = self.gmult[s_ * gb : (s_ + 1) * gb]
                prod = Signal(
                    signed(GROUP_PARTIAL_BITS + gb + 1), name=f"gm{t}_{s_}", reset_less=True
                )
                racc = Signal(signed(p.acc_bits), name=f"gr{t}_{s_}", reset_less=True)
                with m.If(self.gmul):
                    m.d.sync += prod.eq(part * g)
                with m.If(self.gacc):
                    m.d.sync += racc.eq(Mux(self.gfirst, 0, racc) + prod)
                m.d.comb += self.gseg[t][s_].eq(racc)


def _slot_cases(p: EngineParams) -> list[list[tuple[int, int]]]:
    """Per output-buffer slot s of a chain: the (nsel, N) modes it holds a segment at (s <
    C/N), the candidates a drain position of that slot chooses from."""
    return [
        [(k, n) for k, n in enumerate(p.n_modes) if s < p.chain_length // n] for s in range(p.slots)
    ]


def _position_slot(p: EngineParams, q: int) -> int:
    """The chain slot every drain column holds at position q: lane ``q*R + r`` (r < R, R
    dividing ``chains``) is segment ``(q*R + r) // chains`` = ``q*R // chains``."""
    return q * p.requantizers // p.chains


class DrainColumn(wiring.Component):
    """One column of the output buffer: ``depth`` registers loaded all at once (``load``) and
    shifted toward ``head`` one per cycle (``shift``); a leaf module, instantiated once per
    requantizer and token lane. Position q loads its slot's segment at the N ``sel`` picks
    (``cand[q]``: one candidate per N mode the slot exists at, :func:`_slot_cases`; zero at
    an N without that slot), so the mode multiplexer and the load multiplexer are one piece
    of logic inside this module; a weight-grouped row group (``grp``) loads each position's
    row accumulator ``gcand[q]`` instead (its N picked before the group multiply)."""

    def __init__(self, p: EngineParams) -> None:
        self.p = p
        self.cases = [_slot_cases(p)[_position_slot(p, q)] for q in range(p.drain_depth)]
        super().__init__(
            {
                "cand": In(signed(p.acc_bits)).array(sum(map(len, self.cases))),
                "sel": In(p.beat_layout["nsel"].shape),
                "gcand": In(signed(p.acc_bits)).array(p.drain_depth),
                "grp": In(1),
                "load": In(1),
                "shift": In(1),
                "head": Out(signed(p.acc_bits)),
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        p = self.p
        regs = [
            Signal(signed(p.acc_bits), name=f"q{i}", reset_less=True) for i in range(p.drain_depth)
        ]
        at = 0
        with m.If(self.load & self.grp):
            m.d.sync += [reg.eq(self.gcand[q]) for q, reg in enumerate(regs)]
        with m.Elif(self.load):
            for reg, cases in zip(regs, self.cases, strict=True):
                with m.Switch(self.sel):
                    for k, _n in cases:
                        with m.Case(k):
                            m.d.sync += reg.eq(self.cand[at])
                        at += 1
                    with m.Default():
                        m.d.sync += reg.eq(0)
        with m.Elif(self.shift):
            m.d.sync += [regs[i].eq(regs[i + 1]) for i in range(len(regs) - 1)]
        m.d.comb += self.head.eq(regs[0])
        return m


class _ParamRam(Elaboratable):
    """The requantization parameter memory: one write port, one synchronous read port
    (read-before-write). With a hierarchy it is the hand-written ``rtl/hwflow_sdp_ram.v``
    (Amaranth spends seconds per Mbit emitting a Memory's initial contents); in Amaranth's
    simulator an :class:`amaranth.lib.memory.Memory` with the same behaviour."""

    def __init__(self, p: EngineParams, hier: Hierarchy | None) -> None:
        self.hier = hier
        self.depth = p.param_depth * p.param_chunks
        self.layout = _entry_layout(p)
        abits = Shape.cast(range(self.depth)).width
        self.waddr, self.raddr = Signal(abits), Signal(abits)
        self.wdata, self.rdata = Signal(self.layout), Signal(self.layout)
        self.we = Signal()

    def elaborate(self, platform: object) -> Module:
        m = Module()
        if self.hier is None:
            mem = Memory(shape=self.layout, depth=self.depth, init=[])
            m.submodules.mem = mem
            wp, rp = mem.write_port(), mem.read_port()
            m.d.comb += [
                wp.addr.eq(self.waddr),
                wp.data.eq(self.wdata),
                wp.en.eq(self.we),
                rp.addr.eq(self.raddr),
                self.rdata.eq(rp.data),
            ]
            return m
        self.hier.verbatim("hwflow_sdp_ram", RAM_VERILOG)
        m.submodules.ram = Instance(
            "hwflow_sdp_ram",
            p_WIDTH=Shape.cast(self.layout).width,
            p_DEPTH=self.depth,
            p_AW=len(self.waddr),
            i_clk=ClockSignal("sync"),
            i_we=self.we,
            i_waddr=self.waddr,
            i_wdata=self.wdata,
            i_raddr=self.raddr,
            o_rdata=self.rdata,
        )
        return m


class _Issue(Elaboratable):
    """The input's acceptance: drain spacing and output credits (see the module docstring)."""

    def __init__(self, p: EngineParams) -> None:
        self.p = p
        self.valid = Signal()
        self.last = Signal()
        self.wgrp = Signal()
        self.glast = Signal()
        self.nsel = Signal(p.beat_layout["nsel"].shape)
        self.ready = Signal()
        self.first = Signal()  # the offered beat starts a row group, or a weight group
        self.gfirst = Signal()  # the offered beat lies in its row group's first weight group
        self.word_out = Signal()  # a drain word left the output FIFO

    def elaborate(self, platform: object) -> Module:
        """Every decision is read from registers (flags kept beside the counters), so
        ``ready`` is one LUT deep and no counter's carry chain lies on the path from one
        acceptance to the next; the credits a last beat takes are subtracted a cycle later
        (module doc: the check is then conservative by at most one group's words)."""
        m = Module()
        p = self.p
        dmax = p.drain_max
        width = Shape.cast(range(p.fifo_depth + 1)).width
        d_in = _by_mode(m, self.nsel, p, {n: p.drain_cycles(n) for n in p.n_modes}, width)
        d_one = _by_mode(m, self.nsel, p, {n: p.drain_cycles(n) == 1 for n in p.n_modes})
        after_group = Signal(init=1)  # after a row group's or a weight group's last beat
        in_first = Signal(init=1)  # no weight group of the current row group ended yet
        b_now = Signal(range(dmax + 1), init=1)  # beats of the group with the offered one (sat.)
        # cycles the input still waits for the drain; until a group may end (capture)
        # again; after a grouped row group's end, until an ungrouped one may (it captures
        # GROUP_STAGES earlier in the pipeline: only once the grouped capture has drained)
        pad, pad_z = Signal(range(dmax + 1)), Signal(init=1)
        hold, hold_z = Signal(range(dmax + 1)), Signal(init=1)
        ghold, ghold_z = Signal(range(dmax + GROUP_STAGES + 1)), Signal(init=1)
        credits = Signal(range(p.fifo_depth + 1), init=p.fifo_depth)
        cred_ok = Signal(init=1)  # at least 2 x drain_max credits free
        ends_r, nsel_r = Signal(), Signal.like(self.nsel)  # the last cycle's end, its N
        end_ok = hold_z & (self.wgrp | ghold_z) & cred_ok
        m.d.comb += [
            self.first.eq(after_group),
            self.gfirst.eq(in_first),
            self.ready.eq(pad_z & (~self.last | end_ok)),
        ]
        take = self.valid & self.ready
        ends = take & self.last
        gend = self.wgrp & self.glast
        with m.If(take):
            m.d.sync += [
                after_group.eq(self.last | gend),
                in_first.eq(self.last | (in_first & ~gend)),
                b_now.eq(Mux(self.last, 1, Mux(b_now == dmax, dmax, b_now + 1))),
            ]
        with m.If(ends):
            wait = d_in > b_now
            m.d.sync += [
                pad.eq(Mux(wait, d_in - b_now, 0)),
                pad_z.eq(~wait),
                hold.eq(d_in - 1),
                hold_z.eq(d_one),
                ghold.eq(Mux(self.wgrp, d_in - 1 + GROUP_STAGES, 0)),
                ghold_z.eq(~self.wgrp),
            ]
        with m.Else():
            for cnt, zero in ((pad, pad_z), (hold, hold_z), (ghold, ghold_z)):
                with m.If(~zero):
                    m.d.sync += [cnt.eq(cnt - 1), zero.eq(cnt == 1)]
        # credits: a last beat's D are subtracted the cycle after (ends_r); the flag for
        # the next cycle leaves room for one more end this cycle (at most drain_max)
        d_r = _by_mode(m, nsel_r, p, {n: p.drain_cycles(n) for n in p.n_modes}, width)
        m.d.sync += [
            ends_r.eq(ends),
            nsel_r.eq(self.nsel),
            credits.eq(credits - Mux(ends_r, d_r, 0) + self.word_out),
        ]
        ok_end = Signal()  # enough credits once the last cycle's end is subtracted
        with m.Switch(nsel_r):
            for k, n in enumerate(p.n_modes):
                with m.Case(k):
                    m.d.comb += ok_end.eq(credits >= 2 * dmax + p.drain_cycles(n))
        m.d.sync += cred_ok.eq(Mux(ends_r, ok_end, credits >= 2 * dmax))
        return m


class _Beat:
    """The beat's fields as separate signals (``wval``/``widx`` one per chain)."""

    def __init__(self, p: EngineParams) -> None:
        lay = p.beat_layout
        self.act = Signal(lay["act"].shape, name="b_act")
        self.wval = [
            Signal(lay["wval"].shape.elem_shape, name=f"b_wval{c}") for c in range(p.chains)
        ]
        self.widx = [
            Signal(lay["widx"].shape.elem_shape, name=f"b_widx{c}") for c in range(p.chains)
        ]
        for name in ("nsel", "wsel", "last", "raw", "paddr", "wgrp", "glast", "tmult", "tshift"):
            if name in {n for n, _ in lay}:
                setattr(self, name, Signal(lay[name].shape, name=f"b_{name}"))


def _unpack_beat(m: Module, p: EngineParams, payload: data.View) -> _Beat:
    """Split the (wide) beat payload into its fields in one assignment: every reference to
    a signal costs Amaranth's netlist builder time in proportion to its width, so a
    50,000-bit payload sliced once per chain would cost chains x width."""
    b = _Beat(p)
    parts = {"act": [b.act], "wval": b.wval, "widx": b.widx}
    lhs, at = [], 0
    for name, fld in p.beat_layout:
        assert fld.offset == at, name  # fields are packed in declaration order
        lhs += parts.get(name, [getattr(b, name)])
        at += Shape.cast(fld.shape).width
    m.d.comb += Cat(*lhs).eq(payload.as_value())
    return b


@dataclass
class _Capture:
    """The row group captured into the output buffer this cycle (registered one cycle
    ahead from the control pipeline, so the decode does not sit on the buffer's fanout):
    ``cap`` any row group, ``grp`` a weight-grouped one, ``ctl`` its control word."""

    cap: Signal
    grp: Signal
    ctl: Signal


@dataclass
class _Sequencer:
    """The drain sequencer's state (:meth:`ChainEngine._sequencer`)."""

    active: Signal
    tok: Signal
    k_next: Value
    step_last: Value
    paddr: Signal
    raw: Signal
    tmult: Signal | None
    tshift: Signal | None


class ChainEngine(wiring.Component):
    """A DSP-chain engine with valid/ready streams ``i`` (beats), ``p`` (requantization
    parameters) and ``o`` (drain words), and ``gmult`` (group multipliers, valid with the
    beat on ``i``); see the module docstring for timing and layouts.

    ``hier`` (a :class:`~hwflow.hw.hier.Hierarchy`) turns the leaves into Instances of
    modules named ``<prefix>_slice``, ``<prefix>_drain``, ``<prefix>_rq`` (Verilog output);
    without it they are plain submodules (Amaranth's simulator)."""

    def __init__(
        self, params: EngineParams, hier: Hierarchy | None = None, prefix: str = "hwflow"
    ) -> None:
        self.params, self.hier, self.prefix = params, hier, prefix
        try:
            params.check_ports()
        except UnsupportedError:
            self._MustUse__silence = True  # never elaborated: no unused warning
            raise
        super().__init__(
            {
                "i": In(stream.Signature(params.beat_layout)),
                "gmult": In(params.gmult_layout),
                "p": In(stream.Signature(params.params_layout)),
                "o": Out(stream.Signature(params.result_layout)),
            }
        )

    def elaborate(self, platform: object) -> Module:
        """Issue and control pipeline, chains with their group stage, capture and drain of the
        output buffer, requantizers into the output FIFO (one method each)."""
        m = Module()
        beat = _unpack_beat(m, self.params, self.i.payload)
        ctl = self._control(m, beat)
        slices = self._chains(m, beat, ctl)
        cap = self._capture(m, ctl)
        seq = self._sequencer(m, cap)
        heads = self._buffer(m, slices, cap, seq)
        self._requantize(m, heads, cap, seq)
        return m

    def _control(self, m: Module, beat: _Beat) -> list[Signal]:
        """The issue logic (the only place that ever says "wait") and the control pipeline:
        ``ctl[d]`` describes the beat handed over d + 1 cycles ago."""
        p = self.params
        m.submodules.issue = issue = _Issue(p)
        take = self.i.valid & self.i.ready
        m.d.comb += [
            issue.valid.eq(self.i.valid),
            issue.last.eq(beat.last),
            issue.wgrp.eq(beat.wgrp),
            issue.glast.eq(beat.glast),
            issue.nsel.eq(beat.nsel),
            self.i.ready.eq(issue.ready),
            issue.word_out.eq(self.o.valid & self.o.ready),
        ]
        ctl = [
            Signal(_ctl_layout(p), name=f"ctl{d}") for d in range(p.chain_length + 3 + GROUP_STAGES)
        ]
        m.d.sync += [
            ctl[0].valid.eq(take),
            ctl[0].first.eq(issue.first),
            ctl[0].gfirst.eq(issue.gfirst),
            ctl[0].wgrp.eq(beat.wgrp),
            ctl[0].glast.eq(beat.glast | beat.last),
            ctl[0].last.eq(beat.last),
            ctl[0].raw.eq(beat.raw),
            ctl[0].nsel.eq(beat.nsel),
            ctl[0].paddr.eq(beat.paddr),
        ]
        if p.per_token:
            m.d.sync += [ctl[0].tmult.eq(beat.tmult), ctl[0].tshift.eq(beat.tshift)]
        for d in range(1, len(ctl)):
            m.d.sync += ctl[d].eq(ctl[d - 1])
        return ctl

    def _gmult_line(self, m: Module) -> list[Signal]:
        """Each chain's group multipliers (the ``gmult`` port, split per chain in one
        assignment), delayed with their beat to the chain's end plus the partial's register
        and the multiply's cycle."""
        p = self.params
        gw = p.gmult_layout.elem_shape
        line = [Signal(gw, name=f"gm_in{c}") for c in range(p.chains)]
        m.d.comb += Cat(*line).eq(self.gmult.as_value())
        for d in range(3 + p.chain_length + GROUP_STAGES - 1):
            nxt = [Signal(gw, name=f"gmd{d}_{c}", reset_less=True) for c in range(p.chains)]
            m.d.sync += [n.eq(g) for n, g in zip(nxt, line, strict=True)]
            line = nxt
        return line

    def _chains(self, m: Module, beat: _Beat, ctl: list[Signal]) -> list[ChainSlice]:
        """The chain slices with what they share: the clamped activations, the dense flag,
        the segment-end accumulator enables and the group stage's control, each registered
        from the control word one stage ahead (``ctl[d]`` is ``ctl[d - 1]`` a cycle later),
        so no decode sits between a register and the slices' fanout."""
        p = self.params
        c_len = p.chain_length
        # per segment end j: accumulate when the beat at stage j ends a segment at its N
        ends = len(p.seg_ends)
        acc_en, acc_first = Signal(ends), Signal(ends)
        for e, j in enumerate(p.seg_ends):
            cj = ctl[2 + j]  # ctl[3 + j] one cycle ahead
            end = _by_mode(m, cj.nsel, p, {n: (j + 1) % n == 0 for n in p.n_modes})
            m.d.sync += [acc_en[e].eq(cj.valid & end), acc_first[e].eq(cj.first)]
        # weight groups: the beat whose deskewed accumulators are complete (ctl[3 + C]) has
        # its group partials registered, multiplied a cycle later (M), accumulated a cycle
        # after that (P)
        cq_ahead, cm_ahead = ctl[3 + c_len], ctl[4 + c_len]
        gmul, gacc, gfirst = Signal(), Signal(), Signal()
        m.d.sync += [
            gmul.eq(cq_ahead.valid & cq_ahead.wgrp & cq_ahead.glast),
            gacc.eq(cm_ahead.valid & cm_ahead.wgrp & cm_ahead.glast),
            gfirst.eq(cm_ahead.gfirst),
        ]
        gmult = self._gmult_line(m)
        # activations (clamped for the dual-INT8 pre-adder), dense flag: shared by all chains
        act = Signal(p.beat_layout["act"].shape)
        for t in range(p.rows):
            for i in range(p.m):
                a = beat.act[t][i]
                m.d.comb += act[t][i].eq(
                    Mux(a < DUAL_ACT_MIN, DUAL_ACT_MIN, a) if p.dual_int8 else a
                )
        dense = _by_mode(m, beat.nsel, p, {n: n == p.m for n in p.n_modes})
        slices = []
        for c in range(p.chains):
            sl = place(m, self.hier, f"chain{c}", f"{self.prefix}_slice", lambda: ChainSlice(p))
            m.d.comb += [
                sl.act.eq(act),
                sl.wval.eq(beat.wval[c]),
                sl.widx.eq(beat.widx[c]),
                sl.wsel.eq(beat.wsel),
                sl.dense.eq(dense),
                sl.acc_en.eq(acc_en),
                sl.acc_first.eq(acc_first),
                sl.gsel.eq(ctl[3 + c_len].nsel),
                sl.gmult.eq(gmult[c]),
                sl.gmul.eq(gmul),
                sl.gacc.eq(gacc),
                sl.gfirst.eq(gfirst),
            ]
            slices.append(sl)
        return slices

    def _capture(self, m: Module, ctl: list[Signal]) -> _Capture:
        """An ungrouped row group is captured when its last beat's accumulators are complete
        (``ctl[3 + C]``), a grouped one :data:`~hwflow.costs.GROUP_STAGES` later, after its
        group multiply and accumulate; registered from the words one stage ahead."""
        c_len = self.params.chain_length
        cq, cg = ctl[2 + c_len], ctl[2 + c_len + GROUP_STAGES]
        cap_n, cap_g = cq.valid & cq.last & ~cq.wgrp, cg.valid & cg.last & cg.wgrp
        out = _Capture(Signal(), Signal(), Signal(_ctl_layout(self.params)))
        m.d.sync += [
            out.cap.eq(cap_n | cap_g),
            out.grp.eq(cap_g),
            out.ctl.eq(Mux(cap_g, cg, cq)),
        ]
        return out

    def _sequencer(self, m: Module, cap: _Capture) -> _Sequencer:
        """The drain sequencer: step (tok, k) drains lanes k*R .. k*R+R-1 of token lane tok."""
        p = self.params
        depth, cc = p.drain_depth, cap.ctl
        lay = p.beat_layout
        seq = _Sequencer(
            active=Signal(),
            tok=Signal(range(max(2, p.rows))),
            k_next=Value.cast(0),
            step_last=Value.cast(0),
            paddr=Signal(lay["paddr"].shape),
            raw=Signal(),
            tmult=Signal(lay["tmult"].shape) if p.per_token else None,
            tshift=Signal(lay["tshift"].shape) if p.per_token else None,
        )
        k = Signal(range(max(2, depth)))
        kmask = Signal(range(max(2, depth)))
        wrap = k == kmask
        seq.step_last = wrap & (seq.tok == p.rows - 1)
        seq.k_next = Mux(wrap, 0, k + 1)
        kmax = {n: p.rows_per_beat(n) // p.requantizers - 1 for n in p.n_modes}
        with m.If(cap.cap):
            m.d.sync += [
                seq.active.eq(1),
                seq.tok.eq(0),
                k.eq(0),
                kmask.eq(_by_mode(m, cc.nsel, p, kmax, len(kmask))),
                seq.paddr.eq(cc.paddr),
                seq.raw.eq(cc.raw),
            ]
            if p.per_token:
                m.d.sync += [seq.tmult.eq(cc.tmult), seq.tshift.eq(cc.tshift)]
        with m.Elif(seq.active):
            m.d.sync += k.eq(seq.k_next)
            with m.If(wrap):
                m.d.sync += seq.tok.eq(seq.tok + 1)
            with m.If(seq.step_last):
                m.d.sync += seq.active.eq(0)
        return seq

    def _buffer(
        self, m: Module, slices: list[ChainSlice], cap: _Capture, seq: _Sequencer
    ) -> list[list[Value]]:
        """The output buffer: column (t, r) position q holds lane q*R + r of token lane t,
        segment s = (q*R + r) // chains of chain (q*R + r) % chains; the columns' heads."""
        p = self.params
        r_n = p.requantizers
        first_cand = [0]
        for cases in _slot_cases(p):
            first_cand.append(first_cand[-1] + len(cases))
        heads = []
        for t in range(p.rows):
            row = []
            for r in range(r_n):
                col = place(
                    m, self.hier, f"drain{t}_{r}", f"{self.prefix}_drain", lambda: DrainColumn(p)
                )
                at = 0
                for q in range(p.drain_depth):
                    s, c = divmod(q * r_n + r, p.chains)
                    for i in range(len(_slot_cases(p)[s])):
                        m.d.comb += col.cand[at].eq(slices[c].seg[t][first_cand[s] + i])
                        at += 1
                    m.d.comb += col.gcand[q].eq(slices[c].gseg[t][s])
                m.d.comb += [
                    col.sel.eq(cap.ctl.nsel),
                    col.grp.eq(cap.grp),
                    col.load.eq(cap.cap),
                    col.shift.eq(seq.active & (seq.tok == t)),
                ]
                row.append(col.head)
            heads.append(row)
        return heads

    def _requantize(
        self, m: Module, heads: list[list[Value]], cap: _Capture, seq: _Sequencer
    ) -> None:
        """The parameter memory (word (entry, chunk) at ``entry * chunks + chunk``, read one
        cycle before its drain step), the R requantizers and the output FIFO."""
        p = self.params
        r_n = p.requantizers
        pw = self.p.payload
        ram = _ParamRam(p, self.hier)
        m.submodules.params = ram
        cc = cap.ctl
        m.d.comb += [
            self.p.ready.eq(1),
            ram.waddr.eq(pw.addr * p.param_chunks + pw.chunk),
            ram.wdata.mult.eq(pw.mult),
            ram.wdata.shift.eq(pw.shift),
            ram.wdata.bias.eq(pw.bias),
            ram.we.eq(self.p.valid),
            ram.raddr.eq(
                Mux(cap.cap, cc.paddr * p.param_chunks, seq.paddr * p.param_chunks + seq.k_next)
            ),
        ]
        # the read word split into per-lane signals in one assignment (see _unpack_beat)
        lanes = {
            f: [Signal(_entry_layout(p)[f].shape.elem_shape, name=f"rd_{f}{r}") for r in range(r_n)]
            for f in ("mult", "shift", "bias")
        }
        m.d.comb += Cat(*lanes["mult"], *lanes["shift"], *lanes["bias"]).eq(ram.rdata)
        fifo = SyncFIFOBuffered(width=Shape.cast(p.result_layout).width, depth=p.fifo_depth)
        m.submodules.fifo = fifo
        word = Signal(p.result_layout)
        for r in range(r_n):
            rq = place(
                m,
                self.hier,
                f"rq{r}",
                f"{self.prefix}_rq",
                lambda: Requantizer(acc_bits=p.acc_bits, per_token=p.per_token),
            )
            if p.per_token:
                m.d.comb += [rq.mult_t.eq(seq.tmult[seq.tok]), rq.shift_t.eq(seq.tshift[seq.tok])]
            head = heads[0][r]
            for t in range(1, p.rows):
                head = Mux(seq.tok == t, heads[t][r], head)
            m.d.comb += [
                rq.acc.eq(head),
                rq.bias.eq(lanes["bias"][r]),
                rq.mult.eq(lanes["mult"][r]),
                rq.shift.eq(lanes["shift"][r]),
                rq.raw.eq(seq.raw),
                word.data[r].eq(rq.out),
            ]
        # valid, last and raw of each step, delayed through the requantizer's stages
        v_d, l_d, raw_d = seq.active, seq.step_last, seq.raw
        for i in range(Requantizer.registers(p.per_token)):
            nv, nl, nr = Signal(name=f"v{i}"), Signal(name=f"l{i}"), Signal(name=f"w{i}")
            m.d.sync += [nv.eq(v_d), nl.eq(l_d), nr.eq(raw_d)]
            v_d, l_d, raw_d = nv, nl, nr
        m.d.comb += [
            word.last.eq(l_d),
            word.raw.eq(raw_d),
            fifo.w_data.eq(word),
            fifo.w_en.eq(v_d),
            self.o.valid.eq(fifo.r_rdy),
            self.o.payload.eq(fifo.r_data),
            fifo.r_en.eq(self.o.ready),
        ]


class MatrixVectorEngine(ChainEngine):
    """The decode engine: one token lane (``hw.mv``)."""

    def __init__(
        self, params: EngineParams, hier: Hierarchy | None = None, prefix: str = "hwflow"
    ) -> None:
        if params.kind != "mv" or params.rows != 1:
            self._MustUse__silence = True  # never elaborated: no unused warning
            raise UnsupportedError(f"MatrixVectorEngine needs mv params, got {params.kind!r}")
        super().__init__(params, hier, prefix)

    @classmethod
    def from_preset(cls, hw: HardwarePreset, chains: int | None = None) -> MatrixVectorEngine:
        return cls(EngineParams.from_preset(hw, "mv", chains))


class MatrixMatrixEngine(ChainEngine):
    """The prefill engine: ``hw.mpe.rows`` token lanes share each weight beat."""

    def __init__(
        self, params: EngineParams, hier: Hierarchy | None = None, prefix: str = "hwflow"
    ) -> None:
        if params.kind != "mpe":
            self._MustUse__silence = True  # never elaborated: no unused warning
            raise UnsupportedError(f"MatrixMatrixEngine needs mpe params, got {params.kind!r}")
        super().__init__(params, hier, prefix)

    @classmethod
    def from_preset(cls, hw: HardwarePreset, chains: int | None = None) -> MatrixMatrixEngine:
        return cls(EngineParams.from_preset(hw, "mpe", chains))
