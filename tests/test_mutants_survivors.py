"""Survivors of the mutation check (issue 13) in the compiler: the HBM image's split over the
channels and the barrier rule of token assignment, with expectations worked out by hand."""

from __future__ import annotations

import dataclasses

import pytest

from hwflow.compiler import compile_model
from hwflow.compiler.lower import Node
from hwflow.compiler.sync import assign_tokens
from hwflow.config import load_hw, load_model, load_plan
from hwflow.errors import SyncError


@pytest.fixture(scope="module")
def tiny_layout():
    hw = load_hw("tiny")
    return compile_model(load_model("tiny-llama"), load_plan("flightllm"), hw, 16).layout


@pytest.mark.parametrize(
    ("total", "want"),
    [
        # 10 granules of 256 B and one byte more: 11 granules dealt round-robin over 4
        # channels from channel 0: 3, 3, 3, 2 granules
        (10 * 256 + 1, [768, 768, 768, 512]),
        # 8 whole granules: 2 each, nothing left over
        (8 * 256, [512, 512, 512, 512]),
        # one byte: one granule in channel 0
        (1, [256, 0, 0, 0]),
        (0, [0, 0, 0, 0]),
    ],
)
def test_channel_bytes_deals_granules_round_robin(tiny_layout, total, want):
    per = dataclasses.replace(tiny_layout, total=total).channel_bytes(4, 256)
    assert per == want and all(type(b) is int for b in per)  # whole bytes (reported in JSON)


def test_channel_bytes_of_a_compiled_image_on_tiny(tiny_layout):
    """tiny.yaml: 4 channels interleaved every 256 B. The per-channel bytes add up to the
    image rounded up to whole granules, the lower channels take the leftover granules, and
    they differ by at most one granule."""
    per = tiny_layout.channel_bytes(4, 256)
    assert sum(per) == -(-tiny_layout.total // 256) * 256
    assert per == sorted(per, reverse=True) and per[0] - per[-1] <= 256


def _ld(lo: int) -> Node:
    return Node("LD", {}, (), ((0, lo, lo + 64),))


def test_loop_and_endloop_must_follow_a_barrier():
    """The lowering puts a BARRIER before every LOOP and ENDLOOP (sync.py's module doc); a
    node list without one is refused, naming the node, also when the LOOP is the first node
    (whose predecessor in Python's indexing would be the last node, here a BARRIER)."""
    with pytest.raises(SyncError, match=r"^node 1: LOOP not preceded by a barrier$"):
        assign_tokens([_ld(0), Node("LOOP", {"count": 2}), _ld(64), Node("END", {})])
    with pytest.raises(SyncError, match=r"^node 3: ENDLOOP not preceded by a barrier$"):
        assign_tokens(
            [Node("BARRIER", {}), Node("LOOP", {"count": 2}), _ld(0), Node("ENDLOOP", {})]
        )
    with pytest.raises(SyncError, match=r"^node 0: LOOP not preceded by a barrier$"):
        assign_tokens([Node("LOOP", {"count": 2}), _ld(0), Node("BARRIER", {})])
    ok = assign_tokens(
        [
            Node("BARRIER", {}),
            Node("LOOP", {"count": 2}),
            _ld(0),
            Node("BARRIER", {}),
            Node("ENDLOOP", {}),
            Node("END", {}),
        ]
    )
    assert [i.op for i in ok if i.op in ("LOOP", "ENDLOOP", "END")] == ["LOOP", "ENDLOOP", "END"]


# --------------------------------------------------------------------------------------------
# perf/machine.py: the relative entry state the segment memo is keyed by


def test_relative_state_clips_the_past_and_clears_unused_units():
    """Units 0 (LD) and 3 (MV) used; the origin is min(fetch 110, free 100, free 120) = 100.
    Times after it move by -100; earlier ones (LD's last completion 90, its streaming cover
    99, a token ready at 95, a channel free since 80) become 0, issue cycles at or before the
    origin are dropped, and every record of the unused unit 1 (free 150, done 160) is
    cleared, so two entries that differ only there key the memo alike."""
    from hwflow.perf.machine import UNITS, MachineState

    n = len(UNITS)
    tokens = [()] * (n * n)
    tokens[0 * n + 3] = (95, 105)  # LD -> MV
    state = MachineState(
        free=(100, 150, 0, 120, 0, 0),
        done=(90, 160, 0, 130, 0, 0),
        tokens=tuple(tokens),
        channels=(80, 115),
        fetch=110,
        issued=((90, 100), (150,), (), (100, 120), (), ()),
        end=160,
        cover=(99, 155, 0, 125, 0, 0),
    )
    assert state.origin((0, 3)) == 100
    rel = state.relative((0, 3))
    want_tokens = [()] * (n * n)
    want_tokens[0 * n + 3] = (0, 5)
    assert rel == MachineState(
        free=(0, 0, 0, 20, 0, 0),
        done=(0, 0, 0, 30, 0, 0),
        tokens=tuple(want_tokens),
        channels=(0, 15),
        fetch=10,
        issued=((), (), (), (20,), (), ()),
        end=60,
        cover=(0, 0, 0, 25, 0, 0),
    )


def test_dispatcher_is_woken_only_by_the_unit_it_waits_for():
    """Queue depth 1. The dispatcher queues MV's ``m`` and LD's ``a`` and blocks at LD's ``b``
    until ``a`` issues; ``a`` waits for ``m``'s token. At cycle 0 MV issues ``m`` (10 beats):
    the dispatcher waits on LD's queue, not MV's, so it must not be woken. LD gets the token,
    issues ``a`` at 10 (that wakes the dispatcher: ``b`` queued at 10) and ``b`` at 15.

    SimPy waits counted (``events``): the dispatcher's one wait, LD's wait for the token, MV's
    10 beats, LD's two issue waits (0 -> 15 and 15 -> 20): 5, plus one start per unit process
    (6) and the dispatcher (1) = 12. A spurious wake-up would add a second dispatcher wait."""
    from hwflow.perf.machine import Machine, MOp

    ld, mv = 0, 3
    prog = [
        MOp(mv, "m", 0, 10, 10, (), (ld,)),
        MOp(ld, "a", 0, 5, 5, (mv,)),
        MOp(ld, "b", 0, 5, 5),
    ]
    r = Machine(load_hw("tiny"), trace=True, depth=1).run(prog)
    assert sorted(r.trace) == [("ld", "a", 10, 15), ("ld", "b", 15, 20), ("mv", "m", 0, 10)]
    assert r.cycles == 20
    assert r.events == 12


# --------------------------------------------------------------------------------------------
# perf/sim.py: decode rooflines, interpolated only when the bytes are affine


def test_rooflines_are_computed_at_every_position_when_not_affine(monkeypatch):
    """A step cost quadratic in the context (no shipped model has one today: the KV read is
    linear in the keys; a windowed KV read would not be) must not be interpolated: every
    position is computed, each with the model, plan and preset it was given. An affine cost is
    computed at the ends and at the two check points only (positions 10, 13, 16, 19)."""
    from hwflow.perf import sim

    calls: list[tuple] = []

    def quadratic(cfg, plan, hw, p):
        calls.append((cfg, plan, hw, p))
        return float(p * p)

    monkeypatch.setattr(sim, "_roofline_cycles", quadratic)
    positions = list(range(10, 20))
    assert sim._rooflines("cfg", "plan", "hw", positions) == {p: float(p * p) for p in positions}
    assert {c[:3] for c in calls} == {("cfg", "plan", "hw")}
    assert {c[3] for c in calls} == set(positions)

    calls.clear()

    def affine(cfg, plan, hw, p):
        calls.append((cfg, plan, hw, p))
        return 3.0 * p + 1.0

    monkeypatch.setattr(sim, "_roofline_cycles", affine)
    out = sim._rooflines("cfg", "plan", "hw", positions)
    assert out == pytest.approx({p: 3.0 * p + 1.0 for p in positions}, rel=1e-12)
    assert sorted(c[3] for c in calls) == [10, 13, 16, 19]


def _machine_run(prog, depth):
    from hwflow.perf.machine import Machine

    return Machine(load_hw("tiny"), trace=True, depth=depth).run(prog)


def test_unit_waits_for_a_dispatcher_blocked_elsewhere():
    """Depth 1: LD x0, x1, x2 (20 beats each) around MV v0, v1 (1 beat). The dispatcher queues
    x0 and v0, blocks on LD's queue until x0 issues (cycle 0), queues x1 and blocks again
    until x1 issues at 20; MV finishes v0 at 1 and waits for v1, queued at 20.

    Waits counted: dispatcher x2 (2), LD's three 20-beat issues (3), MV's v0 beat (1), MV
    waiting for v1 to be queued (1), MV's v1 beat (1): 8, plus 6 unit starts and the
    dispatcher's: 15. LD ends at 60."""
    from hwflow.perf.machine import MOp

    ld, mv = 0, 3
    prog = [
        MOp(ld, "x0", 0, 20, 20),
        MOp(mv, "v0", 0, 1, 1),
        MOp(ld, "x1", 0, 20, 20),
        MOp(ld, "x2", 0, 20, 20),
        MOp(mv, "v1", 0, 1, 1),
    ]
    r = _machine_run(prog, 1)
    assert sorted(r.trace, key=lambda t: (t[2], t[1])) == [
        ("mv", "v0", 0, 1),
        ("ld", "x0", 0, 20),
        ("mv", "v1", 20, 21),
        ("ld", "x1", 20, 40),
        ("ld", "x2", 40, 60),
    ]
    assert (r.cycles, r.events) == (60, 15)


def test_dispatcher_queues_twice_for_a_unit_it_woke():
    """Depth 1: SFU s (10 beats) releases LD's a; LD b; MV m1, m2 (3 beats). The dispatcher
    blocks at b until a issues (at 10, once s's token is known: cycle 0 of the simulation),
    then queues b and m1 (waking MV, which waits for its first op) and blocks at m2 until m1
    issues (at 10), then queues m2 for the MV it woke before.

    Waits: dispatcher 2, LD's token 1, MV's first op 1, SFU's 10 beats 1, LD's a and b 2,
    MV's m1 and m2 2: 9, + 7 = 16. Timeline: s 0-10, a 10-15, m1 10-13, m2 13-16, b 15-20."""
    from hwflow.perf.machine import MOp

    ld, mv, sfu = 0, 3, 4
    prog = [
        MOp(sfu, "s", 0, 10, 10, (), (ld,)),
        MOp(ld, "a", 0, 5, 5, (sfu,)),
        MOp(ld, "b", 0, 5, 5),
        MOp(mv, "m1", 0, 3, 3),
        MOp(mv, "m2", 0, 3, 3),
    ]
    r = _machine_run(prog, 1)
    assert sorted(r.trace, key=lambda t: (t[2], t[1])) == [
        ("sfu", "s", 0, 10),
        ("ld", "a", 10, 15),
        ("mv", "m1", 10, 13),
        ("mv", "m2", 13, 16),
        ("ld", "b", 15, 20),
    ]
    assert (r.cycles, r.events) == (20, 16)


def test_zero_cycle_ops_issue_back_to_back():
    """Depth 2, three LD ops of 0 beats and 0 latency: a and b are queued, the dispatcher
    blocks at c; LD issues a (waking it) and b in the same cycle, then waits for c to be
    queued. Waits: dispatcher 1, LD 1: 2 + 7 = 9 events; nothing takes a cycle: 0 cycles."""
    from hwflow.perf.machine import MOp

    prog = [MOp(0, n, 0, 0, 0) for n in ("a", "b", "c")]
    r = _machine_run(prog, 2)
    assert (r.cycles, r.events) == (0, 9)


def test_hbm_op_events_with_and_without_a_wait_for_its_start():
    """An LD of 256 B from an idle machine starts at once: its waits are its bursts' arrival
    (the order with the other unit's bursts is final at the last one) and its issue cycles
    (2 + 7 = 9 events). Behind MV's 10-beat op (token), it joins the channels' FIFOs at 10:
    LD's token wait, MV's 10 beats, LD's wait for cycle 10, its bursts' arrival, its issue:
    5 + 7 = 12."""
    from hwflow.costs import hbm_pieces
    from hwflow.perf.machine import MOp

    pieces = tuple(hbm_pieces(load_hw("tiny"), 0, 256))
    ld = MOp(0, "ld", 0, 0, 0, hbm=pieces, hbm_bytes=256)
    assert _machine_run([ld], 1).events == 9
    mv = MOp(3, "mv", 0, 10, 10, (), (0,))
    waiting = MOp(0, "ld", 0, 0, 0, (3,), (), pieces, 256)
    r = _machine_run([mv, waiting], 1)
    assert r.events == 12 and r.trace[-1][2] >= 10
