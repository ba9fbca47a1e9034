"""The HBM bandwidth model (hwflow.costs) against figures derived by hand from the cited
device facts (docs/SOURCES.md), and ``hwflow bench hbm``."""

from __future__ import annotations

import pytest

from hwflow.cli import main
from hwflow.config import MAPPINGS, load_hw
from hwflow.costs import hbm_achievable_gbps, hbm_stream_gbps
from hwflow.errors import ConfigError

#: U280 device time per byte: 14.375 GB/s less the refresh share 260 / 3900 ns
DEV = 14.375 * (1 - 260 / 3900)  # 13.4167 GB/s


def _with(hw, **hbm):
    return hw.model_copy(update={"hbm": hw.hbm.model_copy(update=hbm)})


def test_long_sequential_reads_run_at_device_rate_less_refresh():
    # 32 x 13.4167 = 429.33 GB/s; Shuhai measured 425 GB/s on this board (FCCM 2020)
    assert hbm_achievable_gbps(load_hw("u280")) == pytest.approx(32 * DEV, rel=1e-9)
    assert hbm_achievable_gbps(load_hw("u280")) == pytest.approx(429.333, abs=1e-3)


def test_port_width_times_clock_caps_a_channel():
    hw = _with(load_hw("u280"), port_bits=256, port_mhz=225)  # 32 B x 225 MHz = 7.2 GB/s
    assert hbm_stream_gbps(hw, 1 << 20) == pytest.approx(32 * 7.2, rel=1e-9)


def test_outstanding_bursts_bound_by_latency():
    # one 512 B burst in flight per 107 ns round trip: 4.785 GB/s per channel
    hw = _with(load_hw("u280"), outstanding=1)
    assert hbm_stream_gbps(hw, 1 << 20) == pytest.approx(32 * 512 / 107, rel=1e-9)


def test_short_runs_and_row_misses():
    hw = load_hw("u280")
    # 32 B runs: port 64 B beat = 4.44 ns, device 2.39 ns, latency 107/16 = 6.69 ns -> 6.69 ns
    assert hbm_stream_gbps(hw, 32) == pytest.approx(32 * 32 / (107 / 16), rel=1e-9)
    # 512 B runs each opening a row: 512 / 13.4167 + 31 ns
    assert hbm_stream_gbps(hw, 512, new_row=True) == pytest.approx(
        32 * 512 / (512 / DEV + 31), rel=1e-9
    )
    assert hbm_stream_gbps(hw, 512, new_row=True) == pytest.approx(236.9, abs=0.05)


def test_refresh_longer_than_its_interval_is_refused(tmp_path):
    src = (MAPPINGS / "hw" / "u280.yaml").read_text()
    assert "  refresh_ns: 260\n" in src
    bad = tmp_path / "bad.yaml"
    bad.write_text(src.replace("  refresh_ns: 260\n", "  refresh_ns: 5000\n"))
    with pytest.raises(ConfigError, match=r"refresh_ns = 5000\.0 must be below"):
        load_hw(str(bad))


def test_bench_hbm_prints_curve_and_published_points(capsys):
    assert main(["bench", "hbm"]) == 0
    out = capsys.readouterr().out
    assert "achievable 429.3 GB/s" in out
    assert "425.0    429.3     1.010  measured" in out  # Shuhai: model / published = 1.010
    assert "Shuhai" in out and "PG276" in out
