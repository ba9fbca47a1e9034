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
