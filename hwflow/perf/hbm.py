"""The HBM model of the cycle simulator: pseudo-channels that serve transfer bursts in order.

A transfer (one LD or ST instruction) is split by :func:`hwflow.costs.hbm_pieces` into one
piece per pseudo-channel it touches (the split and each piece's channel occupancy, from the
bandwidth model of port, burst, outstanding bursts, refresh, row misses and read/write
turnaround, are defined once there), and by :func:`hwflow.costs.hbm_bursts` into the AXI bursts
the LD/ST unit issues, one per cycle, each holding its channels for its part of their pieces.
Every channel is a server of capacity one that serves the bursts given to it in arrival order
(an LD burst before an ST burst arriving in the same cycle), each no earlier than its
transfer's first request; the bursts of one transfer run in parallel on their channels. A
burst's data (a store: its write response) is there ``hbm_latency_cycles`` after its channels
streamed it, and the unit's one port carries a read's words in order, one per cycle (a
store's write responses one per cycle), so the transfer is on chip once its last burst is.

Two implementations:

* :class:`HbmChannels` keeps each channel's next free cycle (a reservation table) and the
  bursts submitted but not yet arrived: a transfer's bursts are booked in arrival order with
  every other transfer's once that order is final (:meth:`HbmChannels.settle`, which the
  machine calls when a transfer's last burst has arrived). It is what the machine uses.
* :class:`ResourceHbm` is the literal description of one transfer at a time as a whole (one
  :class:`simpy.Resource` per channel and one SimPy process per piece). The tests hold
  :meth:`HbmChannels.issue` (a transfer as one burst) to it on random traffic.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Generator, Sequence

import simpy

from hwflow.config import HardwarePreset
from hwflow.costs import HbmBurst, HbmPiece, hbm_latency_cycles

__all__ = ["HbmChannels", "ResourceHbm", "Transfer"]


class Transfer:
    """When one transfer's bursts were served: ``start`` (first piece enters a channel),
    ``streamed`` (last piece leaves its channel) and ``done`` (data on chip, a store's last
    write response); final once the transfer is settled (:meth:`HbmChannels.settle`)."""

    __slots__ = ("done", "left", "port", "start", "streamed", "t0")

    def __init__(self, start: int, streamed: int, done: int) -> None:
        self.start, self.streamed, self.done = start, streamed, done
        self.t0 = start  #: the first request: no burst of it starts earlier
        self.port = -1  #: the port's last word (response) of the bursts booked so far
        self.left = 0  #: bursts not yet booked

    def __repr__(self) -> str:
        return f"Transfer(start={self.start}, streamed={self.streamed}, done={self.done})"


class HbmChannels:
    """Per-channel FIFO servers as a reservation table, bursts booked in arrival order (see
    the module docstring)."""

    def __init__(self, hw: HardwarePreset) -> None:
        self.latency = hbm_latency_cycles(hw)
        self.free = [0] * hw.hbm.channels  #: cycle at which each channel is next free
        #: bursts submitted, not yet booked: (arrival, port priority, order, burst, transfer)
        self.pending: list[tuple[int, int, int, HbmBurst, Transfer]] = []
        self._order = itertools.count()

    def submit(self, now: int, bursts: Sequence[HbmBurst], priority: int = 0) -> Transfer:
        """A transfer requested at cycle ``now``: its bursts arrive ``now``, ``now + 1``, ...
        (``priority``: of two bursts arriving in one cycle the lower one is booked first).
        Returns its :class:`Transfer`, final after :meth:`settle` up to its last arrival."""
        tr = Transfer(now, now, now)
        tr.start, tr.streamed, tr.left = -1, -1, len(bursts)
        for k, b in enumerate(bursts):
            heapq.heappush(self.pending, (now + k, priority, next(self._order), b, tr))
        return tr

    def settle(self, upto: int) -> None:
        """Book every submitted burst arriving at or before cycle ``upto``, in arrival order
        (no transfer requested later can arrive that early)."""
        pending, free, lat = self.pending, self.free, self.latency
        while pending and pending[0][0] <= upto:
            _, _, _, b, tr = heapq.heappop(pending)
            ready = -1
            for c, occ in b.pieces:
                f = free[c]
                s = f if f > tr.t0 else tr.t0
                e = s + occ
                free[c] = e
                if tr.start < 0 or s < tr.start:
                    tr.start = s
                if e > tr.streamed:
                    tr.streamed = e
                if e > ready:
                    ready = e
            # the port carries the burst's words (response) after the earlier bursts'
            tr.port = ready if tr.port < 0 or tr.port + b.port < ready else tr.port + b.port
            tr.left -= 1
            if not tr.left:
                tr.done = tr.port + lat

    def issue(self, now: int, pieces: Sequence[HbmPiece]) -> Transfer:
        """A transfer of ``pieces`` as one burst without port cycles at cycle ``now``, booked
        at once: its pieces queue at their channels now and its data is on chip one latency
        after the last one streamed."""
        if not pieces:
            return Transfer(now, now, now)
        tr = self.submit(now, [HbmBurst(0, tuple((p.channel, p.occupancy) for p in pieces))])
        self.settle(now)
        return tr


class ResourceHbm:
    """The reference description: one ``simpy.Resource(capacity=1)`` per channel."""

    def __init__(self, env: simpy.Environment, hw: HardwarePreset) -> None:
        self.env = env
        self.latency = hbm_latency_cycles(hw)
        self.channels = [simpy.Resource(env, capacity=1) for _ in range(hw.hbm.channels)]

    def _piece(self, p: HbmPiece, out: list[tuple[int, int]]) -> Generator:
        with self.channels[p.channel].request() as req:
            yield req
            start = self.env.now
            yield self.env.timeout(p.occupancy)
            out.append((start, self.env.now))

    def transfer(self, pieces: Sequence[HbmPiece]) -> Generator:
        """A SimPy process: serve one transfer; its value is the :class:`Transfer`."""
        now = self.env.now
        if not pieces:
            return Transfer(now, now, now)
        spans: list[tuple[int, int]] = []
        yield self.env.all_of([self.env.process(self._piece(p, spans)) for p in pieces])
        streamed = max(e for _, e in spans)
        return Transfer(min(s for s, _ in spans), streamed, streamed + self.latency)
