"""The special-function unit of the RTL machine: every SFU function of the ISA, bit-exact.

Structure (``lanes`` elements per cycle, the preset's ``sfu.lanes``):

* a *producer* walks the instruction's rows and passes (in the order of
  :mod:`~hwflow.hw.machine.sfu_seq`) and pushes one segment per operand and pass to four
  :class:`~hwflow.hw.machine.sfu_stream.Streamer` s (A, A's RoPE partner half, B, B's second
  half: RoPE's sin rows); the streamers read the buffers ahead of use, taking turns
  (round robin) where they share a buffer's read port;
* a *consumer* takes one group of up to ``lanes`` elements per cycle from the active streams:
  in a statistics pass it updates the row's registers (row maximum, sum of squares, LayerNorm
  row sum, softmax maximum), in the output pass it computes the lanes
  (:mod:`hwflow.hw.machine.sfu_lanes`) and hands the bytes through one output register to
  the :class:`~hwflow.hw.machine.sfu_write.Writer` (the row factor rides in front of a row's
  first group; softmax writes it after the row, once its sum is known);
* the per-row scalars (``(127 << 46) // M``, the norm's ``isqrt``, the reciprocal of the
  softmax sum) run on :class:`~hwflow.hw.machine.sfu_math.Scalar` engines *beside* the
  passes (:mod:`~hwflow.hw.machine.sfu_rows`): the output pass of row ``k - 1`` follows the
  statistics of row ``k``, so a row's scalars overlap the next row's statistics.

Rotated keys' ``ropeq`` / ``ropek`` (issue 14) run as RoPE with INT16 elements whose lanes
feed the Hadamard row buffer (:mod:`~hwflow.hw.machine.sfu_hadamard`), then q's or k's tail
(:mod:`~hwflow.hw.machine.sfu_rot`; a fifth streamer brings ropeq's per-head scales).

Cycles: :func:`hwflow.costs.sfu_op_cost` describes this mechanism (per-row lane groups, the
scalars' exposed part, the fixed fill); ``sim/sfu_bench.py`` holds every instruction to it.

Passes per function equal :func:`hwflow.costs.sfu_passes` with the preset's ``norm_passes``
and ``softmax_passes`` of 2 (the tiny preset's; the structure here is fixed at 2).

Interfaces: seam 1 (``cmd`` stream of :func:`~hwflow.hw.machine.decode.cmd_layout`,
``done`` pulse, ``busy``) and seam 2 (``rd_<buf>`` / ``wr_<buf>`` for every buffer). The
instruction record for a monitor: ``rec_start`` / ``rec_end`` (the unit's cycle counter when
the command was accepted and when ``done`` pulses), valid with ``done``.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hwflow.config import HardwarePreset
from hwflow.costs import SFU_NORM_BITS, SFU_RECIP_BITS, SFU_SCALAR_BITS
from hwflow.hw.machine.decode import cmd_layout
from hwflow.hw.machine.sfu_hadamard import HADAMARD_MAX_DIM, Hadamard
from hwflow.hw.machine.sfu_math import Scalar
from hwflow.hw.machine.sfu_ports import ReadPort, WritePort
from hwflow.hw.machine.sfu_rot import build_rot
from hwflow.hw.machine.sfu_seq import advance
from hwflow.hw.machine.sfu_stream import Streamer
from hwflow.hw.machine.sfu_write import Writer
from hwflow.isa import ROW_FACTOR_BYTES, SFU_FORMATS, SFU_FUNCS, Buf, SfuFunc, Unit

__all__ = ["FUNCS", "Sfu", "buffer_words_bits", "sfu_verilog"]

#: The functions this unit implements: the single-board ones (the tensor-parallel requant,
#: rowmax and qrows of multi-board programs are not built; the unit completes them as no-ops),
#: and rotated keys' ropeq / ropek (decoded apart: :attr:`Sfu.rot`)
FUNCS = ("norm", "softmax", "rope", "silu", "add", "mul", "mov", "reluq")
assert SFU_FUNCS[: len(FUNCS)] == FUNCS, SFU_FUNCS
_F = {name: i for i, name in enumerate(FUNCS)}
_QUANT = ("norm", "mul", "reluq")  #: functions whose output pass quantizes per row


def buffer_words_bits(hw: HardwarePreset, word_bytes: int, buf: Buf) -> int:
    """Word-address width of buffer ``buf`` for ``word_bytes``-byte words."""
    words = max(1, -(-hw.buffers.bytes(buf.name.lower()) // word_bytes))
    return max(1, (words - 1).bit_length())


def _log2(n: int) -> int:
    return n.bit_length() - 1


class Sfu(wiring.Component):
    """The SFU of preset ``hw`` with ``word_bytes``-byte buffer words (all buffers alike)."""

    def __init__(
        self,
        hw: HardwarePreset,
        word_bytes: int,
        scalar_steps: int = SFU_SCALAR_BITS,
        rot_dim: int = HADAMARD_MAX_DIM,
    ) -> None:
        self.hw, self.wb, self.lanes = hw, word_bytes, hw.sfu.lanes
        self.scalar_steps, self.rot_dim = scalar_steps, rot_dim
        ports = {}
        for b in Buf:
            wbits = buffer_words_bits(hw, word_bytes, b)
            ports[f"rd_{b.name.lower()}"] = Out(ReadPort(wbits, word_bytes))
            ports[f"wr_{b.name.lower()}"] = Out(WritePort(wbits, word_bytes))
        super().__init__(
            {
                "cmd": In(stream.Signature(cmd_layout(Unit.SFU))),
                "done": Out(1),
                "busy": Out(1),
                "rec_start": Out(32),
                "rec_end": Out(32),
                **ports,
            }
        )

    # ------------------------------------------------------------------ top
    def elaborate(self, platform: object) -> Module:
        m = Module()
        self.c = c = Signal(cmd_layout(Unit.SFU))
        s = self.streams = [Streamer(self.wb, self.lanes) for _ in range(4)]
        m.submodules.sa0, m.submodules.sa1, m.submodules.sb0, m.submodules.sb1 = s
        m.submodules.sp = self.sp = Streamer(self.wb, self.lanes)  # ropeq's per-head scales
        m.submodules.writer = self.writer = Writer(self.wb, 4 * self.lanes + ROW_FACTOR_BYTES)
        steps = self.scalar_steps
        m.submodules.e1 = self.e1 = Scalar(SFU_RECIP_BITS, 48, steps, roots=False)
        m.submodules.e2 = self.e2 = Scalar(SFU_NORM_BITS, 48, steps)
        m.submodules.e3 = self.e3 = Scalar(16, 12, steps, roots=False)  # qpos // blk
        m.submodules.hadamard = self.hadamard = Hadamard(self.lanes, self.rot_dim)
        self.rot_idle = Signal()
        self._decode(m, c)
        self._route_reads(m)
        self._route_writes(m, c)
        self._producer(m, c)
        self._consumer(m, c)
        build_rot(self, m, c)
        return m

    def _decode(self, m: Module, c: object) -> None:
        """Per-function facts of the latched command, from isa.SFU_FORMATS."""
        self.is_ = {name: Signal(name=f"is_{name}") for name in FUNCS}
        #: rotated keys (:mod:`~hwflow.hw.machine.sfu_rot`): ropeq/ropek run as RoPE (INT16 A)
        #: into the Hadamard row buffer, then q's or k's tail; q's per-head scale
        self.rot, self.rot_k = Signal(), Signal()
        self.rot_mult, self.rot_shift = Signal(16), Signal(6)
        m.d.comb += [
            self.rot.eq((c.func == SfuFunc.ROPEQ) | (c.func == SfuFunc.ROPEK)),
            self.rot_k.eq(c.func == SfuFunc.ROPEK),
        ]
        for name, sig in self.is_.items():
            m.d.comb += sig.eq((c.func == _F[name]) | (self.rot if name == "rope" else 0))
        fmt = [SFU_FORMATS[n] for n in FUNCS]
        self.wsh_a = Array(Const(_log2(f.a), 2) for f in fmt)[c.func[:3]]
        self.wsh_b = Array(Const(_log2(max(f.b, 2)), 2) for f in fmt)[c.func[:3]]
        self.wsh_o = Array(Const(_log2(f.o), 2) for f in fmt)[c.func[:3]]
        self.rowf = Signal()
        m.d.comb += self.rowf.eq(Array(Const(int(f.row_factor), 1) for f in fmt)[c.func[:3]])
        i = self.is_
        self.center = Signal()
        self.uses_b = Signal()
        self.prelude = Signal()
        self.npass = Signal(2)
        self.hh = Signal(16)
        self.known = Signal()
        self.il = Signal()
        self.shared = Signal()  # two operand streams share one buffer's read port
        m.d.comb += [
            self.shared.eq(
                i["rope"]
                | (i["norm"] & (c.a_buf == Buf.PARAM))
                | ((i["add"] | i["mul"]) & (c.a_buf == c.b_buf))
            ),
            self.il.eq(i["norm"] | i["mul"] | i["reluq"]),
            self.center.eq(i["norm"] & c.aux[0]),
            self.uses_b.eq(i["norm"] | i["rope"] | i["add"] | i["mul"]),
            self.prelude.eq(i["norm"] | i["silu"]),
            self.npass.eq(
                Mux(i["norm"], 2 + self.center, Mux(i["softmax"] | i["mul"] | i["reluq"], 2, 1))
            ),
            self.hh.eq(c.aux >> 1),
            self.known.eq(
                ((c.func < len(FUNCS)) | (self.rot & (self.hh <= self.rot_dim // 2)))
                & ~(i["rope"] & (self.hh == 0))
            ),
        ]

    # ------------------------------------------------------------------ buffer ports
    def _route_reads(self, m: Module) -> None:
        """Per buffer, a round-robin choice among the streamers (A, A', B, B') asking for it:
        operands sharing a buffer's one read port take turns, so each gets its first words
        early."""
        ports = [getattr(self, f"rd_{b.name.lower()}") for b in Buf]
        readers = [*self.streams, self.sp]
        n = len(readers)
        for b, port in zip(Buf, ports, strict=True):
            rr = Signal(range(n), name=f"rr_{b.name.lower()}")  # the last streamer granted
            want = [st.req_en & (st.req_buf == b) for st in readers]
            pick = Signal(range(n), name=f"pick_{b.name.lower()}")
            for first in range(n):  # priority starts after rr
                with m.If(rr == (first - 1) % n):
                    for j in reversed(range(n)):
                        with m.If(want[(first + j) % n]):
                            m.d.comb += pick.eq((first + j) % n)
            anyw = Cat(*want).any()
            for idx, st in enumerate(readers):
                with m.If(anyw & (pick == idx)):
                    m.d.comb += [port.en.eq(1), port.addr.eq(st.req_word)]
                    m.d.comb += st.req_grant.eq(port.grant)
                    with m.If(port.grant):
                        m.d.sync += rr.eq(idx)
        data = Array(p.data for p in ports)
        for st in readers:
            m.d.comb += st.rd_data.eq(data[st.pend_buf])

    def _route_writes(self, m: Module, c: object) -> None:
        w = self.writer
        for b in Buf:
            port = getattr(self, f"wr_{b.name.lower()}")
            sel = c.o_buf == b
            m.d.comb += [
                port.en.eq(w.w_en & sel),
                port.addr.eq(w.w_addr),
                port.data.eq(w.w_data),
                port.strb.eq(w.w_strb),
            ]
            with m.If(sel):
                m.d.comb += w.w_grant.eq(port.grant)

    # ------------------------------------------------------------------ producer
    def _producer(self, m: Module, c: object) -> None:
        """Push each pass's segments (RoPE: each half head's) to the streamers, in the
        order of :func:`~hwflow.hw.machine.sfu_seq.advance`."""
        b0 = self.streams[2]
        i = self.is_
        k = Signal(16)
        ps = Signal(2)
        pos = Signal(16)  # RoPE: element offset of the half head in the row
        half = Signal()
        arow, brow = Signal(24), Signal(24)  # the row of the statistics passes
        arow_o, brow_o = Signal(24), Signal(24)  # interleaved: the output pass's row
        rope = i["rope"]
        act = [Const(1, 1), rope, self.uses_b, rope]
        ready = Cat(*(st.seg.ready | ~a for st, a in zip(self.streams, act, strict=True))).all()
        pre = Signal()  # the parameter words at p_off are still to push
        cmd = self.cmd.payload
        with m.FSM(name="prod"):
            with m.State("IDLE"), m.If(self.cmd.valid & self.cmd.ready):
                m.d.sync += [k.eq(0), ps.eq(0), pos.eq(0), half.eq(0), pre.eq(1)]
                m.d.sync += [arow.eq(cmd.a_off), brow.eq(cmd.b_off)]
                m.next = "RUN"
            with m.State("RUN"):
                with m.If(~self.known | (c.rows == 0) | (c.cols == 0)):
                    m.next = "IDLE"
                with m.Elif(self.prelude & pre):
                    self._seg(m, b0, Buf.PARAM, c.p_off, Mux(i["silu"], 2, 1), 2)
                    m.d.sync += pre.eq(~b0.seg.ready)
                with m.Elif(ready):
                    self._push(m, c, k, ps, (arow, brow, arow_o, brow_o), pos, half)

    def _push(self, m: Module, c: object, k, ps, rows, pos, half) -> None:
        """Push one pass's segments (RoPE: one half head's) and move to the next."""
        arow, brow, arow_o, brow_o = rows
        out = self.il & (ps == self.npass - 1)
        again = (k != 0) | (pos != 0)
        self._push_row(m, c, Mux(out, arow_o, arow), Mux(out, brow_o, brow), pos, half, again)
        with m.If(self.is_["rope"] & (pos + self.hh < c.cols)):
            m.d.sync += [pos.eq(pos + self.hh), half.eq(~half)]
        with m.Else():
            m.d.sync += [pos.eq(0), half.eq(0)]

            def step() -> None:
                m.d.sync += [arow_o.eq(arow), brow_o.eq(brow)]
                m.d.sync += [arow.eq(arow + c.a_stride), brow.eq(brow + c.b_stride)]

            def end() -> None:
                m.next = "IDLE"

            advance(m, k, ps, self.il, self.npass, c.rows, step, end)

    def _seg(self, m: Module, st: Streamer, buf, addr, count, wsh, reuse=0) -> None:
        """Offer one segment to streamer ``st`` (``reuse``: it may reuse the last word)."""
        m.d.comb += [
            st.seg.valid.eq(1),
            st.seg.payload.reuse.eq(reuse),
            st.seg.payload.buf.eq(buf),
            st.seg.payload.addr.eq(addr),
            st.seg.payload.count.eq(count),
            st.seg.payload.wsh.eq(wsh),
        ]

    def _push_row(self, m, c, arow, brow, pos, half, again) -> None:
        """The segments of one row and pass (RoPE: of one half head; ``again``: not the
        instruction's first, so a half head may reuse the word the previous one ended in)."""
        a0, a1, b0, b1 = self.streams
        with m.If(self.is_["rope"]):
            partner = Mux(half, pos - self.hh, pos + self.hh)
            rot = self.rot  # rotated keys: INT16 elements
            self._seg(m, a0, c.a_buf, arow + (pos << rot), self.hh, rot, again)
            self._seg(m, a1, c.a_buf, arow + (partner << rot), self.hh, rot, again)
            self._seg(m, b0, c.b_buf, brow, self.hh, 1, again)
            self._seg(m, b1, c.b_buf, brow + 2 * self.hh, self.hh, 1, again)
        with m.Else():
            self._seg(m, a0, c.a_buf, arow, c.cols, self.wsh_a)
            with m.If(self.is_["norm"]):
                self._seg(m, b0, Buf.PARAM, c.p_off + 4, c.cols, 1)
            with m.Elif(self.uses_b):
                self._seg(m, b0, c.b_buf, brow, c.cols, self.wsh_b)

    # ------------------------------------------------------------------ consumer
    def _consumer(self, m: Module, c: object) -> None:
        from hwflow.hw.machine.sfu_consume import build_consumer

        build_consumer(self, m, c)


def sfu_verilog(hw: HardwarePreset, word_bytes: int, name: str) -> str:
    """The Verilog text of the SFU of ``hw`` as module ``name``."""
    from amaranth.back import verilog

    from hwflow.hw.machine.verilog import fast_generation

    with fast_generation():
        return verilog.convert(Sfu(hw, word_bytes), name=name, emit_src=False)
