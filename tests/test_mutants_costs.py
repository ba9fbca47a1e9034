"""costs.py survivors of the mutation check (issue 13), worked out by hand from tiny.yaml."""

from __future__ import annotations

import pytest

from hwflow.config import load_hw
from hwflow.costs import hbm_burst_ns, hbm_run_ns, sfu_passes

#: tiny.yaml: 512 B bursts are device-bound at 14.375 GB/s less the refresh share 260 / 3900
DEVICE_GBPS = 14.375 * 14 / 15


def test_hbm_run_edges_and_default_row_state():
    """An empty run takes no channel time (also when it would open a row); one byte is one
    32-byte atom, one core cycle (10 ns) on tiny, bound by latency / outstanding only when that
    is longer (320 ns / 16 = 20 ns); with 1024-byte buffer words (256 B per channel per cycle)
    1024 B is two device-bound bursts; a new row adds row_miss_ns = 31. Without ``new_row`` the
    row is open."""
    tiny = load_hw("tiny")
    hw = tiny.model_copy(update={"buffers": tiny.buffers.model_copy(update={"word_bytes": 1024})})
    slow = hw.model_copy(update={"hbm": hw.hbm.model_copy(update={"latency_ns": 320})})
    assert hbm_run_ns(hw, 0) == 0.0 and hbm_run_ns(hw, 0, new_row=True) == 0.0
    assert hbm_run_ns(tiny, 1) == pytest.approx(10.0, rel=1e-12)
    assert hbm_run_ns(slow, 1) == pytest.approx(320 / 16, rel=1e-12)
    assert hbm_run_ns(hw, 1024) == pytest.approx(1024 / DEVICE_GBPS, rel=1e-12)
    assert hbm_run_ns(hw, 1024, new_row=True) == pytest.approx(1024 / DEVICE_GBPS + 31)
    assert hbm_burst_ns(hw, 512) == pytest.approx(512 / DEVICE_GBPS, rel=1e-12)
    assert hbm_run_ns(tiny, 1024) == pytest.approx(2 * 160.0, rel=1e-12)  # 2 x 16 core cycles


def test_sfu_passes_default_is_rms_norm():
    """tiny.yaml: norm_passes 2, softmax_passes 2. A norm without ``center`` is RMSNorm (2),
    LayerNorm one more; per-row quantizing ops read twice, the rest once."""
    hw = load_hw("tiny")
    assert (hw.sfu.norm_passes, hw.sfu.softmax_passes) == (2, 2)
    assert sfu_passes(hw, "norm") == 2 and sfu_passes(hw, "norm", True) == 3
    assert sfu_passes(hw, "softmax") == 2
    assert [sfu_passes(hw, f) for f in ("mul", "reluq", "rope", "silu", "add")] == [2, 2, 1, 1, 1]
