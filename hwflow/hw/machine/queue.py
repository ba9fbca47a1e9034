"""Per-unit instruction queues, their front ends and the dependency-token counters.

Token discipline (:mod:`hwflow.isa` module doc, :func:`hwflow.isa.dispatch`): one counter per
ordered unit pair (src -> dst), as VTA's ``Semaphore`` (apache/tvm-vta,
hardware/chisel/src/main/scala/core/Semaphore.scala): the consumer front end *pops* (decrements)
and the producer *pushes* (increments) in the same cycle without conflict, since each counter
has one producer and one consumer. A counter that would pass its maximum sets the sticky
``overflow`` flag (the simulation benches fail on it); underflow cannot happen, because a pop
happens only when the counter is non-zero.

Front end of unit u (one :class:`FrontEnd` per unit): the head entry of u's queue starts when
every counter (v -> u) named by its ``wait`` mask is non-zero. A ``SYNC.u`` entry is retired by
the front end itself once every earlier instruction of u is done (its ``release`` tokens are
pushed at once); any other entry is handed to the unit (``cmd`` stream) and its ``release``
mask waits in a small in-order FIFO for the unit's ``done`` pulse, which pushes the tokens.
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO, SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from hwflow.hw.machine.decode import cmd_layout
from hwflow.hw.machine.params import MachineParams
from hwflow.isa import TOKEN_UNITS, Unit

__all__ = ["NU", "PC_BITS", "FrontEnd", "Tokens", "entry_layout"]

NU = len(TOKEN_UNITS)
PC_BITS = 16  #: instruction index carried with an entry for the monitor
#: Instructions a unit may have accepted but not finished (release masks waiting for done).
PENDING = 4


def entry_layout(unit: Unit) -> data.StructLayout:
    """A queue entry of ``unit``: the resolved command, its masks, SYNC flag and its pc."""
    return data.StructLayout(
        {
            "cmd": cmd_layout(unit),
            "wait": NU,
            "release": NU,
            "sync": 1,
            "pc": PC_BITS,
        }
    )


class Tokens(wiring.Component):
    """The token counters: ``pop[dst]`` / ``push[src]`` are NU-bit masks over the other end;
    ``avail[dst]`` bit v = counter (v -> dst) is non-zero; ``left`` = some counter non-zero;
    ``overflow`` sticky."""

    def __init__(self, mp: MachineParams) -> None:
        self.bits = mp.token_bits
        super().__init__(
            {
                "pop": In(NU).array(NU),
                "push": In(NU).array(NU),
                "avail": Out(NU).array(NU),
                "left": Out(1),
                "overflow": Out(1),
                "clear": In(1),
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        top = (1 << self.bits) - 1
        left = 0
        for src in range(NU):
            for dst in range(NU):
                cnt = Signal(self.bits, name=f"tok_{src}_{dst}")
                inc = self.push[src][dst]
                dec = self.pop[dst][src]
                m.d.comb += self.avail[dst][src].eq(cnt != 0)
                with m.If(self.clear):
                    m.d.sync += cnt.eq(0)
                with m.Elif(inc & ~dec):
                    m.d.sync += cnt.eq(cnt + 1)
                    with m.If(cnt == top):
                        m.d.sync += self.overflow.eq(1)
                with m.Elif(dec & ~inc):
                    m.d.sync += cnt.eq(cnt - 1)
                left = left | (cnt != 0)
        m.d.comb += self.left.eq(left)
        with m.If(self.clear):
            m.d.sync += self.overflow.eq(0)
        return m


class FrontEnd(wiring.Component):
    """Queue + front end of one unit (see module doc). ``push`` takes entries from the
    dispatcher; ``cmd``/``done`` face the unit; ``pop``/``push_tok``/``avail`` face
    :class:`Tokens`; ``started``/``finished`` pulse for the monitor (with ``pc`` of the
    started entry); ``idle``: queue empty and nothing pending."""

    def __init__(self, mp: MachineParams, unit: Unit) -> None:
        self.mp, self.unit = mp, unit
        lay = entry_layout(unit)
        super().__init__(
            {
                "push": In(stream.Signature(lay)),
                "cmd": Out(stream.Signature(cmd_layout(unit))),
                "done": In(1),
                "avail": In(NU),
                "pop": Out(NU),
                "push_tok": Out(NU),
                "started": Out(1),
                "finished": Out(1),
                "pc": Out(PC_BITS),
                "idle": Out(1),
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        lay = entry_layout(self.unit)
        m.submodules.q = q = SyncFIFOBuffered(width=lay.size, depth=self.mp.queue_depth)
        m.submodules.rel = rel = SyncFIFO(width=NU, depth=PENDING)
        m.d.comb += [
            q.w_data.eq(self.push.payload.as_value()),
            q.w_en.eq(self.push.valid),
            self.push.ready.eq(q.w_rdy),
        ]
        head = data.View(lay, q.r_data)
        ready_tok = (head.wait & ~self.avail) == 0
        go = q.r_rdy & ready_tok
        sync_go = go & head.sync & ~rel.r_rdy  # every earlier instruction is done
        m.d.comb += [
            self.cmd.payload.eq(head.cmd),
            self.cmd.valid.eq(go & ~head.sync & rel.w_rdy),
        ]
        fire = self.cmd.valid & self.cmd.ready
        start = fire | sync_go
        m.d.comb += [
            q.r_en.eq(start),
            self.pop.eq(start.replicate(NU) & head.wait),
            rel.w_en.eq(fire),
            rel.w_data.eq(head.release),
            rel.r_en.eq(self.done),
        ]
        push = 0
        push = (sync_go.replicate(NU) & head.release) | (self.done.replicate(NU) & rel.r_data)
        m.d.comb += self.push_tok.eq(push)
        m.d.comb += self.idle.eq(~q.r_rdy & ~rel.r_rdy)
        m.d.comb += [self.started.eq(start), self.finished.eq(self.done | sync_go)]
        m.d.comb += self.pc.eq(head.pc)
        return m
