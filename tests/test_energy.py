"""Energy model: tables validate with sources; counts x table = joules, by component."""

from __future__ import annotations

import pytest

from hwflow.config import available, load_hw
from hwflow.energy import Actions, energy, load_energy_table
from hwflow.errors import ConfigError


@pytest.mark.parametrize("name", available("hw"))
def test_every_preset_names_a_valid_table(name):
    hw = load_hw(name)
    t = load_energy_table(hw.energy_table)
    for f in ("mac_pj", "sram_pj_per_bit", "hbm_pj_per_bit", "sfu_op_pj", "static_w"):
        assert t.sources[f].strip()


def test_counts_times_table():
    hw = load_hw("u280")
    t = load_energy_table("xcu280")
    a = Actions(
        macs={4: 1000, 8: 24},
        buffer_read_bits=800,
        buffer_write_bits=200,
        hbm_read_bytes=100,
        hbm_write_bytes=25,
        sfu_ops=10,
        instr_words=3,
        idle_unit_cycles=7,
    )
    e = energy(hw, a, cycles=225)  # 1 us at 225 MHz
    assert e.seconds == pytest.approx(1e-6)
    assert e.joules["mac"] == pytest.approx(1024 * t.mac_pj * 1e-12)
    assert e.joules["buffers"] == pytest.approx(1000 * t.sram_pj_per_bit * 1e-12)
    assert e.joules["hbm"] == pytest.approx(125 * 8 * t.hbm_pj_per_bit * 1e-12)
    assert e.joules["sfu"] == pytest.approx(10 * t.sfu_op_pj * 1e-12)
    assert e.joules["instr"] == pytest.approx(96 * t.instr_pj_per_bit * 1e-12)
    assert e.joules["static"] == pytest.approx(t.static_w * 1e-6)
    assert e.total == pytest.approx(sum(e.joules.values()))
    assert e.average_w == pytest.approx(e.total / 1e-6)


def test_actions_accumulate():
    a = Actions(macs={4: 1}, hbm_read_bytes=2)
    a.add(Actions(macs={4: 2, 8: 1}, hbm_read_bytes=3), times=10)
    assert a.macs == {4: 21, 8: 10} and a.hbm_read_bytes == 32 and a.total_macs == 31


def test_unsourced_number_is_refused(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(
        "name: bad\nmac_pj: 1\nsram_pj_per_bit: 1\nhbm_pj_per_bit: 1\nsfu_op_pj: 1\n"
        "instr_pj_per_bit: 1\nidle_unit_cycle_pj: 0\nstatic_w: 1\nsources: {mac_pj: x}\n"
    )
    with pytest.raises(ConfigError, match=r"sram_pj_per_bit = 1\.0 has no source"):
        load_energy_table(p)


def test_unknown_table():
    with pytest.raises(ConfigError, match="energy table 'nope' not found"):
        load_energy_table("nope")


def test_preset_without_table(tmp_path):
    hw = load_hw("u280").model_copy(update={"energy_table": None})
    with pytest.raises(ConfigError, match="names no energy_table"):
        energy(hw, Actions(), 1)
