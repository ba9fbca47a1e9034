"""The HBM model of the cycle simulator: pseudo-channels that serve transfer pieces in order.

A transfer (one LD or ST instruction) is split by :func:`hwflow.costs.hbm_pieces` into one
piece per pseudo-channel it touches (the split and each piece's channel occupancy, from the
bandwidth model of port, burst, outstanding bursts, refresh, row misses and read/write
turnaround, are defined once there). Every channel is a server of capacity one that serves the
pieces given to it in arrival order; the pieces of one transfer run in parallel on their
channels, and the data of the transfer is on chip ``hbm_latency_cycles`` after its last piece
left its channel, or later when the unit's port still has words (a store: write responses)
of later bursts to carry after a piece's channel finished (:attr:`HbmPiece.after
<hwflow.costs.HbmPiece.after>`, :func:`hwflow.costs.hbm_port_after`): on chip at the latest
of ``end + after`` over the pieces, plus the latency.

Two implementations with the same timeline:

* :class:`HbmChannels` keeps each channel's next free cycle (a reservation table). Because the
  load/store units issue their transfers in program order and a channel serves in arrival
  order, this is exactly a FIFO SimPy resource per channel, at one computation per transfer
  instead of several events per piece: it is what the machine uses.
* :class:`ResourceHbm` is the literal description, one :class:`simpy.Resource` per channel and
  one SimPy process per piece. The tests hold :class:`HbmChannels` to it on random traffic.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence

import simpy

from hwflow.config import HardwarePreset
from hwflow.costs import HbmPiece, hbm_latency_cycles

__all__ = ["HbmChannels", "ResourceHbm", "Transfer"]


class Transfer:
    """When one transfer's pieces were served: ``start`` (first piece enters a channel),
    ``streamed`` (last piece leaves its channel) and ``done`` (data on chip, a store's last
    write response: the latest piece end plus its :attr:`~hwflow.costs.HbmPiece.after` port
    cycles, plus the first-beat latency)."""

    __slots__ = ("done", "start", "streamed")

    def __init__(self, start: int, streamed: int, done: int) -> None:
        self.start, self.streamed, self.done = start, streamed, done

    def __repr__(self) -> str:
        return f"Transfer(start={self.start}, streamed={self.streamed}, done={self.done})"


class HbmChannels:
    """Per-channel FIFO servers as a reservation table (see the module docstring)."""

    def __init__(self, hw: HardwarePreset) -> None:
        self.latency = hbm_latency_cycles(hw)
        self.free = [0] * hw.hbm.channels  #: cycle at which each channel is next free

    def issue(self, now: int, pieces: Sequence[HbmPiece]) -> Transfer:
        """Queue one transfer's pieces at cycle ``now``; return when they are served."""
        if not pieces:
            return Transfer(now, now, now)
        free = self.free
        first = last = port = -1
        for p in pieces:
            c = p.channel
            f = free[c]
            s = f if f > now else now
            e = s + p.occupancy
            free[c] = e
            if first < 0 or s < first:
                first = s
            if e > last:
                last = e
            if e + p.after > port:
                port = e + p.after
        return Transfer(first, last, port + self.latency)


class ResourceHbm:
    """The reference description: one ``simpy.Resource(capacity=1)`` per channel."""

    def __init__(self, env: simpy.Environment, hw: HardwarePreset) -> None:
        self.env = env
        self.latency = hbm_latency_cycles(hw)
        self.channels = [simpy.Resource(env, capacity=1) for _ in range(hw.hbm.channels)]

    def _piece(self, p: HbmPiece, out: list[tuple[int, int, int]]) -> Generator:
        with self.channels[p.channel].request() as req:
            yield req
            start = self.env.now
            yield self.env.timeout(p.occupancy)
            out.append((start, self.env.now, self.env.now + p.after))

    def transfer(self, pieces: Sequence[HbmPiece]) -> Generator:
        """A SimPy process: serve one transfer; its value is the :class:`Transfer`."""
        now = self.env.now
        if not pieces:
            return Transfer(now, now, now)
        spans: list[tuple[int, int, int]] = []
        yield self.env.all_of([self.env.process(self._piece(p, spans)) for p in pieces])
        streamed = max(e for _, e, _ in spans)
        port = max(a for _, _, a in spans)  # the port's last word (response) of the transfer
        return Transfer(min(s for s, _, _ in spans), streamed, port + self.latency)
