"""The cycle model's barrier cuts on hand-made programs (issue 13)."""

from __future__ import annotations

from hwflow.perf.machine import MOp, barrier_cuts

LD, ST, MM, MV, SFU, SYS = range(6)


def _sync(unit: int, wait=(), release=()) -> MOp:
    return MOp(unit, f"SYNC.{('LD', 'ST', 'MM', 'MV', 'SFU')[unit]}", 1, 1, 1, wait, release)


def _barrier(before_units=(LD, MV), after_wait=(SFU,)) -> list[MOp]:
    """The compiler's barrier with SFU as the hub: SYNC.U -> hub, hub <-> all, hub -> SYNC.U."""
    return [
        *(_sync(u, release=(SFU,)) for u in before_units),
        _sync(SFU, wait=(LD, MV), release=(LD, MV)),
        *(_sync(u, wait=after_wait) for u in (LD, MV)),
    ]


def _body() -> list[MOp]:
    return [MOp(LD, "ld", 1, 5, 9, (), (MV,)), MOp(MV, "mv", 1, 7, 12, (LD,)), *_barrier()]


def test_barrier_cuts_only_at_a_whole_barrier():
    """A cut goes after the barrier's last SYNC (index 7 of body + tail) and only when all
    three parts are there: SYNCs releasing the hub from every other unit, the hub, SYNCs
    waiting for the hub."""
    tail = [MOp(MV, "mv2", 1, 2, 2)]
    assert barrier_cuts([*_body(), *tail]) == [7]
    # the before-SYNCs come from LD twice, not from LD and MV: no barrier
    wrong_before = [*_body()[:2], *_barrier(before_units=(LD, LD)), *tail]
    assert barrier_cuts(wrong_before) == []
    # the after-SYNCs do not wait for the hub: no barrier
    no_wait = [*_body()[:2], *_barrier(after_wait=()), *tail]
    assert barrier_cuts(no_wait) == []
    # nothing after the barrier: no cut needed
    assert barrier_cuts(_body()) == []
