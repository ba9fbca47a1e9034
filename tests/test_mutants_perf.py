"""Killing tests for the cycle-model core's mutants (hwflow/perf; tests/mutation/EQUIVALENT.md):
the simulation cache's key and pass-through, and the decode curve and utilisation by hand."""

from __future__ import annotations

from dataclasses import replace

import pytest

import hwflow.energy
from hwflow.config import load_hw, load_model, load_plan
from hwflow.energy import Actions
from hwflow.perf import sim
from hwflow.perf.machine import UNITS

#: the action-count columns of a summary row, written out (not read from ``Actions``)
ACTION_COLUMNS = (
    "buffer_read_bits",
    "buffer_write_bits",
    "hbm_read_bytes",
    "hbm_write_bytes",
    "sfu_ops",
    "instr_words",
    "idle_unit_cycles",
)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama"), load_plan("flightllm"), load_hw("tiny")


def test_simulation_cache_key_and_pass_through(tiny, tmp_path, monkeypatch):
    """``simulate_cached`` computes once per (model, plan, preset, energy table, prefill,
    decode, mode, max_len, trace) and passes its arguments on; ``workers`` is not in the key.
    ``simulate`` is replaced by a recorder: the cache, not the simulation, is under test.
    tiny-llama has 512 positions, so the default max_len is 512."""
    monkeypatch.setenv("HWFLOW_CACHE", str(tmp_path))
    cfg, plan, hw = tiny
    calls = []

    def fake(*args, **kw):
        calls.append((args, kw))
        return {"n": len(calls)}

    monkeypatch.setattr(sim, "simulate", fake)
    heard = []
    got = sim.simulate_cached(cfg, plan, hw, 8, 2, note=heard.append, progress=print)
    assert got == ({"n": 1}, False)
    assert calls[0] == (
        (cfg, plan, hw, 8, 2),
        {
            "mode": "fast",
            "max_len": 512,
            "trace": False,
            "workers": 1,
            "note": heard.append,
            "progress": print,
        },
    )
    assert sim.simulate_cached(cfg, plan, hw, 8, 2, workers=2, note=heard.append) == (
        {"n": 1},
        True,
    )
    assert len(heard) == 1 and heard[0].startswith("simulated result from the cache (")
    assert len(list((tmp_path / "sims").glob("*.pickle"))) == 1  # <cache>/sims/
    assert sim.simulate_cached(cfg, plan, hw, 8, 2, max_len=512) == ({"n": 1}, True)
    # every part of the key recomputes
    other_hw = hw.model_copy(update={"clock_mhz": 123.0})
    for n, (args, kw) in enumerate(
        [
            ((cfg, plan, hw, 9, 2), {}),
            ((cfg, plan, hw, 8, 3), {}),
            ((cfg, plan, hw, 8, 2), {"mode": "exact"}),
            ((cfg, plan, hw, 8, 2), {"max_len": 256}),
            ((cfg, plan, hw, 8, 2), {"trace": True}),
            ((cfg, plan, other_hw, 8, 2), {}),
        ],
        start=2,
    ):
        assert sim.simulate_cached(*args, workers=3, **kw) == ({"n": n}, False), (args, kw)
        seen_args, seen_kw = calls[-1]
        assert seen_args == args and seen_kw["workers"] == 3
        assert seen_kw["mode"] == kw.get("mode", "fast")
        assert seen_kw["max_len"] == kw.get("max_len", 512)
        assert seen_kw["trace"] == kw.get("trace", False)
    # an energy table value changed: recomputed
    table = hwflow.energy.load_energy_table(hw.energy_table)
    hotter = table.model_copy(update={"static_w": table.static_w + 1})
    monkeypatch.setattr(hwflow.energy, "load_energy_table", lambda name: hotter)
    assert sim.simulate_cached(cfg, plan, hw, 8, 2)[1] is False
    # a preset without an energy table: no table is loaded
    monkeypatch.setattr(hwflow.energy, "load_energy_table", lambda name: 1 / 0)
    bare = hw.model_copy(update={"energy_table": None})
    assert sim.simulate_cached(cfg, plan, bare, 8, 2)[1] is False


def test_decode_curve_and_utilisation_by_hand(tiny, tmp_path, monkeypatch):
    """A result with a 500-cycle prefill of 4 tokens and decode steps of 1000 and 2500
    cycles at tiny's 100 MHz: contexts 5 and 6 at 0.01 and 0.025 ms (mean 0.0175), the first
    token after 0.005 ms; 4000 cycles in all, so a unit busy 1000 cycles is 25 % utilised.
    Action counts set by hand (distinct primes) come out each in its own column."""
    monkeypatch.setenv("HWFLOW_CACHE", str(tmp_path))
    r = sim.simulate(*tiny, 4, 2, mode="exact")
    step = replace(r.prefill_step, stats=replace(r.prefill_step.stats, cycles=500))
    busy = dict.fromkeys(UNITS, 0) | {UNITS[0]: 1000, UNITS[1]: 4000}
    acts = Actions({4: 11, 8: 13}, 17, 19, 23, 29, 31, 37, 41)  # distinct primes, set by hand
    r = replace(r, prefill=4, prefill_step=step, decode_cycles=[1000, 2500], busy=busy)
    r = replace(r, actions=acts, decode_hbm_bytes=7000, hbm_bytes=8000)
    assert r.clock_hz == 100e6
    curve = r.decode_curve()
    assert [c for c, _ in curve] == [5, 6]
    assert [ms for _, ms in curve] == [pytest.approx(0.01), pytest.approx(0.025)]
    s = r.summary()
    assert (s["model"], s["hw"], s["plan"], s["prefill"], s["decode"]) == (
        "tiny-llama",
        "tiny",
        "flightllm",
        4,
        2,
    )
    assert s["clock_mhz"] == 100.0 and s["total_cycles"] == 4000
    assert (s["mode"], s["prefill_cycles"], s["ttft_ms"]) == ("exact", 500, pytest.approx(0.005))
    per_token = (s["ms_per_token_min"], s["ms_per_token_avg"], s["ms_per_token_max"])
    assert per_token == (pytest.approx(0.01), pytest.approx(0.0175), pytest.approx(0.025))
    assert s[f"util_{UNITS[0]}"] == 0.25
    # 7000 bytes in the 3500 decode cycles (35 us): 0.2 GB/s, 3500 bytes a token
    assert s["decode_hbm_gbps"] == pytest.approx(0.2) and s["decode_bytes_per_token"] == 3500
    # 2 tokens in 35 us; 8000 bytes in the whole 40 us
    assert s["decode_tokens_per_s"] == pytest.approx(2 / 35e-6)
    assert s["hbm_gbps"] == pytest.approx(0.2)
    # tiny's HBM: 4 channels x 14.375 GB/s; achievable: its 128-byte buffer port at 100 MHz
    assert (s["hbm_peak_gbps"], s["hbm_achievable_gbps"]) == (57.5, pytest.approx(12.8))
    # every action count is its own column, as counted (the energy columns are priced apart)
    counts = {k: s[k] for k in s if k.startswith("macs_") or k in ACTION_COLUMNS}
    assert counts == {
        "macs_w4": 11,
        "macs_w8": 13,
        "buffer_read_bits": 17,
        "buffer_write_bits": 19,
        "hbm_read_bytes": 23,
        "hbm_write_bytes": 29,
        "sfu_ops": 31,
        "instr_words": 37,
        "idle_unit_cycles": 41,
    }
    # a prefill-only result has no decode figures
    assert replace(r, decode=0, decode_cycles=[]).token_ms() == (0.0, 0.0, 0.0)
    util = r.utilisation()
    assert set(util) == set(UNITS)
    assert util[UNITS[0]] == 0.25 and util[UNITS[1]] == 1.0 and util[UNITS[2]] == 0.0


def test_a_changed_preset_copy_has_its_own_digest():
    """Found by the cache test above: pydantic's ``model_copy`` copied the cached digest, so a
    preset copy with another clock keyed the caches (and passed program checks) as the
    original. An unchanged copy keeps the original's digest."""
    hw = load_hw("tiny")
    before = hw.digest
    assert hw.model_copy(update={"clock_mhz": 123.0}).digest != before
    assert hw.model_copy().digest == before
    hbm = hw.hbm.model_copy(update={"latency_ns": 1.0})
    assert hw.model_copy(update={"hbm": hbm}).digest != before


def test_empty_transfer_is_done_when_issued():
    """Both HBM models: a transfer without pieces (0 bytes) starts, streams and is on chip at
    the cycle it is issued (here 7)."""
    import simpy

    from hwflow.perf.hbm import HbmChannels, ResourceHbm

    hw = load_hw("tiny")
    env = simpy.Environment()
    ref = ResourceHbm(env, hw)
    env.run(until=7)
    proc = env.process(ref.transfer([]))
    env.run()
    v = proc.value
    assert (v.start, v.streamed, v.done) == (7, 7, 7)
    assert len(ref.channels) == 4 and all(c.capacity == 1 for c in ref.channels)
    chans = HbmChannels(hw)
    v = chans.issue(7, [])
    assert (v.start, v.streamed, v.done) == (7, 7, 7)


def test_ld_busy_is_its_transfers_streaming_and_channel_cycles_add_up():
    """Two loads on tiny, pieces made by hand: ld1 streams 20 cycles on channel 0; ld2 starts
    once ld1 is done (a unit runs one op at a time) and streams 14 on channel 1: LD is busy
    20 + 14 = 34 cycles. A third load after a barrier cut streams 7 more: the channels
    streamed 20 + 14 + 7 = 41 cycles, whole or run in segments."""
    from hwflow.costs import HbmPiece
    from hwflow.perf.machine import Machine, MOp, SegmentMemo, barrier_cuts

    LD, MV, SFU = 0, 3, 4

    def ld(name, ch, occ):
        piece = HbmPiece(channel=ch, nbytes=64, occupancy=occ, same_channel=True)
        return MOp(LD, name, 1, 1, 0, hbm=(piece,), hbm_bytes=64, hbm_occupancy=occ)

    def sync(unit, wait=(), release=()):
        return MOp(unit, f"SYNC.{('LD', 'ST', 'MM', 'MV', 'SFU')[unit]}", 1, 1, 1, wait, release)

    hw = load_hw("tiny")
    two = [ld("ld1", 0, 20), ld("ld2", 1, 14)]
    stats = Machine(hw).run(two)
    assert stats.busy["ld"] == 34
    assert stats.hbm_channel_cycles == 34
    barrier = [
        sync(LD, release=(SFU,)),
        sync(MV, release=(SFU,)),
        sync(SFU, wait=(LD, MV), release=(LD, MV)),
        sync(LD, wait=(SFU,)),
        sync(MV, wait=(SFU,)),
    ]
    prog = [*two, *barrier, ld("ld3", 2, 7)]
    assert barrier_cuts(prog) == [7]
    for memo in (None, SegmentMemo()):
        assert Machine(hw).run(prog, memo).hbm_channel_cycles == 41


def test_channel_reservations_by_hand():
    """HbmChannels on tiny (4 channels, 107 ns latency = 10.7 -> 11 cycles at 100 MHz): a
    fresh table serves from cycle 0; a transfer starts at its earliest piece's start (the
    channel that is free now), streams until its latest piece ends and is on chip 11 cycles
    later; a channel already free is taken at the issue cycle."""
    from hwflow.costs import HbmPiece
    from hwflow.perf.hbm import HbmChannels

    def piece(ch: int, occ: int) -> HbmPiece:
        return HbmPiece(channel=ch, nbytes=32 * occ, occupancy=occ, same_channel=True)

    chans = HbmChannels(load_hw("tiny"))
    assert chans.latency == 11
    got = [chans.issue(0, [piece(1, 5)])]  # channel 1 busy [0, 5)
    got.append(chans.issue(0, [piece(0, 4), piece(1, 3)]))  # [0, 4) and [5, 8)
    got.append(chans.issue(2, [piece(2, 1)]))  # channel 2 free since 0: [2, 3)
    assert [(t.start, t.streamed, t.done) for t in got] == [(0, 5, 16), (0, 8, 19), (2, 3, 14)]
    assert chans.free == [4, 8, 3, 0]
