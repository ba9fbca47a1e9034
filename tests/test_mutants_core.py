"""Wrong answers the rest of the suite let through (issue 13): each test here kills a mutant
that survived it, with an expectation worked out by hand from the inputs, not from the code.

* an LD/ST priced slower than the preset's bandwidth (a 64 KiB transfer on ``tiny``);
* the idle-energy term (a non-zero table entry; the shipped tables have 0 there);
* the preset's instruction-queue depth (read from a preset file, not passed as ``depth=``);
* N:M pruning that keeps anything but the N largest magnitudes of each group.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import yaml

from hwflow import numerics as nx
from hwflow.config import MAPPINGS, load_hw
from hwflow.costs import (
    OpCost,
    effective_nm,
    hbm_burst_ns,
    hbm_latency_cycles,
    hbm_pieces,
    matmul_cost,
    sfu_cost,
    sync_cost,
)
from hwflow.energy import Actions, energy, load_energy_table
from hwflow.errors import CapacityError, ConfigError, UnsupportedError
from hwflow.perf.machine import Machine, MOp

LD, ST, MM, MV, SFU, SYS = range(6)


# --------------------------------------------------------------------------------------------
# costs.py: one large transfer


def _wide(hw):
    """``hw`` with 1024-byte buffer words: 256 B per channel per cycle on the core side, so the
    HBM side (port, device, latency) sets every burst's time again."""
    return hw.model_copy(update={"buffers": hw.buffers.model_copy(update={"word_bytes": 1024})})


def test_64kib_transfer_cycles_on_tiny():
    """64 KiB from address 0 on ``tiny`` (pins today's HBM pricing formula of costs.py: if you
    change the formula, rework this derivation by hand from the preset's numbers).

    tiny.yaml hbm: 4 channels interleaved every 256 B, 14.375 GB/s per channel, refresh
    260 ns every 3900 ns, 256-bit port at 450 MHz, 16 outstanding, bursts of 512 B, latency
    107 ns; clock 100 MHz; buffers.word_bytes 128 (32 B per channel per cycle on the core side).
    * 65536 B = 256 granules of 256 B, dealt round-robin: 16384 B per channel, one run of
      32 bursts of 512 B.
    * one burst holds its channel for the slowest of: HBM-side port 512 / 32 = 16 beats at
      450 MHz = 35.56 ns; core side 512 / 32 = 16 cycles at 100 MHz = 160 ns; device 512 B at
      14.375 x (1 - 260 / 3900) = 13.4167 GB/s = 38.16 ns; latency 107 / 16 = 6.69 ns:
      160 ns. 32 bursts: 5120 ns = 512 cycles.
    * with 1024-byte words (256 B per channel per cycle: 2 cycles = 20 ns) the device bounds:
      32 x 38.16 ns = 1221.2 ns = 122.1 cycles -> 123 (a 10 % slower price would be 135).
    * first-beat latency: 107 ns * 100 MHz = 10.7 -> 11 cycles.
    """
    hw = load_hw("tiny")
    for preset, cycles in ((hw, 512), (_wide(hw), 123)):
        pieces = hbm_pieces(preset, 0, 64 * 1024)
        assert [(p.channel, p.nbytes, p.occupancy) for p in pieces] == [
            (c, 16384, cycles) for c in range(4)
        ]
        assert all(p.same_channel for p in pieces)
    assert hbm_latency_cycles(hw) == 11


def test_64kib_transfer_through_the_machine():
    """The same transfer as an LD op on an idle machine (1024-byte words): requested at 1
    (costs.LDST_REQUEST_STAGES), streamed 1..124, data on chip at 135, done at 137
    (LD_DONE_STAGES)."""
    hw = _wide(load_hw("tiny"))
    pieces = tuple(hbm_pieces(hw, 0, 64 * 1024))
    op = MOp(LD, "LD", 0, 0, 0, (), (), pieces, 65536, sum(p.occupancy for p in pieces))
    r = Machine(hw, trace=True).run([op])
    assert r.trace == [("ld", "LD", 1, 124)]
    assert r.cycles == 137 and r.busy["ld"] == 123 and r.hbm_bytes == 65536


def test_transfer_pricing_edges_on_tiny():
    """Edges of the HBM split and pricing, each worked out from tiny.yaml (see the 64 KiB
    test). With 1024-byte words: a 512 B burst is device-bound, 38.16 ns; 256 B, 19.08 ns; a
    32 B burst takes one core cycle, 10 ns (latency / outstanding = 107 / 16 = 6.69 ns is less). With tiny's 128-byte
    words the core side bounds: 512 B 160 ns, 32 B one cycle, 10 ns; 1 GiB."""
    tiny = load_hw("tiny")
    hw = _wide(tiny)
    assert hbm_burst_ns(hw, 512) == pytest.approx(512 / (14.375 * 14 / 15), rel=1e-12)
    assert hbm_burst_ns(hw, 256) == pytest.approx(256 / (14.375 * 14 / 15), rel=1e-12)
    # a 32 B burst: one 10 ns cycle on the core side; latency / outstanding binds only past
    # it (here 320 ns / 16 = 20 ns)
    assert hbm_burst_ns(hw, 32) == pytest.approx(10.0, rel=1e-12)
    slow = hw.model_copy(update={"hbm": hw.hbm.model_copy(update={"latency_ns": 320})})
    assert hbm_burst_ns(slow, 32) == pytest.approx(320 / 16, rel=1e-12)
    assert (hbm_burst_ns(tiny, 512), hbm_burst_ns(tiny, 33), hbm_burst_ns(tiny, 32)) == (
        pytest.approx(160.0),
        pytest.approx(20.0),
        pytest.approx(10.0),
    )
    # 257 B from 0: a whole granule in channel 0 and its last byte in channel 1
    assert [(p.channel, p.nbytes) for p in hbm_pieces(hw, 0, 257)] == [(0, 256), (1, 1)]
    # one byte still takes a cycle
    assert [(p.channel, p.nbytes, p.occupancy) for p in hbm_pieces(hw, 300, 1)] == [(1, 1, 1)]
    # 824320 B = 3220 granules, 805 per channel = 206080 B, all bursts device-bound:
    # 206080 / 13.4167 GB/s = 15360 ns = exactly 1536 cycles: no rounding up
    assert {p.occupancy for p in hbm_pieces(hw, 0, 824320)} == {1536}
    # on tiny: 402 bursts of 512 B (16 cycles) and one of 256 B (8): 6440 cycles
    assert {p.occupancy for p in hbm_pieces(tiny, 0, 824320)} == {6440}
    assert hbm_pieces(hw, 5, 0) == []
    cap = 1 << 30
    assert sum(p.nbytes for p in hbm_pieces(hw, cap - 512, 512)) == 512  # ends at the last byte
    with pytest.raises(
        CapacityError,
        match=rf"HBM transfer \[0, {cap + 1}\) exceeds the {cap} bytes of preset tiny",
    ):
        hbm_pieces(hw, 0, cap + 1)
    for addr, n in ((-1, 4), (4, -1)):
        with pytest.raises(
            UnsupportedError, match=f"HBM transfer at {addr} of {n} bytes: negative"
        ):
            hbm_pieces(hw, addr, n)


def test_sfu_and_sync_costs_on_tiny():
    """tiny.yaml SFU: 4 lanes, latency 8. 10 elements read twice: 2 x ceil(10 / 4) = 6 beats,
    results 8 cycles after the last one. A SYNC: one issue cycle, done when issued."""
    hw = load_hw("tiny")
    assert sfu_cost(hw, 10, passes=2) == OpCost(beats=6, latency=14, macs=0, dense_macs=0)
    assert sync_cost() == OpCost(beats=1, latency=1, macs=0, dense_macs=0)


def test_hbm_latency_rounds_up_only_past_a_whole_cycle():
    """At 100 MHz a cycle is 10 ns: 110 ns is exactly 11 cycles, 100.01 ns is 10.001 -> 11."""
    hw = load_hw("tiny")

    def at(ns: float) -> int:
        return hbm_latency_cycles(
            hw.model_copy(update={"hbm": hw.hbm.model_copy(update={"latency_ns": ns})})
        )

    assert (at(110), at(100.01), at(107)) == (11, 11, 11)
    assert at(100) == 10


def test_matmul_costs_worked_by_hand_on_tiny():
    """tiny.yaml: MV 2 chains x 16 DSPs, 2 requantizers; MPE the same with 2 token rows;
    block M = 16. 40 output rows, K = 64 (4 blocks), 4:16 sparse: a beat advances 2 x 16/4 = 8
    rows, so 5 row groups; a group's results drain in ceil(1 token x 2 chains x 4 / 2) = 4
    cycles, no longer than its 4 blocks, so each group holds the input 4 cycles: 20 beats.
    Chain depth to the first word: operands 2 + product 1 + 16 stages + accumulator 1 +
    capture 1 + requantizer 6 + output 1 = 28; the last word leaves 28 + 4 - 1 = 31 cycles
    after the last beat: latency 20 + 31 = 51. MACs kept: tokens x 40 x 4 blocks x 4 = 640
    per token; dense: tokens x 40 x 64 = 2560. On the MPE 3 tokens take ceil(3 / 2) = 2
    passes and a group drains 2 lanes x 2 chains x 4 rows / 2 = 8 cycles, longer than its 4
    blocks: 5 x 2 x 8 = 80 beats; the last result's 4 blocks start 8 cycles before the end and
    its last word leaves 28 + 8 - 1 after them: latency 80 - 8 + 4 + 35 = 111. Dense: 2 rows a
    beat, 20 groups x 4 blocks = 80 beats, drain ceil(2 / 2) = 1: latency 80 + 28 = 108.
    Operand beats (``reads``): 4 blocks per result: 5 x 4 = 20 (MV), 5 x 2 x 4 = 40 (MPE), 20
    x 4 = 80 (dense)."""
    hw = load_hw("tiny")
    assert matmul_cost(hw.mv, 16, 1, 40, 64, 4) == OpCost(20, 51, 640, 2560, reads=20)
    assert matmul_cost(hw.mpe, 16, 3, 40, 64, 4) == OpCost(80, 111, 1920, 7680, reads=40)
    # dense (N = M = 16): a beat advances 2 x 1 rows: 20 groups x 4 blocks
    assert matmul_cost(hw.mv, 16, 1, 40, 64, 16) == OpCost(80, 108, 2560, 2560, reads=80)
    c = matmul_cost(hw.mv, 16, 1, 40, 64, 4)
    assert all(type(v) is int for v in (c.beats, c.latency, c.macs, c.dense_macs))
    with pytest.raises(UnsupportedError, match="N = 3 does not divide chain length 16"):
        matmul_cost(hw.mv, 16, 1, 40, 64, 3)
    with pytest.raises(
        UnsupportedError, match="reduction length 40 is not a multiple of the block M = 16"
    ):
        matmul_cost(hw.mv, 16, 1, 8, 40, 4)


def test_effective_nm_on_tiny():
    """tiny.yaml runs N:16 with N in {2, 4, 8, 16}: a dense layer (any N = M) runs as 16:16,
    a supported sparse one as itself, anything else is refused naming what is allowed."""
    hw = load_hw("tiny")
    assert effective_nm(hw, 8, 8) == (16, 16) and effective_nm(hw, 4, 4) == (16, 16)
    assert effective_nm(hw, 4, 16) == (4, 16) and effective_nm(hw, 2, 16) == (2, 16)
    with pytest.raises(UnsupportedError, match=r"does not support 3:16 sparsity \(allowed: 2:16"):
        effective_nm(hw, 3, 16)
    with pytest.raises(UnsupportedError, match="does not support 2:8 sparsity"):
        effective_nm(hw, 2, 8)


# --------------------------------------------------------------------------------------------
# energy.py: the idle term


def test_idle_energy_with_a_non_zero_entry(tmp_path):
    """A copy of the xcu280 table with 0.5 pJ per idle unit-cycle: 7 idle unit-cycles cost
    3.5 pJ, and nothing else in the run (no other action) adds to the dynamic energy."""
    table = yaml.safe_load((MAPPINGS / "energy" / "xcu280.yaml").read_text())
    table["idle_unit_cycle_pj"] = 0.5
    table["sources"]["idle_unit_cycle_pj"] = "test value"
    path = tmp_path / "idle.yaml"
    path.write_text(yaml.safe_dump(table))
    hw = load_hw("tiny").model_copy(update={"energy_table": str(path)})
    e = energy(hw, Actions(idle_unit_cycles=7), cycles=100)  # 1 us at 100 MHz
    assert e.joules["idle"] == pytest.approx(3.5e-12)
    assert e.dynamic == pytest.approx(3.5e-12)
    assert e.joules["static"] == pytest.approx(table["static_w"] * 1e-6)


# --------------------------------------------------------------------------------------------
# perf/machine.py: queue depth from the preset


def _tiny_with_queue(tmp_path, entries: int):
    data = yaml.safe_load((MAPPINGS / "hw" / "tiny.yaml").read_text())
    data["buffers"]["queue_entries"] = entries
    path = tmp_path / f"tiny-q{entries}.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_hw(path)


def test_queue_depth_comes_from_the_preset(tmp_path):
    """With 2 queue entries per unit (from a preset file), the third MV cannot be queued
    until the first issues at cycle 50 (it waits for the slow SFU), so the LD behind it in
    program order starts at 50; with 3 entries the dispatcher gets past and the LD starts at 0.
    """
    prog = [
        MOp(SFU, "slow", 0, 50, 50, (), (MV,)),
        MOp(MV, "mv0", 0, 1, 1, (SFU,)),
        MOp(MV, "mv1", 0, 1, 1),
        MOp(MV, "mv2", 0, 1, 1),
        MOp(LD, "ld", 0, 0, 0, hbm=tuple(hbm_pieces(load_hw("tiny"), 0, 256)), hbm_bytes=256),
    ]
    two = _tiny_with_queue(tmp_path, 2)
    assert two.buffers.queue_entries == 2
    t = {name: s for _, name, s, _ in Machine(two, trace=True).run(prog).trace}
    assert t["mv0"] == 50 and t["ld"] == 51  # the LD starts at 50, its request goes out at 51
    t = {
        name: s
        for _, name, s, _ in Machine(_tiny_with_queue(tmp_path, 3), trace=True).run(prog).trace
    }
    assert t["ld"] == 1  # started at 0, requested at 1


# --------------------------------------------------------------------------------------------
# numerics.py: N:M pruning keeps the N largest


def test_nm_pruning_keeps_exactly_the_n_largest():
    """Hand-made groups of 8 (2:8 and 3:8): the kept positions are the largest magnitudes,
    sign ignored, one group at a time."""
    w = np.array(
        [
            [0.1, -9.0, 0.2, 3.0, -0.3, 0.0, 8.0, -2.0, 5.0, 4.0, -6.0, 0.5, 0.4, 0.3, 0.2, -7.0],
        ]
    )
    keep = nx.nm_prune_mask(w, 2, 8)
    # group 0: |-9| at 1 and |8| at 6; group 1: |-7| at 15 and |-6| at 10
    assert np.flatnonzero(keep).tolist() == [1, 6, 10, 15]
    keep = nx.nm_prune_mask(w, 3, 8)
    # adds |3| at 3 in group 0 and |5| at 8 in group 1
    assert np.flatnonzero(keep).tolist() == [1, 3, 6, 8, 10, 15]


def test_nm_pruning_on_random_rows_matches_sorting():
    """On random rows the kept set of every group is the set of its N largest magnitudes
    (distinct magnitudes, so the set is unique): checked with Python's sorted()."""
    rng = np.random.default_rng(13)
    w = rng.normal(size=(5, 64))
    for n in (1, 2, 4, 8):
        keep = nx.nm_prune_mask(w, n, 16)
        for r in range(5):
            for g in range(4):
                grp = w[r, 16 * g : 16 * (g + 1)].tolist()
                want = sorted(range(16), key=lambda i: -abs(grp[i]))[:n]
                assert np.flatnonzero(keep[r, 16 * g : 16 * (g + 1)]).tolist() == sorted(want)


def test_unknown_energy_table_lists_the_shipped_ones():
    """The refusal names what exists: the two tables shipped under mappings/energy."""
    with pytest.raises(ConfigError, match=r"energy table 'nope' not found \(shipped: ") as e:
        load_energy_table("nope")
    shipped = str(e.value).split("(shipped: ")[1].rstrip(")").split(", ")
    assert {"xcu280", "xcvh1782"} <= set(shipped)


def test_bad_energy_table_is_named_in_the_error(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("name: broken\nmac_pj: -1\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: "):
        load_energy_table(p)


# --------------------------------------------------------------------------------------------
# compiler/layout.py: HBM sizes in the capacity refusal


def test_hbm_capacity_refusal_states_sizes_in_binary_units():
    """Copies of tiny with 1/16384 GiB = 64 KiB and 1/2**20 GiB = 1 KiB of HBM (tiny-llama at
    16 tokens needs 65 KiB): the refusal states the capacity as '64.00 KiB' and '1.00 KiB'."""
    from hwflow.compiler import compile_model
    from hwflow.config import load_model, load_plan

    hw = load_hw("tiny")
    cfg, plan = load_model("tiny-llama"), load_plan("flightllm")
    for gib, text in ((1 / 16384, "64.00 KiB"), (1 / 2**20, "1.00 KiB")):
        small = hw.model_copy(update={"hbm": hw.hbm.model_copy(update={"capacity_gib": gib})})
        with pytest.raises(
            CapacityError, match=rf"but preset tiny has {text} \(hbm\.capacity_gib\)"
        ) as e:
            compile_model(cfg, plan, small, 16)
        # "needs A of HBM (W weights, K KV cache)": the parts are parts of the whole
        units = {"bytes": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
        found = re.findall(r"([\d.]+) (bytes|KiB|MiB|GiB)", str(e.value))[:3]
        a, w, k = (float(x) * units[u] for x, u in found)
        assert 0 < k < a and w + k <= a * 1.001, str(e.value)


def test_saturate_to_nine_bits():
    """INT9: -256..255, held in int16 (int8 cannot)."""
    out = nx.saturate(np.array([300, -300, 7]), 9)
    assert out.tolist() == [255, -256, 7] and out.dtype == np.int16


def test_hbm_regions_have_their_documented_kinds(tmp_path, monkeypatch):
    """isa.Region: kind weights / kv / io / table. tiny-llama: per-layer-run weight regions
    and the final norm + head ('final') are weights, 'kv' the KV cache, 'rope' a table,
    'input' and 'logits' I/O."""
    from hwflow.compiler import compile_model
    from hwflow.config import load_model, load_plan

    prog = compile_model(
        load_model("tiny-llama"), load_plan("flightllm"), load_hw("tiny"), 16
    ).program
    kinds = {r.name: r.kind for r in prog.regions}
    assert kinds["final"] == "weights" and kinds["kv"] == "kv" and kinds["rope"] == "table"
    assert kinds["input"] == kinds["logits"] == "io"
    assert all(kinds[n] == "weights" for n in kinds if n.startswith("L"))


def test_norm_sum_of_squares_is_exact_past_2_to_53():
    """RMSNorm's ``ss`` is an exact integer (the numerics contract), also for a row wide
    enough that it passes 2**53 (16384 channels: 8192 at the INT21 maximum C = 2**20 - 1, then
    148476, 362, 3, 1, 1, the rest 0). By hand: ss = 8192 C**2 + 148476**2 + 362**2 + 9 + 1 + 1
    = 2**22 * (2**31 + 1160) - 1, 54 bits, so rsqrt_fixed shifts it by 2k = 22: ss >> 22 =
    2**31 + 1159. Dropping one of the 1s gives ss - 1, the same after the shift, and the max
    |x * gamma| is unchanged: the row factor must not change. Summed in float64 (spacing 2 past
    2**53), the odd ss rounds up to 2**22 * (2**31 + 1160) and crosses the shift's step."""
    c = (1 << 20) - 1
    d = 16384
    head = [c] * 8192 + [148476, 362, 3, 1, 1]
    x = np.zeros((2, d), np.int64)
    x[0, : len(head)] = head
    x[1, : len(head) - 1] = head[:-1]
    ss = sum(v * v for v in head)
    assert ss == (1 << 22) * ((1 << 31) + 1160) - 1 and ss.bit_length() == 54
    gamma = np.full(d, 65, np.int64)
    _, (m, e) = nx.norm_rows(x, gamma, False, 0)
    assert m[0] == m[1] and e[0] == e[1]
    # the factor is M * sqrt(d / ss) with M = 65 c (to the 15-bit mantissa)
    want = 65 * c * (d / ss) ** 0.5
    assert m[0] * 2.0 ** -int(e[0]) == pytest.approx(want, rel=2**-14)
