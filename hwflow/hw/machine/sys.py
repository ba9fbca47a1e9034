"""The SYS dispatcher: runs the template from the instruction memory, one instruction a cycle.

It executes SYS instructions itself with the semantics of :func:`hwflow.isa.expand` (the one
definition): 64-bit registers R0..R15, R0 = 0, R1 = LEN and R2 = POS from the host at
``start``, ``SETI/ADDI/ADD/SUB/MULI/MINI``, ``LOOP count`` / ``ENDLOOP`` (nested; a zero count
skips the body), ``END``. Every other instruction is resolved (register-modified fields as
``expand`` resolves them: ``add`` = field + R[reg], ``clamp`` = clamp(R[reg], 0, field), the
field itself when reg = 0; :func:`hwflow.hw.machine.decode.cmd_layout`) and pushed with its
masks into its unit's queue; the dispatcher stalls while that queue is full.

``error`` (sticky) codes: 1 unknown opcode, 2 write to R0..R2, 3 loop nesting deeper than
:attr:`MachineParams.loop_depth`, 4 END inside a loop, 5 ENDLOOP without LOOP.
"""

from __future__ import annotations

from amaranth.hdl import Array, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hwflow.hw.machine.decode import (
    MACHINE_OPCODES,
    MAX_INSTR_BITS,
    cmd_layout,
    executing_op,
    raw_layout,
    register_fields,
)
from hwflow.hw.machine.params import MachineParams
from hwflow.hw.machine.queue import PC_BITS, entry_layout
from hwflow.isa import NREGS, REG_LEN, REG_POS, TOKEN_UNITS, Unit, spec

__all__ = ["ERRORS", "Dispatcher"]

ERRORS = {1: "unknown opcode", 2: "write to R0..R2", 3: "loops nested too deep",
          4: "END inside a loop", 5: "ENDLOOP without LOOP"}  # fmt: skip
REG_BITS = 64
_CODE = {s.name: s.code for s in MACHINE_OPCODES}


def resolve(m: Module, unit: Unit, raw: data.View, regs: Array) -> data.View:
    """The command of ``unit`` from the raw instruction view, fields resolved (module doc)."""
    s = executing_op(unit)
    lay = cmd_layout(unit)
    out = Signal(lay, name=f"cmd_{unit.name.lower()}")
    regf = register_fields(s)
    for f in s.fields[3:]:
        if f.name in regf:
            continue
        v = getattr(raw, f.name)
        if f.dyn is None:
            m.d.comb += getattr(out, f.name).eq(v)
            continue
        mode, reg = f.dyn
        r = regs[getattr(raw, reg)]
        if mode == "add":
            m.d.comb += getattr(out, f.name).eq(v + r)
        else:
            sel = getattr(raw, reg)
            clamped = Mux(r > v, v, Mux(r > 0, r, 0))
            m.d.comb += getattr(out, f.name).eq(Mux(sel == 0, v, clamped))
    return out


def _alu(op: str, v: data.View, ra: object, regs: Array) -> object:
    """The result of SYS ALU instruction ``op`` (fields ``v``, ``ra`` = R[v.ra])."""
    if op == "SETI":
        return v.imm
    if op == "ADDI":
        return ra + v.imm
    if op == "ADD":
        return ra + regs[v.rb]
    if op == "SUB":
        return ra - regs[v.rb]
    if op == "MULI":
        return ra * v.imm
    return Mux(ra < v.imm, ra, v.imm)  # MINI


class Dispatcher(wiring.Component):
    """Fetches from :class:`~hwflow.hw.machine.fetch.InstrMem` (``raddr``/``window``) and
    pushes entries into the five unit queues (``q_<unit>``); ``start`` with ``length``,
    ``pos``; ``done`` (level) after END; ``error`` code (sticky, 0 = none); ``issued`` counts
    SYS and unit instructions dispatched."""

    def __init__(self, mp: MachineParams, word_bits: int) -> None:
        self.mp = mp
        from amaranth.lib import stream

        queues = {
            f"q_{u.name.lower()}": Out(stream.Signature(entry_layout(u))) for u in TOKEN_UNITS
        }
        super().__init__(
            {
                "start": In(1),
                "length": In(32),
                "pos": In(32),
                "raddr": Out(word_bits),
                "window": In(MAX_INSTR_BITS),
                "running": Out(1),
                "done": Out(1),
                "error": Out(3),
                "issued": Out(32),
                **queues,
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        mp = self.mp
        regs = Array(Signal(signed(REG_BITS), name=f"r{i}") for i in range(NREGS))
        pc = Signal(len(self.raddr))  # word index of the instruction in ``window``
        ipc = Signal(PC_BITS)  # its instruction index (isa's pc)
        pc_next = Signal(len(self.raddr))
        ipc_next = Signal(PC_BITS)
        m.d.comb += [self.raddr.eq(pc_next), pc_next.eq(pc), ipc_next.eq(ipc)]
        m.d.sync += [pc.eq(pc_next), ipc.eq(ipc_next)]
        depth = mp.loop_depth
        st_pc = Array(Signal(len(pc), name=f"lp_pc{i}") for i in range(depth))
        st_ipc = Array(Signal(PC_BITS, name=f"lp_ipc{i}") for i in range(depth))
        st_cnt = Array(Signal(16, name=f"lp_cnt{i}") for i in range(depth))
        st_it = Array(Signal(16, name=f"lp_it{i}") for i in range(depth))
        sp = Signal(range(depth + 1))
        skip = Signal(range(depth + 2))  # > 0: skipping a zero-count loop body, at this depth
        opcode = self.window[:6]
        views = {
            s.name: data.View(raw_layout(s), self.window[: 32 * s.words]) for s in MACHINE_OPCODES
        }
        cmds = {u: resolve(m, u, views[executing_op(u).name], regs) for u in TOKEN_UNITS}

        def advance(s_name: str) -> None:
            m.d.comb += [pc_next.eq(pc + spec(s_name).words), ipc_next.eq(ipc + 1)]

        def fail(code: int) -> None:
            m.d.sync += [self.error.eq(code), self.running.eq(0)]

        with m.If(self.start):
            m.d.sync += [self.running.eq(1), self.done.eq(0), self.error.eq(0), sp.eq(0),
                         skip.eq(0), self.issued.eq(0)]  # fmt: skip
            m.d.sync += [r.eq(0) for r in regs]
            m.d.sync += [regs[REG_LEN].eq(self.length), regs[REG_POS].eq(self.pos)]
            m.d.comb += [pc_next.eq(0), ipc_next.eq(0)]
        with m.Elif(self.running & (skip != 0)), m.Switch(opcode):
            for s in MACHINE_OPCODES:
                with m.Case(s.code):
                    advance(s.name)
                    if s.name == "LOOP":
                        m.d.sync += skip.eq(skip + 1)
                    elif s.name == "ENDLOOP":
                        m.d.sync += skip.eq(skip - 1)
            with m.Default():
                fail(1)
        with m.Elif(self.running):
            self._execute(m, opcode, views, cmds, regs, pc, ipc, pc_next, ipc_next, advance,
                          fail, (st_pc, st_ipc, st_cnt, st_it, sp, skip))  # fmt: skip
        return m

    def _execute(self, m, opcode, views, cmds, regs, pc, ipc, pc_next, ipc_next, advance, fail,
                 stack) -> None:  # fmt: skip
        """One instruction in ``window``: SYS executes, unit instructions are queued."""
        st_pc, st_ipc, st_cnt, st_it, sp, skip = stack
        depth = self.mp.loop_depth
        with m.Switch(opcode):
            for s in MACHINE_OPCODES:
                with m.Case(s.code):
                    v = views[s.name]
                    if s.unit != Unit.SYS:
                        q = getattr(self, f"q_{s.unit.name.lower()}")
                        e = q.payload
                        m.d.comb += [
                            e.wait.eq(v.wait),
                            e.release.eq(v.release),
                            e.sync.eq(s.name.startswith("SYNC")),
                            e.pc.eq(ipc),
                            q.valid.eq(1),
                        ]
                        if not s.name.startswith("SYNC"):
                            m.d.comb += e.cmd.eq(cmds[s.unit])
                        with m.If(q.ready):
                            advance(s.name)
                            m.d.sync += self.issued.eq(self.issued + 1)
                        continue
                    m.d.sync += self.issued.eq(self.issued + 1)
                    advance(s.name)
                    if s.name in ("SETI", "ADDI", "ADD", "SUB", "MULI", "MINI"):
                        ra = regs[v.ra] if s.name != "SETI" else 0
                        res = _alu(s.name, v, ra, regs)
                        with m.If(v.rd <= REG_POS):
                            fail(2)
                        with m.Else():
                            m.d.sync += regs[v.rd].eq(res)
                    elif s.name == "LOOP":
                        with m.If(v.count == 0):
                            m.d.sync += skip.eq(1)
                        with m.Elif(sp == depth):
                            fail(3)
                        with m.Else():
                            m.d.sync += [
                                st_pc[sp].eq(pc + s.words),
                                st_ipc[sp].eq(ipc + 1),
                                st_cnt[sp].eq(v.count),
                                st_it[sp].eq(0),
                                sp.eq(sp + 1),
                            ]
                    elif s.name == "ENDLOOP":
                        top = sp - 1
                        with m.If(sp == 0):
                            fail(5)
                        with m.Elif(st_it[top] + 1 < st_cnt[top]):
                            m.d.sync += st_it[top].eq(st_it[top] + 1)
                            m.d.comb += [pc_next.eq(st_pc[top]), ipc_next.eq(st_ipc[top])]
                        with m.Else():
                            m.d.sync += sp.eq(sp - 1)
                    elif s.name == "END":
                        m.d.comb += [pc_next.eq(pc), ipc_next.eq(ipc)]
                        with m.If(sp != 0):
                            fail(4)
                        with m.Else():
                            m.d.sync += [self.running.eq(0), self.done.eq(1)]
            with m.Default():
                fail(1)
