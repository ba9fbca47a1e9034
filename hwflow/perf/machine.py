"""The SimPy machine: one process per unit, instruction queues, dependency tokens, HBM channels.

The machine executes *machine ops* (:class:`MOp`): decoded instructions already priced by the
cost functions of :mod:`hwflow.costs` (:mod:`hwflow.perf.lower` builds them from a program's
expanded per-unit streams). It knows nothing of opcodes; it knows units, tokens and time.

Semantics (the contract the tests pin with exact timelines)
-----------------------------------------------------------
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

__all__ = ["UNITS", "MOp", "Machine", "RunStats"]

#: The units, in the order of the ISA's wait/release mask bits.
UNITS = ("ld", "st", "mm", "mv", "sfu", "sys")


@dataclass(frozen=True, slots=True)
class MOp:
    """One priced instruction of one unit's stream."""

    unit: int  #: index into :data:`UNITS`
    name: str  #: mnemonic, for traces
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
    """Runs per-unit streams of :class:`MOp` from an idle machine until every unit is done."""

    def __init__(self, hw: HardwarePreset, *, trace: bool = False) -> None:
        self.hw = hw
        self.trace_on = trace

    def run(self, streams: Sequence[Sequence[MOp]]) -> RunStats:
        """Execute ``streams[u]`` on unit ``u`` (``len(streams) == len(UNITS)``)."""
        if len(streams) != len(UNITS):
            raise ValueError(f"expected {len(UNITS)} streams (one per unit), got {len(streams)}")
        env = simpy.Environment()
        n = len(UNITS)
        queues = [[_Queue() for _ in range(n)] for _ in range(n)]  # [producer][consumer]
        hbm = HbmChannels(self.hw)
        busy = [0] * n
        stall = [0] * n
        pos = [0] * n
        blocked: dict[int, int] = {}
        finished = [False] * n
        last_done = [0] * n
        trace: list[tuple[str, str, int, int]] = []
        counter = [0]

        def unit(u: int, ops: Sequence[MOp]) -> Generator:
            done_prev = 0
            my_queues = [queues[src][u] for src in range(n)]
            out_queues = queues[u]
            for i, op in enumerate(ops):
                pos[u] = i
                t = env.now
                ready = t
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
            pos[u] = len(ops)
            finished[u] = True

        for u in range(n):
            env.process(unit(u, streams[u]))
        env.run()
        if not all(finished):
            raise SyncError(
                "deadlock: "
                + "; ".join(
                    f"{UNITS[u]} op {pos[u]} ({streams[u][pos[u]].name}) waits for a token from"
                    f" {UNITS[blocked[u]]}"
                    for u in range(n)
                    if not finished[u] and u in blocked
                )
            )
        cycles = max([env.now, *last_done])
        leftover = {
            f"{UNITS[a]}->{UNITS[b]}": len(queues[a][b].times)
            for a in range(n)
            for b in range(n)
            if queues[a][b].times
        }
        return RunStats(
            cycles=int(cycles),
            busy={UNITS[u]: busy[u] for u in range(n)},
            stall={UNITS[u]: stall[u] for u in range(n)},
            ops={UNITS[u]: len(streams[u]) for u in range(n)},
            hbm_bytes=hbm.bytes,
            hbm_channel_busy=list(hbm.busy),
            leftover_tokens=leftover,
            events=counter[0] + n,
            trace=trace,
        )
