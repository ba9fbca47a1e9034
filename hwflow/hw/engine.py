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
previous end's accumulators, formed as the results enter the requantizer.

Cycle by cycle, for a beat handed over in cycle t:

====================  =======================================================================
t+1                   operand stage: weights widened (INT2/3/4/8 -> INT8), indices decoded,
                      activations selected through the index mux (per slot and token lane)
t+2+j                 stage j's A/B(/D) input registers, after a systolic skew of j cycles
t+3+j                 stage j's M (product) register
t+4+j                 stage j's P register: ``P[j-1] + M`` (cascade, PCIN; a prefix sum)
t+5+j                 accumulator at each possible segment end j: ``(first ? 0 : acc) + P[j]``
t+4+C                 deskewed: every accumulator delayed to the chain's end
t+5+C .. t+7+C        reduction + requantizer: ``acc[end] - acc[previous end] + bias``,
                      multiply, round/shift/saturate -> output register
====================  =======================================================================

So a row group's results leave ``C + 7`` cycles (:func:`hwflow.costs.chain_latency`) after
its last beat, whatever N is, and one beat enters per cycle: an op of ``beats`` beats takes
``beats + C + 7`` cycles from its first beat to its last result (inclusive), the next op can
start right behind it. Output lane ``l`` of a row group at N is segment ``l % (C/N)`` of chain
``l // (C/N)``; lanes past ``chains*C/N`` are zero. Token lane 0 leaves accumulator-wide (raw
ops: the LM head's logits), the other token lanes as INT8.

Requantization parameters (multiplier, shift, bias per lane) live in an on-chip parameter
memory of ``param_depth`` row-group entries (sized from the preset's parameter buffer), written
through the ``p`` stream one chunk of lanes per beat; a row group's last beat names its entry
(``paddr``), read as its results enter the requantizer. Loading entries ahead of use, and not
overwriting one still in flight, is the driver's job (as for every on-chip buffer), so the
parameters never throttle the chain.

Flow control: the output register holds a result until ``o.ready``. While a new result meets
a full, refused output register, the whole pipeline stalls (one clock enable, the DSPs' CE
pins) and ``i.ready`` and ``p.ready`` are low; the output register has its own enable, so a
result leaves it even during a stall. An idle input (``i.valid`` low) lets a bubble through. ``first`` is implicit: the beat after a ``last`` beat (or after reset) starts
a new row group.
"""

from __future__ import annotations

from amaranth.hdl import Elaboratable, EnableInserter, Module, Mux, Signal, Value, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hwflow.config import HardwarePreset
from hwflow.errors import UnsupportedError
from hwflow.hw.dsp import DspChain, unpack_dual
from hwflow.hw.params import EngineParams
from hwflow.hw.requant import Requantizer
from hwflow.hw.widen import WeightWidener

__all__ = ["ChainEngine", "MatrixMatrixEngine", "MatrixVectorEngine"]


def _ctl_layout(p: EngineParams) -> data.StructLayout:
    return data.StructLayout(
        {
            "valid": 1,
            "first": 1,
            "last": 1,
            "raw": 1,
            "nsel": p.beat_layout["nsel"].shape,
            "paddr": p.beat_layout["paddr"].shape,
        }
    )


def _entry_layout(p: EngineParams) -> data.StructLayout:
    """One parameter-memory word: the parameters of ``param_chunk`` lanes."""
    return data.StructLayout(
        {name: p.params_layout[name].shape for name in ("mult", "shift", "bias")}
    )


def _by_mode(m: Module, nsel: Value, p: EngineParams, pred: dict[int, bool]) -> Signal:
    """A 1-bit signal that is ``pred[N]`` for the selected N mode (constant per mode)."""
    out = Signal()
    with m.Switch(nsel):
        for k, n in enumerate(p.n_modes):
            with m.Case(k):
                m.d.comb += out.eq(int(pred[n]))
        with m.Default():  # an nsel past the modes: no reduction point, no segment end
            m.d.comb += out.eq(0)
    return out


class _Datapath(Elaboratable):
    """The pipeline of :class:`ChainEngine`; every register moves only when not stalled."""

    def __init__(self, p: EngineParams) -> None:
        self.p = p
        self.beat = Signal(p.beat_layout)
        self.beat_valid = Signal()
        self.first = Signal()
        self.pw = Signal(p.params_layout)  # parameter-memory write
        self.pw_en = Signal()
        self.result = Signal(p.result_layout)  # into the output register (comb)
        self.out_valid = Signal()

    def elaborate(self, platform: object) -> Module:
        m = Module()
        p = self.p
        c_len, mb, lb = p.chain_length, p.m, p.index_bits
        # control pipeline: ctl[d] describes the beat handed over d + 1 cycles ago
        ctl = [Signal(_ctl_layout(p), name=f"ctl{d}") for d in range(c_len + 6)]
        m.d.sync += [
            ctl[0].valid.eq(self.beat_valid),
            ctl[0].first.eq(self.first),
            ctl[0].last.eq(self.beat.last),
            ctl[0].raw.eq(self.beat.raw),
            ctl[0].nsel.eq(self.beat.nsel),
            ctl[0].paddr.eq(self.beat.paddr),
        ]
        for d in range(1, len(ctl)):
            m.d.sync += ctl[d].eq(ctl[d - 1])

        # operand stage: implicit (dense) indices are shared by all chains
        dense = _by_mode(m, self.beat.nsel, p, {n: n == mb for n in p.n_modes})
        groups = p.rows // 2 if p.dual_int8 else p.rows
        final: list[list[dict[int, Signal]]] = []  # [chain][token] {segment end j: deskewed acc}
        for c in range(p.chains):
            wid = WeightWidener(slots=c_len, bits=p.weight_bits)
            m.submodules[f"widen{c}"] = wid
            m.d.comb += [wid.packed.eq(self.beat.wval[c]), wid.sel.eq(self.beat.wsel)]
            dsp = [
                DspChain(length=c_len, acc_bits=p.acc_bits, dual=p.dual_int8, field=p.dual_field)
                for _ in range(groups)
            ]
            for g, ch in enumerate(dsp):
                m.submodules[f"chain{c}_{g}"] = ch
            for i in range(c_len):
                idx = Mux(dense, i % mb, self.beat.widx[c][i * lb : (i + 1) * lb])
                w = Signal(signed(8), name=f"w{c}_{i}", reset_less=True)
                m.d.sync += w.eq(wid.values[i])
                acts = []
                for t in range(p.rows):
                    a = Signal(signed(8), name=f"a{c}_{i}_{t}", reset_less=True)
                    m.d.sync += a.eq(self.beat.act[t][idx])
                    acts.append(a)
                for g, ch in enumerate(dsp):
                    m.d.comb += ch.b[i].eq(w)
                    if p.dual_int8:
                        m.d.comb += [ch.a[i].eq(acts[2 * g]), ch.d[i].eq(acts[2 * g + 1])]
                    else:
                        m.d.comb += ch.a[i].eq(acts[g])

            # accumulators of prefix sums at segment ends, then deskew to the chain's end
            per_token: list[dict[int, Signal]] = [{} for _ in range(p.rows)]
            for j in p.seg_ends:
                cj = ctl[3 + j]
                end = _by_mode(m, cj.nsel, p, {n: (j + 1) % n == 0 for n in p.n_modes})
                sums: list[tuple[int, Value]] = []
                for g, ch in enumerate(dsp):
                    if p.dual_int8:
                        hi, lo = unpack_dual(ch.p[j], p.dual_field)
                        sums += [(2 * g, hi), (2 * g + 1, lo)]
                    else:
                        sums.append((g, ch.p[j]))
                for t, s in sums:
                    acc = Signal(signed(p.acc_bits), name=f"acc{c}_{t}_{j}", reset_less=True)
                    with m.If(cj.valid & end):
                        m.d.sync += acc.eq(Mux(cj.first, 0, acc) + s)
                    for k in range(c_len - 1 - j):
                        nxt = Signal(
                            signed(p.acc_bits), name=f"dsk{c}_{t}_{j}_{k}", reset_less=True
                        )
                        m.d.sync += nxt.eq(acc)
                        acc = nxt
                    per_token[t][j] = acc
            final.append(per_token)

        # requantization parameter memory: one bank per chunk of lanes, read one cycle before
        # the results reach the requantizer
        banks = []
        for k in range(p.param_chunks):
            mem = Memory(shape=_entry_layout(p), depth=p.param_depth, init=[])
            m.submodules[f"params{k}"] = mem
            wp = mem.write_port()
            rp = mem.read_port()
            m.d.comb += [
                wp.addr.eq(self.pw.addr),
                wp.data.mult.eq(self.pw.mult),
                wp.data.shift.eq(self.pw.shift),
                wp.data.bias.eq(self.pw.bias),
                wp.en.eq(self.pw_en & (self.pw.chunk == k)),
                rp.addr.eq(ctl[2 + c_len].paddr),
            ]
            banks.append(rp.data)

        # lane compaction and requantization
        cq, co = ctl[3 + c_len], ctl[5 + c_len]
        for t in range(p.rows):
            for lane in range(p.lanes):
                rq = Requantizer(acc_bits=p.acc_bits)
                m.submodules[f"rq{t}_{lane}"] = rq
                with m.Switch(cq.nsel):
                    for k, n in enumerate(p.n_modes):
                        per = c_len // n
                        if lane < p.chains * per:
                            c, s = divmod(lane, per)
                            end = final[c][t][s * n + n - 1]
                            # reduction point: segment = prefix(end) - prefix(previous end)
                            seg = end - final[c][t][s * n - 1] if s else end
                            with m.Case(k):
                                m.d.comb += rq.acc.eq(seg)
                    with m.Default():  # lanes past chains*C/N carry zero
                        m.d.comb += rq.acc.eq(0)
                word, at = banks[lane // p.param_chunk], lane % p.param_chunk
                m.d.comb += [
                    rq.bias.eq(word.bias[at]),
                    rq.mult.eq(word.mult[at]),
                    rq.shift.eq(word.shift[at]),
                    rq.raw.eq(cq.raw),
                ]
                if t == 0:
                    m.d.comb += self.result.acc[lane].eq(rq.out)
                else:  # INT8 only; a raw op has one token
                    m.d.comb += self.result.data[t - 1][lane].eq(Mux(co.raw, 0, rq.out[:8]))
        m.d.comb += [
            self.result.raw.eq(co.raw),
            self.out_valid.eq(co.valid & co.last),
        ]
        return m


class ChainEngine(wiring.Component):
    """A DSP-chain engine with valid/ready streams ``i`` (beats), ``p`` (requantization
    parameters) and ``o`` (results); see the module docstring for timing and layouts."""

    def __init__(self, params: EngineParams) -> None:
        self.params = params
        try:
            params.check_ports()
        except UnsupportedError:
            self._MustUse__silence = True  # never elaborated: no unused warning
            raise
        super().__init__(
            {
                "i": In(stream.Signature(params.beat_layout)),
                "p": In(stream.Signature(params.params_layout)),
                "o": Out(stream.Signature(params.result_layout)),
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        dp = _Datapath(self.params)
        stall = Signal()
        # output register (the requantizer's third stage), outside the stalled pipeline so
        # that a result handed over leaves it even while the pipeline waits for `p`
        obuf_valid = Signal()
        obuf = Signal(self.params.result_layout, reset_less=True)
        m.d.comb += [
            stall.eq(dp.out_valid & obuf_valid & ~self.o.ready),
            self.i.ready.eq(~stall),
            self.p.ready.eq(~stall),
            self.o.valid.eq(obuf_valid),
            self.o.payload.eq(obuf),
            dp.beat.eq(self.i.payload),
            dp.beat_valid.eq(self.i.valid),
            dp.pw.eq(self.p.payload),
            dp.pw_en.eq(self.p.valid),
        ]
        # the first beat of a row group is the one after a `last` beat
        after_last = Signal(init=1)
        m.d.comb += dp.first.eq(after_last)
        with m.If(self.i.valid & ~stall):
            m.d.sync += after_last.eq(self.i.payload.last)
        with m.If(dp.out_valid & ~stall):
            m.d.sync += [obuf.eq(dp.result), obuf_valid.eq(1)]
        with m.Elif(self.o.ready):
            m.d.sync += obuf_valid.eq(0)
        m.submodules.dp = EnableInserter(~stall)(dp)
        return m


class MatrixVectorEngine(ChainEngine):
    """The decode engine: one token lane (``hw.mv``)."""

    def __init__(self, params: EngineParams) -> None:
        if params.kind != "mv" or params.rows != 1:
            self._MustUse__silence = True  # never elaborated: no unused warning
            raise UnsupportedError(f"MatrixVectorEngine needs mv params, got {params.kind!r}")
        super().__init__(params)

    @classmethod
    def from_preset(cls, hw: HardwarePreset, chains: int | None = None) -> MatrixVectorEngine:
        return cls(EngineParams.from_preset(hw, "mv", chains))


class MatrixMatrixEngine(ChainEngine):
    """The prefill engine: ``hw.mpe.rows`` token lanes share each weight beat."""

    def __init__(self, params: EngineParams) -> None:
        if params.kind != "mpe":
            self._MustUse__silence = True  # never elaborated: no unused warning
            raise UnsupportedError(f"MatrixMatrixEngine needs mpe params, got {params.kind!r}")
        super().__init__(params)

    @classmethod
    def from_preset(cls, hw: HardwarePreset, chains: int | None = None) -> MatrixMatrixEngine:
        return cls(EngineParams.from_preset(hw, "mpe", chains))
