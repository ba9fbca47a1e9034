"""The board-to-board links of a multi-board system, simulated with SimPy.

Each board has ``system.ports`` full-duplex ports of ``system.link_gbps`` GB/s per direction;
a ring joins each board's port A to the next board's port B. A message of ``n`` bytes over one
hop takes ``link_latency_ns + n / link_gbps`` (store-and-forward per message; the 64B/66B
coding is inside ``link_gbps``, which is payload).

* **All-reduce** (``ALLRED``): the bidirectional ring algorithm (Patarasuk & Yuan, JPDC 2009,
  as NCCL runs it): the rows split in two halves, each all-reduced around the ring in one
  direction at once, as ``B - 1`` reduce-scatter and ``B - 1`` all-gather steps of
  ``half / B`` bytes. :func:`allreduce_ns` runs those steps as SimPy processes, one per board
  and direction, each waiting for its predecessor's chunk of the previous step and for its
  own port direction (a :class:`simpy.Resource` of capacity 1), so the ring's latency and
  bandwidth terms come out of the simulation, not a formula. The additions of the
  reduce-scatter run in the DMA datapath at link rate (no extra time).
* **Point-to-point** (``SEND``): one hop, :func:`p2p_ns`. ``RECV`` costs nothing on its board:
  the wait for the data is the sender's time, which the system model adds between pipeline
  stages (:mod:`hwflow.perf.system`).

Link energy is **not modelled**: no per-bit energy of the U280's GTY transceivers with a
primary source was found; their static power is part of the board's static power in the
energy table.
"""

from __future__ import annotations

import math
from functools import lru_cache

import simpy

from hwflow.config import HardwarePreset
from hwflow.errors import ConfigError
from hwflow.isa import Concrete
from hwflow.perf.machine import MOp

__all__ = ["allreduce_ns", "link_cycles", "p2p_ns", "price_link"]


def _system(hw: HardwarePreset):
    if hw.system is None:
        raise ConfigError(f"preset {hw.name} has no system: section (board links)")
    return hw.system


def p2p_ns(hw: HardwarePreset, nbytes: int) -> float:
    """One message of ``nbytes`` over one hop (latency + serialisation)."""
    s = _system(hw)
    return s.link_latency_ns + nbytes / s.link_gbps if nbytes else 0.0


@lru_cache(maxsize=4096)
def _allreduce_ns(latency_ns: float, gbps: float, nbytes: int, boards: int) -> float:
    env = simpy.Environment()
    # one Resource per (board, direction): the port that sends to the next board that way
    ports = {(b, d): simpy.Resource(env, capacity=1) for b in range(boards) for d in (0, 1)}
    steps = 2 * (boards - 1)
    # per direction the half of the rows, cut in ``boards`` chunks
    chunk = {d: math.ceil(math.ceil(nbytes / 2) / boards) for d in (0, 1)}
    arrived = {(b, d, k): env.event() for b in range(boards) for d in (0, 1) for k in range(steps)}

    def sender(b: int, d: int):
        nxt = (b + 1) % boards if d == 0 else (b - 1) % boards
        for k in range(steps):
            if k:  # the chunk it forwards (reduced) arrived from the previous board
                yield arrived[(b, d, k - 1)]
            with ports[(b, d)].request() as req:
                yield req
                yield env.timeout(latency_ns + chunk[d] / gbps)
            arrived[(nxt, d, k)].succeed()

    for b in range(boards):
        for d in (0, 1):
            env.process(sender(b, d))
    env.run()
    return float(env.now)


def allreduce_ns(hw: HardwarePreset, nbytes: int, boards: int) -> float:
    """Time of an all-reduce of ``nbytes`` over a ring of ``boards`` (module doc)."""
    if boards <= 1 or nbytes == 0:
        return 0.0
    s = _system(hw)
    return _allreduce_ns(s.link_latency_ns, s.link_gbps, nbytes, boards)


def link_cycles(hw: HardwarePreset, ns: float) -> int:
    """Accelerator cycles covering ``ns`` nanoseconds."""
    return math.ceil(ns * hw.clock_mhz / 1e3)


def price_link(
    hw: HardwarePreset, c: Concrete, words: int, wait: tuple[int, ...], release: tuple[int, ...]
) -> MOp:
    """The priced op of a link instruction: its unit (ST for SEND/ALLRED, LD for RECV) is busy
    for the transfer (module doc)."""
    nbytes = c["rows"] * c["row_bytes"]
    if c.op == "ALLRED":
        ns = allreduce_ns(hw, nbytes, c["peer"])
    elif c.op == "SEND":
        ns = p2p_ns(hw, nbytes)
    else:  # RECV: the wait is the sender's (module doc)
        ns = 0.0
    cyc = link_cycles(hw, ns)
    return MOp(int(c.unit), c.op, words, cyc, cyc, wait, release)
