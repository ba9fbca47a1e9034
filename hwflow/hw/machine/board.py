"""The accelerator as it meets the board: the machine (:class:`~hwflow.hw.machine.top.
Accelerator`) with its word-wide fetch, LD and ST ports converted to one AXI4 port per HBM
pseudo-channel (:mod:`hwflow.hw.machine.hbm_ports`).

Ports: every host, monitor and debug port of the accelerator under its own name, and per
channel ``c`` a read port ``hbm<c>_rd`` (fetch and LD share it; LD first) and a write port
``hbm<c>_wr`` (ST), ``hbm.port_bits`` wide, addressed inside the channel
(:func:`~hwflow.hw.machine.hbm_ports.channel_address`), each burst at most
``hbm.max_burst_bytes``: what an HBM controller's AXI ports take (Xilinx PG276). This is what
``hwflow rtl`` writes and ``hwflow synth`` counts; ``hwflow cosim`` runs the accelerator on
its simulated HBM behind the wide ports instead (:mod:`hwflow.hw.machine.hbm_sim`).
"""

from __future__ import annotations

from collections.abc import Mapping

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out, connect, flipped

from hwflow.hw.hier import Hierarchy
from hwflow.hw.machine.axi import AxiRead, AxiWrite
from hwflow.hw.machine.hbm_ports import ReadSplitter, WriteSplitter, channel_addr_bits
from hwflow.hw.machine.params import MachineParams
from hwflow.hw.machine.top import Accelerator, UnitFactory
from hwflow.isa import Unit

__all__ = ["WIDE_PORTS", "Board"]

#: The accelerator's word-wide HBM ports, replaced by the per-channel ones.
WIDE_PORTS = ("ifetch", "ld", "st")


class Board(wiring.Component):
    """The accelerator of ``mp`` with unit factories ``units`` on per-channel HBM ports;
    with ``hier``, the channel leaves of the splitters are modules of their own."""

    def __init__(
        self,
        mp: MachineParams,
        units: Mapping[Unit, UnitFactory] | None = None,
        hier: Hierarchy | None = None,
    ) -> None:
        self.mp, self.hier = mp, hier
        self.acc = Accelerator(mp, units)
        members = dict(self.acc.signature.members.items())
        host = {n: members[n] for n in members if n not in WIDE_PORTS}
        self.host = tuple(host)
        cb = channel_addr_bits(mp)
        chans = {}
        for c in range(mp.channels):
            chans[f"hbm{c}_rd"] = Out(AxiRead(cb, mp.port_bits))
            chans[f"hbm{c}_wr"] = Out(AxiWrite(cb, mp.port_bits))
        super().__init__({**host, **chans})

    def elaborate(self, platform: object) -> Module:
        m = Module()
        mp, acc = self.mp, self.acc
        m.submodules.accel = acc
        for n in self.host:
            mine, theirs = getattr(self, n), getattr(acc, n)
            if self.signature.members[n].flow == In:
                m.d.comb += theirs.eq(mine)
            else:
                m.d.comb += mine.eq(theirs)
        m.submodules.rd = rd = ReadSplitter(mp, sources=2, hier=self.hier)
        m.submodules.wr = wr = WriteSplitter(mp, hier=self.hier)
        connect(m, acc.ld, rd.s0)
        connect(m, acc.ifetch, rd.s1)
        connect(m, acc.st, wr.s)
        for c in range(mp.channels):
            connect(m, getattr(rd, f"ch{c}"), flipped(getattr(self, f"hbm{c}_rd")))
            connect(m, getattr(wr, f"ch{c}"), flipped(getattr(self, f"hbm{c}_wr")))
        return m
