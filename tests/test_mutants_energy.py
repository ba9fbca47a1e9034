"""Killing tests for energy.py mutants (see tests/mutation/EQUIVALENT.md): hand-counted values."""

from __future__ import annotations

from hwflow.energy import Actions


def test_add_defaults_to_one_copy_and_scales_by_times():
    """``add`` without ``times`` adds one copy (the cycle model sums its steps so); with
    ``times`` that many: counts worked out by hand."""
    total = Actions(macs={4: 10}, hbm_read_bytes=5)
    total.add(Actions(macs={4: 2, 8: 3}, hbm_read_bytes=7, idle_unit_cycles=11))
    assert total.macs == {4: 12, 8: 3}
    assert (total.hbm_read_bytes, total.idle_unit_cycles) == (12, 11)
    total.add(Actions(macs={8: 1}, sfu_ops=2), times=3)
    assert total.macs == {4: 12, 8: 6}
    assert (total.sfu_ops, total.hbm_read_bytes) == (6, 12)
