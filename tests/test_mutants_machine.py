"""The cycle model on hand-made programs: barrier cuts, tokens across cuts, reports (issue 13)."""

from __future__ import annotations

import pytest

from hwflow.config import load_hw
from hwflow.errors import SyncError
from hwflow.perf.machine import Machine, MOp, SegmentMemo, barrier_cuts

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


def test_tokens_carried_across_a_cut():
    """LD releases two tokens to MV before the barrier and MV takes one; the other crosses the
    cut and feeds MV's op after it. Simulated whole or in segments (memo), the same timeline."""
    hw = load_hw("tiny")
    prog = [
        MOp(LD, "ld1", 1, 5, 9, (), (MV,)),
        MOp(LD, "ld2", 1, 5, 9, (), (MV,)),
        MOp(MV, "mv1", 1, 7, 12, (LD,)),
        *_barrier(),
        MOp(MV, "mv2", 1, 3, 4, (LD,)),
    ]
    assert barrier_cuts(prog) == [8]
    plain = Machine(hw, trace=True).run(prog)
    cut = Machine(hw, trace=True).run(prog, SegmentMemo())
    assert cut.segments == 2 and cut.trace == plain.trace and cut.cycles == plain.cycles


def test_zero_beat_op_is_drawn_one_cycle_wide():
    r = Machine(load_hw("tiny"), trace=True).run([MOp(SFU, "nop", 0, 0, 0)])
    assert r.trace == [("sfu", "nop", 0, 1)]


def test_dispatcher_blocked_on_the_ld_queue_is_reported():
    """Depth 1: the second LD cannot be queued until the first issues, which waits for an SFU
    op behind them in program order: the dispatcher is named as blocked on the LD queue."""
    prog = [MOp(LD, "a", 1, 1, 1, (SFU,)), MOp(LD, "b", 1, 1, 1), MOp(SFU, "s", 1, 1, 1, (), (LD,))]
    with pytest.raises(SyncError, match="the dispatcher waits for room in the full ld queue"):
        Machine(load_hw("tiny"), depth=1).run(prog)


def test_event_count_of_a_trivial_run():
    """``events`` counts the SimPy waits of a run plus one start per unit process (6) and
    the dispatcher (1). Two back-to-back 5-beat SFU ops on an idle machine: the SFU waits
    out each op's beats once (2 waits), nothing else ever waits: 2 + 6 + 1 = 9."""
    r = Machine(load_hw("tiny")).run([MOp(SFU, "a", 0, 5, 5), MOp(SFU, "b", 0, 5, 5)])
    assert r.events == 9 and r.cycles == 10
    # a 0-beat op has nothing to wait out: 0 + 6 + 1
    assert Machine(load_hw("tiny")).run([MOp(SFU, "nop", 0, 0, 0)]).events == 7


def test_memo_bookkeeping_on_compiled_steps(tmp_path, monkeypatch):
    """Steps of tiny-llama on tiny cut at their barriers, one memo for all (as the simulator
    does): in each step every segment is either simulated (a memo miss) or taken from the
    memo (a hit, counted as reused), and replayed events are a part of the step's events."""
    from hwflow.config import load_model, load_plan
    from hwflow.isa import Runtime
    from hwflow.perf.sim import compile_cached, run_step

    monkeypatch.setenv("HWFLOW_CACHE", str(tmp_path))
    hw = load_hw("tiny")
    prog = compile_cached(load_model("tiny-llama"), load_plan("flightllm"), hw, 512)
    memo = SegmentMemo()
    segments = 0
    for phase, rt in [
        ("prefill", Runtime(100, 0)),
        ("decode", Runtime(1, 99)),
        ("decode", Runtime(1, 300)),
    ]:
        misses, hits = memo.misses, memo.hits
        s = run_step(hw, prog, phase, rt, memo=memo).stats
        assert (memo.misses - misses) + (memo.hits - hits) == s.segments
        assert s.reused == memo.hits - hits
        assert 0 <= s.replayed_events < s.events
        segments += s.segments
    assert memo.misses + memo.hits == segments


def test_event_count_of_a_segmented_run():
    """Cut after a barrier, the second segment starts with LD and MV still busy (MV's last
    SYNC runs 10 beats): each waits once for its entry free cycle, then once for its op's
    beats: 4 waits + 7 starts = 11 events. The first segment is the run of the ops before
    the cut from idle: LD waits out ld1 and two SYNCs (3) and once for the hub's token, MV
    waits out mv1 and two SYNCs (3), the hub waits for LD's and MV's tokens (2) and out its
    beat (1): 10 waits + 7 = 17. Whole, the machine has no entry waits: 19."""
    hw = load_hw("tiny")
    barrier = _barrier()
    barrier[-1] = MOp(MV, "SYNC.MV", 1, 10, 10, (SFU,))
    head = [MOp(LD, "ld1", 1, 5, 9, (), (MV,)), MOp(MV, "mv1", 1, 7, 12, (LD,)), *barrier]
    prog = [*head, MOp(MV, "mv2", 1, 3, 4), MOp(LD, "ld3", 1, 2, 2)]
    assert barrier_cuts(prog) == [7]
    cut = Machine(hw).run(prog, SegmentMemo())
    assert cut.segments == 2
    assert Machine(hw).run(head).events == 17
    assert cut.events == 17 + 11
    assert Machine(hw).run(prog).events == 19


def test_deadlock_report_names_only_units_waiting_for_tokens():
    """Depth 1: LD gets SFU's token for its first op, then waits for its second op to be
    queued; the dispatcher cannot queue it, MV's queue is full behind an op that waits for
    a token SFU never sends. Only MV waits for a token; LD is not named."""
    prog = [
        MOp(SFU, "s1", 1, 1, 1, (), (LD,)),
        MOp(LD, "a", 1, 1, 1, (SFU,)),
        MOp(MV, "m1", 1, 1, 1, (SFU,)),
        MOp(MV, "m2", 1, 1, 1),
        MOp(LD, "b", 1, 1, 1),
    ]
    with pytest.raises(SyncError) as err:
        Machine(load_hw("tiny"), depth=1).run(prog)
    assert str(err.value) == (
        "deadlock: mv op 0 (m1) waits for a token from sfu; "
        "the dispatcher waits for room in the full mv queue"
    )


def test_ops_key_numbers_or_values():
    """A segment's memo key: the ops' numbers when all are numbered, else the ops themselves
    (two unnumbered segments never share a key by their -1s)."""
    from dataclasses import replace

    from hwflow.perf.machine import _ops_key

    a, b = MOp(SFU, "a", 0, 5, 5), MOp(SFU, "b", 0, 3, 3)
    na, nb = replace(a, key=7), replace(b, key=9)
    assert _ops_key([na, nb]) == (7, 9)
    assert _ops_key([a, b]) == (a, b)
    assert _ops_key([na, b]) == (na, b)


def test_a_barrier_at_the_start_is_cut_after():
    """The barrier's first SYNC is the program's first op (index 0): the cut goes after its
    last SYNC (index 5)."""
    assert barrier_cuts([*_barrier(), MOp(MV, "mv2", 1, 2, 2)]) == [5]


def test_fetch_bound_bodies_reuse_their_segments():
    """Four bodies (LD op, MV op, barrier) of 10-word ops and a 1-word MV op: 71 words, so
    the dispatcher's fetch (one word a cycle) is the bottleneck: each body takes its 70
    words, and the run 4 x 70 + 1 + the last op's 2 cycles = 283. Cut at the 4 barriers:
    the first body starts idle, every later one after a barrier in the same relative state,
    so bodies 3 and 4 are taken from the memo (2 reused), each replaying the events the
    fourth body adds to a run of three. Op counts per unit: 3 LD, 3 MV (op, two SYNCs) and
    1 SFU per body, plus the last MV op."""
    from dataclasses import replace

    hw = load_hw("tiny")
    body = [replace(op, words=10) for op in _body()]
    tail = [MOp(MV, "mv2", 1, 2, 2)]
    r4 = Machine(hw).run([*(body * 4), *tail], SegmentMemo())
    r3 = Machine(hw).run([*(body * 3), *tail], SegmentMemo())
    assert (r4.cycles, r4.segments, r4.reused) == (283, 5, 2)
    assert r4.replayed_events == 2 * (r4.events - r3.events) > 0
    assert r4.ops == {"ld": 12, "st": 0, "mm": 0, "mv": 13, "sfu": 4, "sys": 0}
    assert Machine(hw).run([*(body * 4), *tail]).cycles == 283


@pytest.mark.parametrize("depth", [2, 3])
def test_segments_equal_the_whole_run_at_small_queue_depths(depth, tmp_path, monkeypatch):
    """tiny-llama's decode step on tiny with instruction queues of 2 or 3 entries: the
    dispatcher runs ahead into full queues, so the issue times carried across a cut decide
    when the next segment's first ops are queued. Cut at the barriers (memo) or whole, the
    same cycles, trace and stalls."""
    from hwflow.config import load_model, load_plan
    from hwflow.isa import Runtime, expand
    from hwflow.perf.lower import lower
    from hwflow.perf.sim import compile_cached

    monkeypatch.setenv("HWFLOW_CACHE", str(tmp_path))
    hw = load_hw("tiny")
    prog = compile_cached(load_model("tiny-llama"), load_plan("flightllm"), hw, 512)
    rt = Runtime(1, 99)
    ops = lower(hw, expand(prog.select("decode", rt), rt))[0]
    whole = Machine(hw, depth=depth, trace=True).run(ops)
    cut = Machine(hw, depth=depth, trace=True).run(ops, SegmentMemo())
    assert cut.segments > 1
    assert (cut.cycles, cut.trace, cut.stall) == (whole.cycles, whole.trace, whole.stall)


def test_waiting_for_the_previous_transfer_is_no_stall():
    """tiny, 1-word ops: ld1 is fetched at cycle 1 (its one cycle of waiting is a stall),
    starts there and streams [2, 22) on channel 0 (requested one stage after its start), done
    at 22 + 11 + 2 = 35. SFU's op is fetched at 2 and runs [2, 7), then releases LD. ld2 (its
    token there since 7) starts when ld1 is done, 35 (a unit runs one op at a time), and
    streams [36, 40): waiting for its own unit is not a stall. LD's stall is 1, SFU's 2."""
    from hwflow.costs import HbmPiece

    def ld(name, ch, occ, wait=()):
        p = HbmPiece(channel=ch, nbytes=64, occupancy=occ, same_channel=True)
        return MOp(LD, name, 1, 1, 0, wait, (), hbm=(p,), hbm_bytes=64, hbm_occupancy=occ)

    prog = [ld("ld1", 0, 20), MOp(SFU, "s", 1, 5, 5, (), (LD,)), ld("ld2", 1, 4, (SFU,))]
    r = Machine(load_hw("tiny"), trace=True).run(prog)
    assert r.trace == [("sfu", "s", 2, 7), ("ld", "ld1", 2, 22), ("ld", "ld2", 36, 40)]
    assert (r.stall["ld"], r.stall["sfu"]) == (1, 2)


def test_only_a_sync_op_is_a_barrier_hub():
    """The compiler's barrier has a SYNC as its hub; an SFU op that does work, waiting for and
    releasing LD and MV between the same SYNCs, is not taken for one: no cut."""
    tail = [MOp(MV, "mv2", 1, 2, 2)]
    b = _barrier()
    b[2] = MOp(SFU, "work", 1, 4, 4, (LD, MV), (LD, MV))
    assert barrier_cuts([*_body()[:2], *b, *tail]) == []


def test_an_empty_transfer_completes_after_its_command_stage():
    """An LD without pieces (0 bytes), fetched and started at cycle 1: its command register
    stage (1 cycle), then done at 1 + 1 + 1 = 3, where its token lets SFU's op (fetched at
    2) start: SFU runs [3, 5)."""
    prog = [MOp(LD, "e", 1, 1, 0, (), (SFU,), hbm=()), MOp(SFU, "s", 1, 2, 2, (LD,))]
    r = Machine(load_hw("tiny"), trace=True).run(prog)
    assert r.trace == [("ld", "e", 1, 2), ("sfu", "s", 3, 5)] and r.cycles == 5


def test_barrier_cuts_skip_look_alikes():
    """No cut after a barrier whose hub releases only some of the units it waited for, nor
    after one whose SYNC before the hub releases nothing; a hub over some of the program's
    units does not stop the search for a later full barrier."""
    tail = [MOp(MV, "mv2", 1, 2, 2)]
    half = _barrier()
    half[2] = _sync(SFU, wait=(LD, MV), release=(LD,))
    assert barrier_cuts([*_body()[:2], *half, *tail]) == []
    mute = _barrier()
    mute[1] = _sync(MV)
    assert barrier_cuts([*_body()[:2], *mute, *tail]) == []
    # an LD <-> SFU handshake in a program that also uses MV, then the full barrier (at 3..7)
    partial = [_sync(LD, release=(SFU,)), _sync(SFU, wait=(LD,), release=(LD,)),
               _sync(LD, wait=(SFU,))]  # fmt: skip
    assert barrier_cuts([*partial, *_barrier(), *tail]) == [8]


def test_machine_defaults_and_bad_depth():
    """A machine keeps no trace unless asked; a queue depth below 1 is refused by value."""
    r = Machine(load_hw("tiny")).run([MOp(SFU, "a", 0, 5, 5)])
    assert r.trace == []
    with pytest.raises(ValueError) as err:
        Machine(load_hw("tiny"), depth=0)
    assert str(err.value) == "depth = 0 must be >= 1"


def test_memo_counts_hits_and_misses():
    """The fetch-bound program of four bodies (test above): 3 segments simulated (misses) and
    2 taken from the memo (hits); run again on the same memo, all 5 are hits."""
    from dataclasses import replace

    hw = load_hw("tiny")
    prog = [*(replace(op, words=10) for op in _body() * 4), MOp(MV, "mv2", 1, 2, 2)]
    memo = SegmentMemo()
    Machine(hw).run(prog, memo)
    assert (memo.misses, memo.hits) == (3, 2)
    Machine(hw).run(prog, memo)
    assert (memo.misses, memo.hits) == (3, 7)
