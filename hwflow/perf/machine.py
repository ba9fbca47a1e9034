"""The SimPy machine: one process per unit, instruction queues, dependency tokens, HBM channels.

The machine executes *machine ops* (:class:`MOp`): decoded instructions already priced by the
cost functions of :mod:`hwflow.costs` (:mod:`hwflow.perf.lower` builds them from a program's
expanded per-unit streams). It knows nothing of opcodes; it knows units, tokens and time.

Semantics (the contract the tests pin with exact timelines)
-----------------------------------------------------------
* The dispatcher (SYS) reads the program in order at one 32-bit word per cycle and appends
  each unit instruction to its unit's instruction queue of :data:`QUEUE_DEPTH` entries; when
  that queue is full it stalls (head-of-line blocking: the decoupled units can run apart by at
  most a queue's depth). An instruction is in its queue ``words`` cycles after the previous
  one (SYS instructions -- loops, register writes -- are resolved by :func:`hwflow.isa.expand`
  and not charged). An instruction leaves its queue when its unit issues it.
* Each unit runs its own stream in order. An op may start once the unit has issued the
  previous op's last beat (units are pipelined: ``beats`` is the initiation interval) and
  once it holds one token from every unit in its ``wait`` set.
* Tokens flow through one FIFO per ordered pair of units (producer -> consumer), like
  FlightLLM's wait/release masks and VTA's dependency queues. A token released by an op
  becomes visible when the op *completes*: ``start + latency`` (results written), and a unit
  completes in order (a later op never completes before an earlier one of the same unit).
* LD and ST ops move bytes through :class:`~hwflow.perf.hbm.HbmChannels`: the op starts when
  its tokens are in, its pieces queue on their channels; the unit is busy until its last piece
  has streamed, and the op completes one HBM latency later.
* Busy cycles of a unit: the sum of its ops' issue occupancy. Stall cycles: time a unit with
  a next op spent waiting for tokens or for HBM channels. Idle: the rest of the run.
* A run that ends with a unit still waiting is a deadlock: :class:`~hwflow.errors.SyncError`
  naming every blocked unit, its op and the queue it waits on.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

import simpy

from hwflow.config import HardwarePreset
from hwflow.costs import HbmPiece
from hwflow.errors import SyncError
from hwflow.perf.hbm import HbmChannels

__all__ = ["QUEUE_DEPTH", "UNITS", "MOp", "Machine", "RunStats"]

#: The units, in the order of :class:`hwflow.isa.Unit` (the wait/release mask bits).
UNITS = ("ld", "st", "mm", "mv", "sfu", "sys")
#: Entries of each unit's instruction queue. Design choice (not yet a preset field): 64
#: decoded instructions of at most 9 words = 18 Kib, half a BRAM36 per unit.
QUEUE_DEPTH = 64


@dataclass(frozen=True, slots=True)
class MOp:
    """One priced instruction of one unit's stream."""

    unit: int  #: index into :data:`UNITS`
    name: str  #: mnemonic, for traces
    words: int  #: 32-bit instruction words the dispatcher reads
    beats: int  #: cycles the unit's input is occupied (initiation interval)
    latency: int  #: cycles from start to results written (>= beats); LD/ST: 0, HBM decides
    wait: tuple[int, ...] = ()  #: producer units whose token this op consumes before it starts
    release: tuple[int, ...] = ()  #: consumer units that get a token when this op completes
    hbm: tuple[HbmPiece, ...] | None = None  #: LD/ST: the transfer's per-channel pieces


@dataclass
class RunStats:
    """What one run of the machine measured."""

    cycles: int
    busy: dict[str, int]
    stall: dict[str, int]
    ops: dict[str, int]
    hbm_bytes: int
    hbm_channel_busy: list[int]
    leftover_tokens: dict[str, int]
    events: int
    trace: list[tuple[str, str, int, int]] = field(default_factory=list)


class _Queue:
    __slots__ = ("times", "waiter")

    def __init__(self) -> None:
        self.times: deque[int] = deque()
        self.waiter: simpy.Event | None = None


class Machine:
    """Runs a program of :class:`MOp` (in dispatch order) from an idle machine until every
    unit is done."""

    def __init__(self, hw: HardwarePreset, *, trace: bool = False, depth: int = QUEUE_DEPTH):
        if depth < 1:
            raise ValueError(f"depth = {depth!r} must be >= 1")
        self.hw = hw
        self.trace_on = trace
        self.depth = depth

    def run(self, program: Sequence[MOp]) -> RunStats:
        """Execute ``program``; return what was measured."""
        env = simpy.Environment()
        n = len(UNITS)
        depth = self.depth
        queues = [[_Queue() for _ in range(n)] for _ in range(n)]  # tokens [producer][consumer]
        hbm = HbmChannels(self.hw)
        streams: list[list[MOp]] = [[] for _ in range(n)]
        for op in program:
            streams[op.unit].append(op)
        avail: list[list[int]] = [[] for _ in range(n)]  #: when instruction i is in its queue
        issued: list[list[int]] = [[] for _ in range(n)]  #: when instruction i left its queue
        unit_wait: list[simpy.Event | None] = [None] * n  # unit waits for the dispatcher
        disp_wait: list[simpy.Event | None] = [None]  # dispatcher waits for a queue slot
        busy = [0] * n
        stall = [0] * n
        pos = [0] * n
        blocked: dict[int, int] = {}
        finished = [False] * n
        last_done = [0] * n
        trace: list[tuple[str, str, int, int]] = []
        counter = [0]
        disp = [0, False, -1]  # fetch clock, finished, unit blocked on

        fetched = [0]

        def dispatcher() -> Generator:
            tf = 0
            for op in program:
                u = op.unit
                tf += op.words
                fetched[0] += op.words
                s = len(avail[u])
                if s >= depth:
                    while len(issued[u]) <= s - depth:
                        disp[2] = u
                        ev = env.event()
                        disp_wait[0] = ev
                        counter[0] += 1
                        yield ev
                    disp[2] = -1
                    t = issued[u][s - depth]
                    if t > tf:
                        tf = t
                avail[u].append(tf)
                w = unit_wait[u]
                if w is not None:
                    unit_wait[u] = None
                    w.succeed()
            disp[0] = tf
            disp[1] = True

        def unit(u: int) -> Generator:
            done_prev = 0
            my_queues = [queues[src][u] for src in range(n)]
            out_queues = queues[u]
            my_avail = avail[u]
            my_issued = issued[u]
            for i, op in enumerate(streams[u]):
                pos[u] = i
                t = env.now
                while len(my_avail) <= i:
                    ev = env.event()
                    unit_wait[u] = ev
                    counter[0] += 1
                    yield ev
                ready = my_avail[i]
                for src in op.wait:
                    q = my_queues[src]
                    while not q.times:
                        blocked[u] = src
                        ev = env.event()
                        q.waiter = ev
                        counter[0] += 1
                        yield ev
                    blocked.pop(u, None)
                    r = q.times.popleft()
                    if r > ready:
                        ready = r
                now = env.now
                start = ready if ready > now else now
                if op.hbm is not None:
                    if start > now:  # join the channels' FIFOs at the real arrival time
                        counter[0] += 1
                        yield env.timeout(start - now)
                    tr = hbm.issue(start, op.hbm)
                    issue_end = tr.streamed
                    done = tr.done
                    occupied = tr.streamed - tr.start
                    start = tr.start
                else:
                    issue_end = start + op.beats
                    done = start + op.latency
                    occupied = op.beats
                if done < done_prev:
                    done = done_prev
                done_prev = done
                my_issued.append(start)
                w = disp_wait[0]
                if w is not None and disp[2] == u:
                    disp_wait[0] = None
                    w.succeed()
                stall[u] += start - t
                busy[u] += occupied
                for dst in op.release:
                    q = out_queues[dst]
                    q.times.append(done)
                    if q.waiter is not None:
                        w, q.waiter = q.waiter, None
                        w.succeed()
                if self.trace_on:
                    trace.append((UNITS[u], op.name, start, max(issue_end, start + 1)))
                delay = issue_end - env.now
                if delay > 0:
                    counter[0] += 1
                    yield env.timeout(delay)
            last_done[u] = done_prev
            pos[u] = len(streams[u])
            finished[u] = True

        env.process(dispatcher())
        for u in range(n):
            if streams[u]:
                env.process(unit(u))
            else:
                finished[u] = True
        env.run()
        if not all(finished) or not disp[1]:
            why = [
                f"{UNITS[u]} op {pos[u]} ({streams[u][pos[u]].name}) waits for a token from"
                f" {UNITS[blocked[u]]}"
                for u in range(n)
                if not finished[u] and u in blocked
            ]
            if not disp[1] and disp[2] >= 0:
                why.append(f"the dispatcher waits for room in the full {UNITS[disp[2]]} queue")
            raise SyncError("deadlock: " + "; ".join(why))
        cycles = max([env.now, disp[0], *last_done])
        leftover = {
            f"{UNITS[a]}->{UNITS[b]}": len(queues[a][b].times)
            for a in range(n)
            for b in range(n)
            if queues[a][b].times
        }
        busy[UNITS.index("sys")] = fetched[0]
        return RunStats(
            cycles=int(cycles),
            busy={UNITS[u]: busy[u] for u in range(n)},
            stall={UNITS[u]: stall[u] for u in range(n)},
            ops={UNITS[u]: len(streams[u]) for u in range(n)},
            hbm_bytes=hbm.bytes,
            hbm_channel_busy=list(hbm.busy),
            leftover_tokens=leftover,
            events=counter[0] + n + 1,
            trace=trace,
        )
