"""The matmul unit of the RTL machine (issue 7): one MM or MV instruction at a time around a
DSP-chain engine (:mod:`hwflow.hw.engine`), reading its operands from the on-chip buffers and
writing the results back, bit for bit as :meth:`hwflow.funcsim.FuncSim._matmul` does, at the
engine's pace where the buffer ports allow.

Interface (seams 1 and 2 of issue 7): ``cmd`` (a stream of :func:`~hwflow.hw.machine.decode.
cmd_layout` of the unit: the resolved instruction), ``done`` (one pulse per instruction, after
its last buffer write is visible), ``busy``; per buffer one read port ``rd_<buf>`` and one
write port ``wr_<buf>`` (:mod:`hwflow.hw.machine.mmu_ports`).

Parts, each owning one job:

* :class:`~hwflow.hw.machine.mmu_setup.Instr`: the command register and what is derived from
  it (N mode, rows per group, record sizes, tile section offsets);
* :class:`~hwflow.hw.machine.mmu_feed.Feed`: operand streams (per token lane, per weight
  reader) of pipelined part reads into FIFOs, assembled into one engine beat per cycle;
  linear/head read the weight tile's beat records in order
  (:class:`hwflow.compiler.layout.BeatGeometry`), qk per beat the row group's K-row blocks
  (one span when they fit a buffer word), pv per beat N consecutive keys' pieces of the
  group's V columns (one span when they fit): pv runs on the chain's N:M datapath at
  :func:`hwflow.costs.pv_nm`'s N, since V sits key-major in the KV buffer (its weight rows,
  V's columns, are strided a key apart): each beat carries N keys for ``chains * C / N``
  columns, the in-block indices select those keys' probabilities, M/N beats share an
  activation block;
* the engine runs raw (accumulators out);
* :class:`~hwflow.hw.machine.mmu_post.Post`: the drain: parameters fetched ahead
  (:class:`~hwflow.hw.machine.mmu_post.ParamFetch`), the numerics contract's two-stage
  requantization (:func:`hwflow.numerics.linear_out`: row stage with the A rows' factors or
  the unit factor and the guard, INT32 bias, channel stage to 8, 16 or 32 bits; qk
  :func:`hwflow.numerics.requantize`), pipelined R values per cycle, into the
  :class:`~hwflow.hw.machine.mmu_write.WriteCombiner`.

pv's UINT8 probabilities: the MV engine gets a 9-bit activation lane
(:attr:`hwflow.hw.params.EngineParams.act_bits`); the dual-INT8 MM engine cannot have one (the
packed ``a << F`` would outgrow the DSP48E2's 27-bit pre-adder), so it runs pv bit-sliced: one
token per pass, its two INT8 token lanes carrying ``p >> 1`` and ``p & 1`` of the same
probabilities, combined as ``2 * lane0 + lane1`` (exact): pv on MM takes twice the passes
:func:`hwflow.costs.matmul_cost` charges.

Cycles: ``sim/mmu_bench.py`` measures every instruction against
:func:`hwflow.costs.matmul_cost`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out, connect, flipped

from hwflow.compiler.layout import BeatGeometry
from hwflow.config import HardwarePreset
from hwflow.errors import UnsupportedError
from hwflow.hw.engine import MatrixMatrixEngine, MatrixVectorEngine
from hwflow.hw.hier import Hierarchy
from hwflow.hw.machine.decode import cmd_layout
from hwflow.hw.machine.mmu_feed import Feed
from hwflow.hw.machine.mmu_ports import ReadPort, WritePort
from hwflow.hw.machine.mmu_post import Post
from hwflow.hw.machine.mmu_read import arbitrate_reads
from hwflow.hw.machine.mmu_setup import Instr
from hwflow.hw.params import EngineParams
from hwflow.isa import Buf, Unit

__all__ = ["MatmulUnit", "buffer_words", "unit_design"]


def buffer_words(hw: HardwarePreset, word_bytes: int) -> dict[Buf, int]:
    """Words of each on-chip buffer of ``hw`` at ``word_bytes`` bytes per word."""
    return {b: hw.buffers.bytes(b.name.lower()) // word_bytes for b in Buf}


class MatmulUnit(wiring.Component):
    """The MM (``kind="mpe"``) or MV (``kind="mv"``) unit of ``hw``; ``word_bytes`` per
    buffer word (every buffer the same; default one HBM port beat)."""

    def __init__(
        self,
        hw: HardwarePreset,
        kind: Literal["mv", "mpe"],
        word_bytes: int | None = None,
        hier: Hierarchy | None = None,
    ) -> None:
        self.hier = hier  # the engine's leaves as module instances (hwflow.hw.hier)
        ep = EngineParams.from_preset(hw, kind)
        # pv multiplies UINT8 probabilities: a 9-bit activation lane where the engine allows
        # it (no dual-INT8 packing), else bit-sliced (see the module doc)
        self.ep = ep if ep.dual_int8 else replace(ep, act_bits=9)
        self.split_pv = self.ep.act_bits == 8
        self.kind = kind
        self.wb = word_bytes or hw.hbm.port_bits // 8
        self._check(hw)
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

    def _check(self, hw: HardwarePreset) -> None:
        """UnsupportedError for an engine shape the unit cannot feed from ``wb``-byte words."""
        ep, wb = self.ep, self.wb
        if 8 not in ep.weight_bits:
            raise UnsupportedError(f"{hw.name}: the matmul unit feeds INT8 weights (weight_bits)")
        if ep.chain_length % ep.m or ep.m > wb or wb & (wb - 1) or ep.m & (ep.m - 1):
            raise UnsupportedError(
                f"{hw.name}: the unit needs an M-block ({ep.m}, a power of two) dividing the "
                f"chain and fitting one buffer word ({wb} bytes, a power of two)"
            )
        geo = BeatGeometry.from_preset(hw)
        if geo.chains != ep.chains or any(
            ep.rows_per_beat(n) & (ep.rows_per_beat(n) - 1) for n in ep.n_modes
        ):
            raise UnsupportedError(
                f"{hw.name} {self.kind}: the unit reads one tile record per beat, so the "
                f"engine's chains ({ep.chains}) must be a stripe ({geo.chains}) and every row "
                "group a power of two"
            )
        nslot = ep.chains * ep.chain_length
        if nslot > wb or 4 * ep.requantizers > wb or nslot * ep.index_bits > 8 * wb:
            raise UnsupportedError(
                f"{hw.name}: a beat's INT8 weights ({nslot} bytes), its indices or a drain "
                f"word of INT32 results exceed one {wb}-byte buffer word"
            )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        ep = self.ep
        cls = MatrixVectorEngine if self.kind == "mv" else MatrixMatrixEngine
        eng = cls(ep, self.hier, f"hwflow_{self.kind}")
        m.submodules.engine = eng
        ins = Instr(ep, self.cmd.payload.shape(), self.split_pv, self.wb)
        feed, post = Feed(ins, self.words, self.wb), Post(ins, self.words, self.wb)
        running = Signal()
        accept = self.cmd.valid & self.cmd.ready
        m.d.comb += self.cmd.ready.eq(~running)
        with m.If(accept):
            ins.load(m, self.cmd.payload)
        ins.sections(m)
        # the loops start with the command (their first step reads the registers after it)
        p = self.cmd.payload
        go = (p.rows != 0) & (p.cols != 0)
        feed.build(m, eng, accept, go & (p.k != 0))
        post.build(m, eng, accept, go)
        pg, urgent = post.fetch.pg, post.urgent
        arbitrate_reads(m, self, [post.fetch.rd, (pg, urgent), *feed.readers, (pg, ~urgent)])
        for b in Buf:
            n = f"wr_{b.name.lower()}"
            connect(m, flipped(getattr(self, n)), getattr(post.comb, n))
        done = Signal()
        m.d.comb += done.eq(running & post.finished)
        with m.If(accept):
            m.d.sync += running.eq(1)
        with m.Elif(done):
            m.d.sync += running.eq(0)
        m.d.comb += [self.done.eq(done), self.busy.eq(running)]
        return m


def unit_design(
    hw: HardwarePreset, kind: Literal["mv", "mpe"], word_bytes: int | None = None
) -> tuple[str, str, float]:
    """(top module name, Verilog text, generation seconds) of ``hw``'s ``kind`` matmul unit
    with ``word_bytes`` per buffer word (default one HBM port beat): what
    :func:`hwflow.hw.cosim.run_bench` builds for ``sim/mmu_bench.py``."""
    import re
    import time

    from amaranth.back import verilog

    from hwflow.hw.machine.verilog import fast_generation

    t0 = time.perf_counter()
    unit = MatmulUnit(hw, kind, word_bytes)
    base = re.sub(r"\W", "_", hw.name)
    name = f"hwflow_{base}_{kind}_unit" + ("" if word_bytes is None else f"_w{unit.wb}")
    with fast_generation():
        text = verilog.convert(unit, name=name, emit_src=False)
    return name, text, time.perf_counter() - t0
