"""The accelerator's top level: fetch, SYS dispatcher, unit queues with dependency tokens, the
five on-chip buffers, LD/ST on AXI4 ports, and the compute units (MM, MV, SFU) in pluggable
slots.

Host interface: ``start`` (one cycle) with ``prog_addr`` / ``prog_words`` (the template in HBM,
:func:`hwflow.compiler.layout.place_program`), ``length`` (LEN) and ``pos`` (POS); the machine
fetches the template, runs it and raises ``done`` once END was dispatched and every queue and
unit is idle. ``error`` is the dispatcher's code (:data:`hwflow.hw.machine.sys.ERRORS`),
``tok_overflow`` / ``tok_left`` flag a token counter overflow / tokens left at the end, and
``absent_used`` has a bit per unit slot left empty that received a command (such a run is
never bit-exact). ``dbg_*`` reads any buffer word (lowest priority) for the benches.

Monitor: in the cycle after a unit starts or finishes an instruction, ``mon_start`` /
``mon_done`` (one bit per token unit) say so and ``mon_pc`` holds the started instructions'
pcs; ``mon_seq`` changes whenever any of them does, ``cycle`` counts cycles since ``start``;
``fetch_cycles`` / ``run_cycles`` hold its value when the fetch finished / ``done`` rose.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out, connect

from hwflow.hw.machine.axi import AxiRead, AxiWrite
from hwflow.hw.machine.bus import BufferBank
from hwflow.hw.machine.decode import cmd_layout
from hwflow.hw.machine.fetch import Fetch, InstrMem
from hwflow.hw.machine.ldst import LoadUnit, StoreUnit
from hwflow.hw.machine.params import MachineParams
from hwflow.hw.machine.queue import NU, PC_BITS, FrontEnd, Tokens
from hwflow.hw.machine.sys import Dispatcher
from hwflow.isa import TOKEN_UNITS, Buf, Unit

__all__ = ["PLUGGABLE", "AbsentUnit", "Accelerator", "UnitFactory"]

#: Units whose slot may be empty (LD/ST are always the machine's own).
PLUGGABLE = (Unit.MM, Unit.MV, Unit.SFU)
#: Buffer port priority (seam 2): LD > ST > MM > MV > SFU, then the host's debug reader.
PRIORITY = (Unit.LD, Unit.ST, Unit.MM, Unit.MV, Unit.SFU)
UnitFactory = Callable[[MachineParams], wiring.Component]


class AbsentUnit(wiring.Component):
    """An empty unit slot: accepts every command, finishes it the next cycle without doing
    anything, and raises ``used`` (sticky) so no run through it is called bit-exact."""

    def __init__(self, unit: Unit) -> None:
        super().__init__(
            {
                "cmd": In(stream.Signature(cmd_layout(unit))),
                "done": Out(1),
                "busy": Out(1),
                "used": Out(1),
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.d.comb += self.cmd.ready.eq(1)
        m.d.sync += self.done.eq(self.cmd.valid)
        with m.If(self.cmd.valid):
            m.d.sync += self.used.eq(1)
        return m


class Accelerator(wiring.Component):
    """The whole machine for ``mp``; ``units`` maps MM/MV/SFU to a factory of their
    component (seam 1 and 2 of the machine); a missing one is an :class:`AbsentUnit`."""

    def __init__(self, mp: MachineParams, units: Mapping[Unit, UnitFactory] | None = None) -> None:
        self.mp = mp
        self.factories = dict(units or {})
        self.imem = InstrMem(mp)
        dbits = max(mp.addr_bits(b) for b in Buf)
        super().__init__(
            {
                "start": In(1),
                "prog_addr": In(mp.axi_addr_bits),
                "prog_words": In(24),
                "length": In(32),
                "pos": In(32),
                "done": Out(1),
                "error": Out(3),
                "tok_overflow": Out(1),
                "tok_left": Out(1),
                "absent_used": Out(NU),
                "issued": Out(32),
                "cycle": Out(32),
                "run_cycles": Out(32),
                "fetch_cycles": Out(32),
                "mon_start": Out(NU),
                "mon_done": Out(NU),
                "mon_pc": Out(PC_BITS * NU),
                "mon_seq": Out(16),
                "dbg_buf": In(3),
                "dbg_addr": In(dbits),
                "dbg_en": In(1),
                "dbg_data": Out(mp.axi_data_bits),
                "ifetch": Out(AxiRead(mp.axi_addr_bits, mp.axi_data_bits)),
                "ld": Out(AxiRead(mp.axi_addr_bits, mp.axi_data_bits)),
                "st": Out(AxiWrite(mp.axi_addr_bits, mp.axi_data_bits)),
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        mp = self.mp
        m.submodules.imem = imem = self.imem
        m.submodules.fetch = fetch = Fetch(mp, imem.line_bits)
        m.submodules.sys = disp = Dispatcher(mp, imem.word_bits)
        m.submodules.tokens = tok = Tokens(mp)
        connect(m, wiring.flipped(self.ifetch), fetch.axi)
        lg = (mp.beat_bytes - 1).bit_length()
        skip = Signal(max(lg - 2, 1))  # program words before ``prog_addr`` in its first beat
        with m.If(self.start):
            m.d.sync += skip.eq(self.prog_addr[2:lg])
        m.d.comb += [
            imem.w_line.eq(fetch.w_line),
            imem.w_data.eq(fetch.w_data),
            imem.w_en.eq(fetch.w_en),
            imem.raddr.eq(disp.raddr + skip),
            disp.window.eq(imem.window),
            fetch.start.eq(self.start),
            fetch.addr.eq(self.prog_addr),
            fetch.words.eq(self.prog_words),
            disp.start.eq(fetch.done),
            disp.length.eq(self.length),
            disp.pos.eq(self.pos),
            self.error.eq(disp.error),
            self.issued.eq(disp.issued),
            tok.clear.eq(self.start),
            self.tok_overflow.eq(tok.overflow),
        ]
        units = self._units(m)
        connect(m, wiring.flipped(self.ld), units[Unit.LD].axi)
        connect(m, wiring.flipped(self.st), units[Unit.ST].axi)
        idle = disp.done
        absent = []
        fes = {}
        for u in TOKEN_UNITS:
            fe = fes[u] = m.submodules[f"fe_{u.name.lower()}"] = FrontEnd(mp, u)
            unit = units[u]
            connect(m, getattr(disp, f"q_{u.name.lower()}"), fe.push)
            connect(m, fe.cmd, unit.cmd)
            m.d.comb += [
                fe.done.eq(unit.done),
                fe.avail.eq(tok.avail[u]),
                tok.pop[u].eq(fe.pop),
                tok.push[u].eq(fe.push_tok),
            ]
            idle = idle & fe.idle & ~unit.busy
            absent.append(unit.used if isinstance(unit, AbsentUnit) else 0)
        fetching = Signal()  # from start to the end of the fetch: the last step's END is stale
        with m.If(self.start):
            m.d.sync += fetching.eq(1)
        with m.Elif(fetch.done):
            m.d.sync += fetching.eq(0)
        m.d.comb += [self.absent_used.eq(Cat(*absent)), self.done.eq(idle & ~fetching)]
        m.d.comb += self.tok_left.eq(tok.left)
        self._buffers(m, units)
        self.fetch_done = fetch.done
        self._monitor(m, fes)
        return m

    def _units(self, m: Module) -> dict[Unit, wiring.Component]:
        units: dict[Unit, wiring.Component] = {
            Unit.LD: LoadUnit(self.mp),
            Unit.ST: StoreUnit(self.mp),
        }
        for u in PLUGGABLE:
            f = self.factories.get(u)
            units[u] = f(self.mp) if f is not None else AbsentUnit(u)
        for u, c in units.items():
            m.submodules[f"unit_{u.name.lower()}"] = c
            if "busy" not in c.signature.members:
                raise ValueError(f"unit {u.name} has no busy output")
        return units

    def _buffers(self, m: Module, units: Mapping[Unit, wiring.Component]) -> None:
        """One :class:`BufferBank` per buffer; every unit port of it in priority order."""
        mp = self.mp
        dbg_data = 0
        for b in Buf:
            name = b.name.lower()
            readers = [units[u] for u in PRIORITY if f"rd_{name}" in units[u].signature.members]
            writers = [units[u] for u in PRIORITY if f"wr_{name}" in units[u].signature.members]
            bank = BufferBank(mp.words[b], mp.word_bytes[b], len(readers) + 1, len(writers))
            m.submodules[f"buf_{name}"] = bank
            for i, c in enumerate(readers):
                connect(m, getattr(c, f"rd_{name}"), bank.rd[i])
            for i, c in enumerate(writers):
                connect(m, getattr(c, f"wr_{name}"), bank.wr[i])
            dbg = bank.rd[len(readers)]
            m.d.comb += [dbg.addr.eq(self.dbg_addr), dbg.en.eq(self.dbg_en & (self.dbg_buf == b))]
            sel = Signal(name=f"dbg_sel_{name}")
            m.d.sync += sel.eq(self.dbg_buf == b)
            dbg_data = sel.replicate(mp.axi_data_bits) & dbg.data | dbg_data
        m.d.comb += self.dbg_data.eq(dbg_data)

    def _monitor(self, m: Module, fes: Mapping[Unit, FrontEnd]) -> None:
        starts = Cat(*(fes[u].started for u in TOKEN_UNITS))
        dones = Cat(*(fes[u].finished for u in TOKEN_UNITS))
        m.d.sync += [
            self.mon_start.eq(starts),
            self.mon_done.eq(dones),
            self.mon_pc.eq(Cat(*(fes[u].pc for u in TOKEN_UNITS))),
            self.cycle.eq(self.cycle + 1),
        ]
        with m.If((starts | dones) != 0):
            m.d.sync += self.mon_seq.eq(self.mon_seq + 1)
        with m.If(self.fetch_done):
            m.d.sync += self.fetch_cycles.eq(self.cycle)
        seen = Signal()
        with m.If(self.done & ~seen):
            m.d.sync += [seen.eq(1), self.run_cycles.eq(self.cycle)]
        with m.If(self.start):
            m.d.sync += [self.cycle.eq(0), seen.eq(0)]
