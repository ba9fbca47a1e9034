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
* Each unit runs its own stream in order, one op at a time: an op may start once the
  previous op of its unit has *completed* (below) and once it holds one token from every unit
  in its ``wait`` set. This is the RTL machine's structure (:mod:`hwflow.hw.machine`): every
  unit (``mmu``, ``sfu``, ``ldst``) takes a command only while idle (``cmd.ready`` = not
  running) and is idle again in the cycle after its ``done`` pulse, the cycle its tokens are
  visible; a unit that overlapped an op's drain with the next op's beats would need an
  interlock for an op reading what the previous one writes, which neither side has.
* Tokens flow through one FIFO per ordered pair of units (producer -> consumer), like
  FlightLLM's wait/release masks and VTA's dependency queues. A token released by an op
  becomes visible when the op *completes*: ``start + latency`` (results written), and a unit
  completes in order (a later op never completes before an earlier one of the same unit).
* LD and ST ops move bytes through :class:`~hwflow.perf.hbm.HbmChannels`: the op starts when
  its tokens are in and hands its pieces to their channels' FIFOs, where they arrive
  :data:`~hwflow.costs.LDST_REQUEST_STAGES` after the start; the op completes when its data is
  on chip (:class:`~hwflow.perf.hbm.Transfer`: one HBM latency after its last piece streamed,
  or after the unit's port carried the words of the bursts behind a piece) plus
  :func:`~hwflow.costs.ldst_done_stages` and the op's ``latency`` (an LD's realigner flush; an
  empty op completes ``LDST_REQUEST_STAGES + 1`` after its start). The unit counts as busy
  while any of its transfers streams.
* Busy cycles of a unit: the sum of its ops' issue occupancy (LD/ST: the times its transfers
  stream). Stall cycles: time a unit with a next op spent waiting for its instruction or
  tokens. Idle: the rest (a unit waiting for its own op to complete, LD/ST for HBM).
* A run that ends with a unit still waiting is a deadlock: :class:`~hwflow.errors.SyncError`
  naming every blocked unit, its op and the queue it waits on.

Reuse (exact). The compiler closes every loop body with a full barrier, after which nothing
starts before everything before it completed. :meth:`Machine.run` with a
:class:`SegmentMemo` cuts the program there and simulates each segment from the carried
:class:`MachineState`; a segment already simulated with the same ops from the same state
(relative to its origin cycle) is replayed shifted in time. The machine is deterministic, so
the replay is the timeline a full simulation gives (the tests compare both op by op).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

import simpy

from hwflow.config import Buffers, HardwarePreset
from hwflow.costs import LDST_REQUEST_STAGES, HbmBurst, HbmPiece, ldst_done_stages
from hwflow.errors import SyncError
from hwflow.isa import TOKEN_UNITS, Unit
from hwflow.perf.hbm import HbmChannels, Transfer

__all__ = [
    "QUEUE_DEPTH",
    "TOKEN_UNIT_NAMES",
    "UNITS",
    "MOp",
    "Machine",
    "MachineState",
    "RunStats",
    "SegmentMemo",
    "barrier_cuts",
]

#: The units' names, in the order of :class:`hwflow.isa.Unit` (the wait/release mask bits).
UNITS = tuple(u.name.lower() for u in sorted(Unit))
#: The units that own token queues (:data:`hwflow.isa.TOKEN_UNITS`), by name.
TOKEN_UNIT_NAMES = tuple(UNITS[u] for u in TOKEN_UNITS)
#: Entries of each unit's instruction queue unless the preset says otherwise
#: (``HardwarePreset.buffers.queue_entries``, where the number and its source live).
QUEUE_DEPTH = Buffers.model_fields["queue_entries"].default


@dataclass(frozen=True, slots=True)
class MOp:
    """One priced instruction of one unit's stream."""

    unit: int  #: index into :data:`UNITS`
    name: str  #: mnemonic, for traces
    words: int  #: 32-bit instruction words the dispatcher reads
    beats: int  #: cycles the unit's input is occupied (its busy cycles)
    #: cycles from start to results written (>= beats); LD/ST: the HBM decides, this is what
    #: the unit adds after its last word (an LD's realigner flush, costs.ld_flush_cycles)
    latency: int
    wait: tuple[int, ...] = ()  #: producer units whose token this op consumes before it starts
    release: tuple[int, ...] = ()  #: consumer units that get a token when this op completes
    hbm: tuple[HbmPiece, ...] | None = None  #: LD/ST: the transfer's per-channel pieces
    hbm_bytes: int = 0  #: LD/ST: bytes moved (the pieces' sum)
    hbm_occupancy: int = 0  #: LD/ST: channel-cycles streamed (the pieces' sum)
    #: LD/ST: the transfer's AXI bursts (:func:`hwflow.costs.hbm_bursts`); none: the pieces
    #: as one burst without port cycles
    bursts: tuple[HbmBurst, ...] = ()
    #: a number naming this priced op in segment keys (:mod:`hwflow.perf.lower` numbers the
    #: ops it interns, never twice in a process); -1: unnumbered (compared by value)
    key: int = field(default=-1, compare=False)


@dataclass
class RunStats:
    """What one run of the machine measured."""

    cycles: int
    busy: dict[str, int]
    stall: dict[str, int]
    ops: dict[str, int]
    hbm_bytes: int
    hbm_channel_cycles: int  #: sum over channels of the cycles each spent streaming
    leftover_tokens: dict[str, int]
    events: int
    trace: list[tuple[str, str, int, int]] = field(default_factory=list)
    #: with the trace: each traced op's completion (its tokens visible), in trace order
    ends: list[int] = field(default_factory=list)
    segments: int = 0  #: barrier-delimited segments the run was cut into
    reused: int = 0  #: segments taken from the memo instead of simulated
    replayed_events: int = 0  #: the part of ``events`` in segments taken from the memo


@dataclass(frozen=True)
class MachineState:
    """Everything a later instruction can depend on, at a point of the dispatch order.

    ``free``: per unit, the cycle its next op may issue; ``done``: its last completion;
    ``tokens``: per (producer, consumer) queue the ready times of the tokens in it; ``channels``:
    per HBM channel its next free cycle; ``fetch``: the dispatcher's clock; ``issued``: per unit
    the issue cycles of its last ``depth`` ops (queue room); ``end``: the latest event so far.
    """

    free: tuple[int, ...]
    done: tuple[int, ...]
    tokens: tuple[tuple[int, ...], ...]
    channels: tuple[int, ...]
    fetch: int
    issued: tuple[tuple[int, ...], ...]
    end: int
    cover: tuple[int, ...]  #: per unit, the end of its latest HBM streaming (busy accounting)

    @classmethod
    def idle(cls, channels: int) -> MachineState:
        n = len(UNITS)
        return cls((0,) * n, (0,) * n, ((),) * (n * n), (0,) * channels, 0, ((),) * n, 0, (0,) * n)

    def origin(self, used: Sequence[int] = ()) -> int:
        """A cycle no later than anything that can still happen to the ``used`` units (all
        later events are >= it): the dispatcher's clock or a used unit's next issue cycle.
        Units without ops (SYS, the idle engine) would pin it to their last op forever."""
        return min(self.fetch, *(self.free[u] for u in used))

    def relative(self, used: Sequence[int] = ()) -> MachineState:
        """This state seen from :meth:`origin` (which becomes cycle 0), earlier times clipped
        (equivalent: every later event of a used unit is at or after the origin) or dropped
        (issue history); the unused units' records are cleared (a program without ops on them
        never reads them)."""
        o = self.origin(used)
        keep = set(used)

        def rel(ts: Sequence[int]) -> tuple[int, ...]:
            return tuple(t - o if t > o else 0 for t in ts)

        def per_unit(ts: Sequence[int]) -> tuple[int, ...]:
            return tuple(t - o if t > o and u in keep else 0 for u, t in enumerate(ts))

        return MachineState(
            per_unit(self.free),
            per_unit(self.done),
            tuple(rel(q) for q in self.tokens),
            rel(self.channels),
            self.fetch - o,
            # issue cycles at or before the origin constrain nothing; they are a prefix (a
            # unit issues in order) and the queue-room check indexes from the end: drop them
            tuple(
                tuple(t - o for t in h if t > o) if u in keep else ()
                for u, h in enumerate(self.issued)
            ),
            self.end - o if self.end > o else 0,
            per_unit(self.cover),
        )

    def shifted(self, by: int) -> MachineState:
        def sh(ts: Sequence[int]) -> tuple[int, ...]:
            return tuple(t + by for t in ts)

        return MachineState(
            sh(self.free),
            sh(self.done),
            tuple(sh(q) for q in self.tokens),
            sh(self.channels),
            self.fetch + by,
            tuple(sh(h) for h in self.issued),
            self.end + by,
            sh(self.cover),
        )


class _Queue:
    __slots__ = ("times", "waiter")

    def __init__(self, times: Sequence[int] = ()) -> None:
        self.times: deque[int] = deque(times)
        self.waiter: simpy.Event | None = None


@dataclass
class _Seg:
    """A memoised segment: its exit state and statistics relative to the entry origin."""

    exit: MachineState
    busy: list[int]
    stall: list[int]
    ops: list[int]
    hbm_bytes: int
    channel_cycles: int
    events: int
    trace: list[tuple[str, str, int, int]]
    ends: list[int]


class SegmentMemo:
    """Results of simulated segments keyed by (segment ops, entry state relative to origin):
    the ops by their :attr:`MOp.key`, or by value when unnumbered.

    The machine is deterministic, so a segment with the same ops entered in the same relative
    state has the same relative timeline: reusing it is exact, not an approximation."""

    def __init__(self) -> None:
        self.table: dict[tuple, _Seg] = {}
        self.hits = 0
        self.misses = 0


def _ops_key(seg: Sequence[MOp]) -> tuple:
    """A segment's ops as a hashable key: their numbers, or the ops themselves (by value) when
    any is unnumbered."""
    keys = tuple([op.key for op in seg])
    return tuple(seg) if -1 in keys else keys


def barrier_cuts(program: Sequence[MOp]) -> list[int]:
    """Indices after which every unit has drained (a full barrier): the program can be cut
    there and its parts simulated one after another with the same timeline.

    The compiler's barrier (:mod:`hwflow.compiler.sync`) is ``SYNC.U`` releasing the hub for
    every other unit U, the hub's ``SYNC`` waiting for and releasing all of them, then ``SYNC.U``
    waiting for the hub. After it, no op starts before every op before it completed (units
    retire in order and release at completion). A cut is made only where the barrier spans
    every unit the program uses.
    """
    used = {op.unit for op in program}
    cuts: list[int] = []
    n = len(program)
    for i, op in enumerate(program):
        if not op.name.startswith("SYNC.") or not op.wait or set(op.wait) != set(op.release):
            continue
        hub, others = op.unit, set(op.wait)
        if used - others - {hub}:
            continue
        k = len(others)
        before = program[max(0, i - k) : i]
        after = program[i + 1 : i + 1 + k]
        if (
            len(before) == k
            and len(after) == k
            and {b.unit for b in before} == others
            and {a.unit for a in after} == others
            and all(b.name.startswith("SYNC.") and b.release == (hub,) for b in before)
            and all(a.name.startswith("SYNC.") and a.wait == (hub,) for a in after)
            and i + 1 + k < n
        ):
            cuts.append(i + 1 + k)
    return cuts


class Machine:
    """Runs a program of :class:`MOp` (in dispatch order) from an idle machine until every
    unit is done."""

    def __init__(self, hw: HardwarePreset, *, trace: bool = False, depth: int | None = None):
        depth = hw.buffers.queue_entries if depth is None else depth
        if depth < 1:
            raise ValueError(f"depth = {depth!r} must be >= 1")
        self.hw = hw
        self.trace_on = trace
        self.depth = depth

    def run(self, program: Sequence[MOp], memo: SegmentMemo | None = None) -> RunStats:
        """Execute ``program`` from an idle machine; return what was measured.

        With ``memo`` the program is cut at full barriers (:func:`barrier_cuts`) and every
        segment already seen in the same relative state is taken from the memo (exact)."""
        n = len(UNITS)
        state = MachineState.idle(self.hw.hbm.channels)
        busy, stall, ops = [0] * n, [0] * n, [0] * n
        hbm_bytes, events = 0, 0
        chan = 0
        trace: list[tuple[str, str, int, int]] = []
        ends: list[int] = []
        bounds = (
            [0, *barrier_cuts(program), len(program)] if memo is not None else [0, len(program)]
        )
        reused = replayed = 0
        used = sorted({op.unit for op in program})
        for a, b in itertools.pairwise(bounds):
            seg = program[a:b]
            shift = state.origin(used)
            rel = state.relative(used)
            hit = None
            if memo is not None:
                key = (_ops_key(seg), rel)
                hit = memo.table.get(key)
            if hit is None:
                res = self._segment(seg, rel)
                if memo is not None:
                    memo.table[key] = res
                    memo.misses += 1
            else:
                res = hit
                memo.hits += 1
                reused += 1
                replayed += res.events
            state = res.exit.shifted(shift)
            for u in range(n):
                busy[u] += res.busy[u]
                stall[u] += res.stall[u]
                ops[u] += res.ops[u]
            chan += res.channel_cycles
            hbm_bytes += res.hbm_bytes
            events += res.events
            if self.trace_on:
                trace.extend((u, nm, s + shift, e + shift) for u, nm, s, e in res.trace)
                ends.extend(d + shift for d in res.ends)
        leftover = {
            f"{UNITS[i // n]}->{UNITS[i % n]}": len(q) for i, q in enumerate(state.tokens) if q
        }
        return RunStats(
            cycles=int(state.end),
            busy={UNITS[u]: busy[u] for u in range(n)},
            stall={UNITS[u]: stall[u] for u in range(n)},
            ops={UNITS[u]: ops[u] for u in range(n)},
            hbm_bytes=hbm_bytes,
            hbm_channel_cycles=chan,
            leftover_tokens=leftover,
            events=events,
            trace=trace,
            ends=ends,
            segments=len(bounds) - 1,
            reused=reused,
            replayed_events=replayed,
        )

    def _segment(self, program: Sequence[MOp], entry: MachineState) -> _Seg:
        """Simulate one segment from a :meth:`MachineState.relative` ``entry`` (cycle 0 is its
        origin); the result is relative to the same origin."""
        return _SegmentRun(self, program, entry).run()


class _SegmentRun:
    """One segment's simulation: the SimPy processes (:meth:`dispatcher`, :meth:`unit`) and
    the state they share, built from a relative entry state (:meth:`Machine._segment`)."""

    def __init__(self, machine: Machine, program: Sequence[MOp], entry: MachineState) -> None:
        n = len(UNITS)
        self.env = simpy.Environment()
        self.program = program
        self.entry = entry
        self.depth = machine.depth
        self.trace_on = machine.trace_on
        self.queues = [[_Queue(entry.tokens[a * n + b]) for b in range(n)] for a in range(n)]
        self.hbm = HbmChannels(machine.hw)
        self.hbm.free = [max(t, 0) for t in entry.channels]
        self.streams: list[list[MOp]] = [[] for _ in range(n)]
        for op in program:
            self.streams[op.unit].append(op)
        # instruction index s of unit u in this segment is hist + s in these lists
        self.hist = [len(h) for h in entry.issued]
        self.avail: list[list[int]] = [[0] * self.hist[u] for u in range(n)]
        self.issued: list[list[int]] = [list(entry.issued[u]) for u in range(n)]
        self.unit_wait: list[simpy.Event | None] = [None] * n
        self.disp_wait: list[simpy.Event | None] = [None]
        self.busy = [0] * n
        self.stall = [0] * n
        self.pos = [0] * n
        self.blocked: dict[int, int] = {}
        self.finished = [False] * n
        self.free = list(entry.free)
        self.done_last = list(entry.done)
        self.cover = list(entry.cover)
        self.trace: list[tuple[str, str, int, int]] = []
        self.ends: list[int] = []
        self.counter = [0]
        self.disp = [entry.fetch, False, -1]  # fetch clock, finished, unit blocked on

    def run(self) -> _Seg:
        """Simulate the segment; its statistics and exit state relative to the entry origin."""
        self.env.process(self.dispatcher())
        for u in range(len(UNITS)):
            if self.streams[u]:
                self.env.process(self.unit(u))
            else:
                self.finished[u] = True
        self.env.run()
        self._check_finished()
        return self._result()

    def dispatcher(self) -> Generator:
        """SYS: fetch words in order, append each op to its unit's queue, stall on a full one."""
        env, depth, avail, issued = self.env, self.depth, self.avail, self.issued
        unit_wait, disp_wait, disp, counter = (
            self.unit_wait,
            self.disp_wait,
            self.disp,
            self.counter,
        )
        tf = self.entry.fetch
        for op in self.program:
            u = op.unit
            tf += op.words
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

    def unit(self, u: int) -> Generator:
        """Unit ``u``: issue its ops in order once queued and holding their tokens; release
        tokens at completion."""
        env, n = self.env, len(UNITS)
        my_queues = [self.queues[src][u] for src in range(n)]
        out_queues = self.queues[u]
        my_avail, my_issued, base = self.avail[u], self.issued[u], self.hist[u]
        counter, disp, disp_wait = self.counter, self.disp, self.disp_wait
        done_prev = self.done_last[u]
        if self.free[u] > env.now:
            counter[0] += 1
            yield env.timeout(self.free[u] - env.now)
        for i, op in enumerate(self.streams[u]):
            self.pos[u] = i
            t = env.now
            while len(my_avail) <= base + i:
                ev = env.event()
                self.unit_wait[u] = ev
                counter[0] += 1
                yield ev
            ready = my_avail[base + i]
            for src in op.wait:
                q = my_queues[src]
                while not q.times:
                    self.blocked[u] = src
                    ev = env.event()
                    q.waiter = ev
                    counter[0] += 1
                    yield ev
                self.blocked.pop(u, None)
                r = q.times.popleft()
                if r > ready:
                    ready = r
            now = env.now
            start = ready if ready > now else now
            if op.hbm is not None and start > now:  # join the channels' FIFOs on arrival
                counter[0] += 1
                yield env.timeout(start - now)
            my_issued.append(start)
            w = disp_wait[0]
            if w is not None and disp[2] == u:
                disp_wait[0] = None
                w.succeed()
            tr = None
            if op.hbm:  # its bursts, requested from one register stage after the start
                bursts = op.bursts or (
                    HbmBurst(0, tuple((p.channel, p.occupancy) for p in op.hbm)),
                )
                at = start + LDST_REQUEST_STAGES
                tr = self.hbm.submit(at, bursts, priority=int(u == Unit.ST))
                counter[0] += 1  # their order with the other unit's is final at the last one
                yield env.timeout(at + len(bursts) - 1 - env.now)
                self.hbm.settle(env.now)
            done = self._issue(u, op, start, t, tr)
            if done < done_prev:
                done = done_prev
            done_prev = done
            for dst in op.release:
                q = out_queues[dst]
                q.times.append(done)
                if q.waiter is not None:
                    w, q.waiter = q.waiter, None
                    w.succeed()
            delay = done - env.now  # one op at a time: the next one after this completes
            if delay > 0:
                counter[0] += 1
                yield env.timeout(delay)
        self.done_last[u] = done_prev
        self.free[u] = env.now
        self.pos[u] = len(self.streams[u])
        self.finished[u] = True

    def _issue(self, u: int, op: MOp, start: int, t: int, tr: Transfer | None = None) -> int:
        """Start ``op`` on unit ``u`` at ``start`` (its unit was free from ``t``; an LD/ST's
        settled transfer ``tr``): account busy, stall and trace; return its completion."""
        cover = self.cover
        if op.hbm is not None:
            if tr is not None:  # requested one register stage after the start (costs.LDST_*)
                done = tr.done + ldst_done_stages(u == Unit.ST) + op.latency
            else:  # an empty transfer: the command register, then done
                tr, done = Transfer(start, start, start), start + LDST_REQUEST_STAGES + 1
            # one op at a time: the unit's earlier transfers finished streaming before ``t``
            self.stall[u] += start - t
            self.busy[u] += tr.streamed - tr.start  # busy: the transfer streaming
            if tr.streamed > cover[u]:
                cover[u] = tr.streamed
            span = (tr.start, tr.streamed)
        else:
            issue_end, done = start + op.beats, start + op.latency  # busy: the beats
            self.busy[u] += op.beats
            self.stall[u] += start - t
            span = (start, issue_end)
        if self.trace_on:
            self.trace.append((UNITS[u], op.name, span[0], max(span[1], span[0] + 1)))
            self.ends.append(done)
        return done

    def _check_finished(self) -> None:
        """SyncError naming every blocked unit (and a blocked dispatcher) unless all finished."""
        if all(self.finished) and self.disp[1]:
            return
        why = [
            f"{UNITS[u]} op {self.pos[u]} ({self.streams[u][self.pos[u]].name}) waits for a"
            f" token from {UNITS[self.blocked[u]]}"
            for u in range(len(UNITS))
            if not self.finished[u] and u in self.blocked
        ]
        if not self.disp[1] and self.disp[2] >= 0:
            why.append(f"the dispatcher waits for room in the full {UNITS[self.disp[2]]} queue")
        raise SyncError("deadlock: " + "; ".join(why))

    def _result(self) -> _Seg:
        """The segment's statistics and exit state."""
        n = len(UNITS)
        program = self.program
        self.busy[UNITS.index("sys")] = sum(op.words for op in program)
        end = max(self.entry.end, self.env.now, self.disp[0], *self.done_last)
        exit_ = MachineState(
            free=tuple(self.free),
            done=tuple(self.done_last),
            tokens=tuple(tuple(self.queues[a][b].times) for a in range(n) for b in range(n)),
            channels=tuple(self.hbm.free),
            fetch=self.disp[0],
            issued=tuple(tuple(h[-self.depth :]) for h in self.issued),
            end=end,
            cover=tuple(self.cover),
        )
        return _Seg(
            exit=exit_,
            busy=self.busy,
            stall=self.stall,
            ops=[len(st) for st in self.streams],
            hbm_bytes=sum(op.hbm_bytes for op in program),
            channel_cycles=sum(op.hbm_occupancy for op in program),
            events=self.counter[0] + n + 1,
            trace=self.trace,
            ends=self.ends,
        )
