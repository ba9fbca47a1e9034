"""Unit synchronisation checks (issue 13): what the deadlock report names, exactly."""

from __future__ import annotations

import pytest

from hwflow.compiler.sync import check_deadlock
from hwflow.errors import SyncError
from hwflow.isa import Unit, make


def test_deadlock_report_names_every_blocked_unit():
    """LD and MV each wait for the other first: both are stuck at their first instruction,
    and the report lists both, in unit order, separated by '; '."""
    cyc = [
        make("SYNC.LD", wait=1 << Unit.MV, release=1 << Unit.MV),
        make("SYNC.MV", wait=1 << Unit.LD, release=1 << Unit.LD),
        make("END"),
    ]
    want = (
        "deadlock: no unit can proceed: LD at pc 0 (SYNC.LD) waits on MV; "
        "MV at pc 1 (SYNC.MV) waits on LD"
    )
    with pytest.raises(SyncError) as e:
        check_deadlock(cyc)
    assert str(e.value) == want


def test_a_loop_body_is_checked_from_its_first_instruction():
    """The body's first instruction releases a token to MV that nothing takes: the body
    changes the token counts, so its iterations differ (LD -> MV goes 0 -> 1)."""
    body = [
        make("LOOP", count=2),
        make("SYNC.LD", release=1 << Unit.MV),
        make("SYNC.SFU"),
        make("ENDLOOP"),
        make("END"),
    ]
    with pytest.raises(SyncError) as e:
        check_deadlock(body)
    assert str(e.value) == (
        "loop at pc 0: its body changes the token counts "
        "({} -> {(<Unit.LD: 0>, <Unit.MV: 3>): 1}), so iterations differ"
    )


@pytest.mark.parametrize("after", [0, 1], ids=["right-after", "one-later"])
def test_instructions_after_a_loop_are_checked(after):
    """A balanced loop, then an LD that releases a token to MV which nothing takes: right after
    the ENDLOOP (pc 4) or one instruction later (pc 5). The walk goes on after the loop, so
    the token is left in its queue at END either way."""
    prog = [
        make("LOOP", count=2),
        make("SYNC.LD", release=1 << Unit.MV),
        make("SYNC.MV", wait=1 << Unit.LD),
        make("ENDLOOP"),
        *[make("SYNC.SFU")] * after,
        make("SYNC.LD", release=1 << Unit.MV),
        make("END"),
    ]
    with pytest.raises(SyncError) as e:
        check_deadlock(prog)
    assert str(e.value) == "tokens left in queues at END: {'LD->MV': 1}"


def test_barrier_instructions_by_hand():
    """LD writes buffer 0 [0, 64), ST reads it (ST waits for LD's token), then a barrier over
    the active units LD, ST and the hub SFU (module doc): SYNC.LD and SYNC.ST release SFU;
    SYNC.SFU waits for both and releases both; SYNC.LD and SYNC.ST wait for SFU."""
    from hwflow.compiler.lower import Node
    from hwflow.compiler.sync import assign_tokens

    ld, st, sfu = 1 << Unit.LD, 1 << Unit.ST, 1 << Unit.SFU
    got = assign_tokens(
        [
            Node("LD", {}, (), ((0, 0, 64),)),
            Node("ST", {}, ((0, 0, 64),), ()),
            Node("BARRIER", {}),
            Node("END", {}),
        ]
    )
    assert [(i.op, i.wait, i.release) for i in got] == [
        ("LD", 0, st),
        ("ST", ld, 0),
        ("SYNC.LD", 0, sfu),
        ("SYNC.ST", 0, sfu),
        ("SYNC.SFU", ld | st, ld | st),
        ("SYNC.LD", sfu, 0),
        ("SYNC.ST", sfu, 0),
        ("END", 0, 0),
    ]


def test_readers_of_one_range_do_not_wait_on_each_other():
    """LD writes buffer 0 [0, 64); MV and then SFU read it. Both reads depend on the write
    only (a read after a read is no conflict): LD releases MV and SFU, each waits for LD, and
    SFU does not wait for MV."""
    from hwflow.compiler.lower import Node
    from hwflow.compiler.sync import assign_tokens

    ld, mv, sfu = 1 << Unit.LD, 1 << Unit.MV, 1 << Unit.SFU
    got = assign_tokens(
        [
            Node("LD", {}, (), ((0, 0, 64),)),
            Node("MV", {}, ((0, 0, 64),), ()),
            Node("SFU", {}, ((0, 0, 64),), ()),
            Node("END", {}),
        ]
    )
    assert [(i.op, i.wait, i.release) for i in got] == [
        ("LD", 0, mv | sfu),
        ("MV", ld, 0),
        ("SFU", ld, 0),
        ("END", 0, 0),
    ]


def test_adjacent_ranges_do_not_conflict():
    """Byte ranges are half-open: LD writes buffer 0 [64, 128) and [256, 320); MV reads
    [0, 64), ending where the first write starts, and [320, 384), starting where the second
    ends. Nothing overlaps, so MV waits for nothing and LD releases nothing."""
    from hwflow.compiler.lower import Node
    from hwflow.compiler.sync import assign_tokens

    got = assign_tokens(
        [
            Node("LD", {}, (), ((0, 64, 128), (0, 256, 320))),
            Node("MV", {}, ((0, 0, 64), (0, 320, 384)), ()),
            Node("END", {}),
        ]
    )
    assert [(i.op, i.wait, i.release) for i in got] == [("LD", 0, 0), ("MV", 0, 0), ("END", 0, 0)]


def test_a_dependency_known_through_a_later_one_gets_no_token():
    """LD writes buffer 0; MV reads it (waits for LD) and writes buffer 1; SFU reads both.
    SFU depends on LD and on MV, but MV already waited for LD: taking the latest dependency
    first, SFU's one wait on MV covers LD, so LD releases only MV and SFU waits only on MV."""
    from hwflow.compiler.lower import Node
    from hwflow.compiler.sync import assign_tokens

    ld, mv, sfu = 1 << Unit.LD, 1 << Unit.MV, 1 << Unit.SFU
    got = assign_tokens(
        [
            Node("LD", {}, (), ((0, 0, 64),)),
            Node("MV", {}, ((0, 0, 64),), ((1, 0, 64),)),
            Node("SFU", {}, ((0, 0, 64), (1, 0, 64)), ()),
            Node("END", {}),
        ]
    )
    assert [(i.op, i.wait, i.release) for i in got] == [
        ("LD", 0, mv),
        ("MV", ld, sfu),
        ("SFU", mv, 0),
        ("END", 0, 0),
    ]
