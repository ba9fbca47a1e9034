"""The SimPy machine and HBM channels on hand-made streams: exact timelines."""

from __future__ import annotations

import random

import pytest
import simpy

from hwflow.config import load_hw
from hwflow.costs import (
    HbmBurst,
    HbmPiece,
    hbm_bursts,
    hbm_latency_cycles,
    hbm_pieces,
    ld_flush_cycles,
)
from hwflow.errors import SyncError
from hwflow.perf.hbm import HbmChannels, ResourceHbm
from hwflow.perf.machine import Machine, MOp

LD, ST, MM, MV, SFU, SYS = range(6)


@pytest.fixture(scope="module")
def tiny():
    return load_hw("tiny")


def streams(*ops: MOp) -> list[MOp]:
    return list(ops)


def M(unit, name, beats, latency, wait=(), release=(), hbm=None, words=0, bursts=()) -> MOp:
    nbytes = sum(p.nbytes for p in hbm or ())
    occ = sum(p.occupancy for p in hbm or ())
    return MOp(unit, name, words, beats, latency, wait, release, hbm, nbytes, occ, bursts)


def piece(ch: int, occ: int, nbytes: int = 64) -> HbmPiece:
    return HbmPiece(channel=ch, nbytes=nbytes, occupancy=occ, same_channel=True)


def test_load_compute_store_timeline(tiny):
    lat = hbm_latency_cycles(tiny)  # 107 ns at 100 MHz -> 11 cycles
    assert lat == 11
    ops = streams(
        M(LD, "LD", 0, 0, release=(MV,), hbm=(piece(0, 5), piece(1, 7))),
        M(MV, "MV", 4, 10, wait=(LD,), release=(ST,)),
        M(ST, "ST", 0, 0, wait=(MV,), hbm=(piece(2, 3),)),
    )
    r = Machine(tiny, trace=True).run(ops)
    # LD requested at 1 (costs.LDST_REQUEST_STAGES), streams 1..8, last beat at 19, done 21
    # (LD_DONE_STAGES = 2); MV starts 21, results at 31; ST requested 32, streams 32..35,
    # response at 46, done 47 (ST_DONE_STAGES = 1)
    assert r.trace == [("ld", "LD", 1, 8), ("mv", "MV", 21, 25), ("st", "ST", 32, 35)]
    assert r.cycles == 47
    assert r.busy == {"ld": 7, "st": 3, "mm": 0, "mv": 4, "sfu": 0, "sys": 0}
    assert r.stall["mv"] == 21 and r.stall["st"] == 31
    assert r.hbm_bytes == 192 and r.leftover_tokens == {}


def test_double_buffer_ld_runs_ahead(tiny):
    """Two weight slots: LD i+2 waits for MV i to free its slot (a token MV -> LD)."""
    lds = [
        M(LD, f"LD{i}", 0, 0, wait=(MV,) if i >= 2 else (), release=(MV,), hbm=(piece(0, 20),))
        for i in range(4)
    ]
    mvs = [M(MV, f"MV{i}", 30, 35, wait=(LD,), release=(LD,)) for i in range(4)]
    r = Machine(tiny, trace=True).run(streams(*lds, *mvs))
    starts = {name: (s, e) for _, name, s, e in r.trace}
    # requests one cycle after the start, done 11 + 2 after streaming (costs.LDST_*); a unit
    # takes its next op once the previous one is done: LD0 1..21 (done 34), LD1 35..55 (done
    # 68); MV0 34..64 (done 69), MV1 after MV0: 69..99 (done 104); LD2 waits MV0 -> 70..90
    # (done 103), MV2 104..134 (done 139); LD3 waits MV1 -> 105..125 (done 138), MV3 139..169
    assert starts["LD0"] == (1, 21) and starts["LD1"] == (35, 55)
    assert starts["MV0"] == (34, 64) and starts["MV1"] == (69, 99)
    assert starts["LD2"] == (70, 90) and starts["MV2"] == (104, 134)
    assert starts["LD3"] == (105, 125) and starts["MV3"] == (139, 169)
    assert r.cycles == 174
    # the two MV -> LD tokens of MV2 and MV3 were never consumed
    assert r.leftover_tokens == {"mv->ld": 2}


def test_one_op_at_a_time(tiny):
    """A unit takes its next op once the previous one completed (the RTL units' ``cmd.ready``
    is "not running"): the short op starts at the long one's completion (50) and completes 3
    later."""
    ops = streams(
        M(SFU, "long", 2, 50, release=(MV,)),
        M(SFU, "short", 2, 3, release=(MV,)),
        M(MV, "a", 1, 1, wait=(SFU,)),
        M(MV, "b", 1, 1, wait=(SFU,)),
    )
    r = Machine(tiny, trace=True).run(ops)
    assert [t for t in r.trace if t[0] == "sfu"] == [
        ("sfu", "long", 0, 2),
        ("sfu", "short", 50, 52),
    ]
    assert [t for t in r.trace if t[0] == "mv"] == [("mv", "a", 50, 51), ("mv", "b", 53, 54)]
    assert r.cycles == 54


def test_channel_contention(tiny):
    ops = streams(
        M(LD, "a", 0, 0, hbm=(piece(0, 10),)),
        M(ST, "b", 0, 0, hbm=(piece(0, 4), piece(1, 4))),
    )
    r = Machine(tiny, trace=True).run(ops)
    # requested at 1: channel 1 at 1..5, channel 0 only after LD: 11..15
    assert ("st", "b", 1, 15) in r.trace
    assert r.stall["st"] == 0 and r.busy["st"] == 14
    assert r.cycles == 15 + 11 + 1


def test_deadlock_is_a_sync_error(tiny):
    ops = streams(M(MV, "mv", 1, 1, wait=(LD,)), M(LD, "ld", 0, 0, wait=(MV,), hbm=()))
    with pytest.raises(SyncError, match=r"deadlock: ld op 0 \(ld\) waits for a token from mv"):
        Machine(tiny).run(ops)


def test_hbm_split_and_rates(tiny):
    # tiny: 256 B granule, 4 channels of 14.375 GB/s, refresh 260 / 3900 ns -> 13.4167 GB/s of
    # device time; 256-bit port at 450 MHz; 16 bursts in flight over 107 ns; clock 100 MHz; the
    # core side of each channel: 128-B buffer words / 4 channels = 32 B per 100 MHz cycle
    g = tiny.hbm.interleave_bytes
    whole = hbm_pieces(tiny, 0, 8 * g)
    assert [(p.channel, p.nbytes, p.same_channel) for p in whole] == [
        (c, 2 * g, True) for c in range(4)
    ]
    # one 512 B burst: port 16 beats / 450 MHz = 35.6 ns, device 512 / 13.4167 = 38.2 ns,
    # latency 107 / 16 = 6.7 ns, core 512 / 32 = 16 cycles = 160 ns -> 16
    assert whole[0].occupancy == 16
    part = hbm_pieces(tiny, 100, g)  # 156 B in channel 0, 100 B in channel 1
    assert [(p.channel, p.nbytes) for p in part] == [(0, 156), (1, 100)]
    # 156 B: device 160 B of atoms / 13.4167 = 11.9 ns, core ceil(156 / 32) = 5 cycles -> 5
    assert part[0].occupancy == 5
    hop = hbm_pieces(tiny, 100, 156, hop=True)  # + a 31 ns row miss: 81 ns -> 9 cycles
    assert [(p.channel, p.nbytes, p.same_channel, p.occupancy) for p in hop] == [(0, 156, False, 9)]
    wr = hbm_pieces(tiny, 100, 156, write=True)  # + 2 x 10 ns turnaround: 70 ns -> 7 cycles
    assert [(p.write, p.occupancy) for p in wr] == [(True, 7)]
    assert sum(p.nbytes for p in hbm_pieces(tiny, 3 * g + 7, 5000)) == 5000
    # the head and tail granules of an unaligned transfer share a channel when it wraps
    wrap = hbm_pieces(tiny, 10, 4 * g)
    assert {p.channel: p.nbytes for p in wrap} == {0: (g - 10) + 10, 1: g, 2: g, 3: g}


def test_reservation_matches_simpy_resources(tiny):
    """HbmChannels gives the timeline of one FIFO simpy.Resource per channel."""
    rng = random.Random(7)
    arrivals = sorted(rng.randrange(0, 400) for _ in range(60))
    transfers = [
        hbm_pieces(tiny, rng.randrange(0, 1 << 16), rng.randrange(1, 3000)) for _ in arrivals
    ]
    fast = HbmChannels(tiny)
    want = [vars_of(fast.issue(t, p)) for t, p in zip(arrivals, transfers, strict=True)]

    env = simpy.Environment()
    ref = ResourceHbm(env, tiny)
    got: list[tuple[int, int, int] | None] = [None] * len(arrivals)

    def client(i: int, t: int, pieces):
        yield env.timeout(t)
        tr = yield env.process(ref.transfer(pieces))
        got[i] = vars_of(tr)

    for i, (t, p) in enumerate(zip(arrivals, transfers, strict=True)):
        env.process(client(i, t, p))
    env.run()
    assert got == want


def vars_of(tr) -> tuple[int, int, int]:
    return (tr.start, tr.streamed, tr.done)


def test_dispatcher_fetches_one_word_per_cycle(tiny):
    ops = [M(SFU, f"s{i}", 1, 1, words=9) for i in range(3)]
    r = Machine(tiny, trace=True).run(ops)
    assert [t[2] for t in r.trace] == [9, 18, 27]
    assert r.busy["sys"] == 27 and r.cycles == 28


def test_full_queue_blocks_the_dispatcher(tiny):
    """Depth 2: the third MV cannot be queued before the first issues, so the LD behind it in
    program order is dispatched late (head-of-line blocking)."""
    prog = [
        M(SFU, "slow", 50, 50, release=(MV,)),
        M(MV, "mv0", 1, 1, wait=(SFU,)),
        M(MV, "mv1", 1, 1),
        M(MV, "mv2", 1, 1),
        M(LD, "ld", 0, 0, hbm=(piece(0, 5),)),
    ]
    r = Machine(tiny, trace=True, depth=2).run(prog)
    t = {name: (s, e) for _, name, s, e in r.trace}
    assert t["mv0"] == (50, 51) and t["ld"] == (51, 56)
    r = Machine(tiny, trace=True, depth=3).run(prog)
    assert {name: s for _, name, s, _ in r.trace}["ld"] == 1  # started at 0, requested at 1


def test_dispatcher_deadlock_is_reported(tiny):
    prog = [M(MV, "a", 1, 1, wait=(SFU,)), M(MV, "b", 1, 1), M(SFU, "s", 1, 1, release=(MV,))]
    with pytest.raises(SyncError, match="dispatcher waits for room in the full mv queue"):
        Machine(tiny, depth=1).run(prog)


def test_channels_serve_in_arrival_order(tiny):
    """An LD whose token arrives at 100 does not hold channel 0 against an ST arriving at 60."""
    prog = [
        M(SFU, "s", 100, 100, release=(LD,)),
        M(LD, "ld", 0, 0, wait=(SFU,), hbm=(piece(0, 10),)),
        M(SFU, "t", 1, 1),
        M(MV, "m", 60, 60, release=(ST,)),
        M(ST, "st", 0, 0, wait=(MV,), hbm=(piece(0, 50),)),
    ]
    r = Machine(tiny, trace=True).run(prog)
    t = {name: (s, e) for _, name, s, e in r.trace}
    assert t["st"] == (61, 111) and t["ld"] == (111, 121)


def test_bursts_of_an_unaligned_load(tiny):
    """2,144 bytes from HBM byte 6,848 (tiny: 128-byte words, bursts split at 512-byte
    multiples, 256-byte granules over 4 channels, 32 B per channel per cycle): bursts
    [6784, 7168) (3 words; its bytes from 6848: 64 B of granule 26 on channel 2, 2 cycles, and
    granule 27 on channel 3, 8), [7168, 7680) (channels 0 and 1, 8 each), [7680, 8192)
    (channels 2 and 3: channel 2's run grows 64 -> 320 B, 2 -> 10 cycles, so 8; channel 3's
    256 -> 512 B, 8 -> 16), [8192, 8704) (0 and 1), [8704, 9088) (3 words; bytes to 8992:
    256 B on channel 2, 320 -> 576 B: 10 -> 18 cycles; 32 B on channel 3, 512 -> 544 B: 16 ->
    17 cycles). The pieces' occupancies are the run's: 16, 16, 18, 17."""
    want = [
        (3, ((2, 2), (3, 8))),
        (4, ((0, 8), (1, 8))),
        (4, ((2, 8), (3, 8))),
        (4, ((0, 8), (1, 8))),
        (3, ((2, 8), (3, 1))),
    ]
    assert [(b.port, b.pieces) for b in hbm_bursts(tiny, 6848, 2144)] == want
    assert [p.occupancy for p in hbm_pieces(tiny, 6848, 2144)] == [16, 16, 18, 17]
    # a store's burst takes one write response on the port
    assert [b.port for b in hbm_bursts(tiny, 6848, 2144, write=True)] == [1] * 5


def test_port_carries_a_loads_words_in_order(tiny):
    """The bursts above from cycle 0 on idle channels: ready (their channels done) at 8, 8,
    16, 16, 18; the port carries their 3, 4, 4, 4, 3 words in order, one per cycle, the
    last of a burst no earlier than it is ready: 8, max(8 + 4, 8) = 12, max(12 + 4, 16) = 16,
    20, max(20 + 3, 18) = 23; on chip 11 cycles later (34), where the channels alone end at
    18 (29)."""
    h = HbmChannels(tiny)
    tr = h.submit(0, hbm_bursts(tiny, 6848, 2144))
    h.settle(4)
    assert (tr.start, tr.streamed, tr.done) == (0, 18, 23 + 11)
    assert h.free == [16, 16, 18, 17]


def test_bursts_take_their_channels_in_arrival_order(tiny):
    """An LD of three bursts on channel 0 (8 cycles, 4 words each) and an ST of one (5 cycles,
    one response), both started at 0, requested at 1: the LD's bursts arrive at 1, 2, 3, the
    ST's at 1, after the LD's burst of that cycle. Channel 0: LD0 1..9, ST 9..14, LD1
    14..22, LD2 22..30. ST: response at 14, on chip 25, done 26 (ST_DONE_STAGES 1). LD: the
    port's last word max(9 + 4, 22) = 22, then max(22 + 4, 30) = 30; on chip 41, done 43
    (LD_DONE_STAGES 2), one more with its realigner's flush (latency 1). A whole transfer
    booked at once would have put the ST behind all of the LD (25..30)."""
    ld = (HbmBurst(4, ((0, 8),)),) * 3
    st = (HbmBurst(1, ((0, 5),)),)
    for flush in (0, 1):
        ops = streams(
            M(LD, "ld", 0, flush, hbm=(piece(0, 24, 3 * 512),), bursts=ld),
            M(ST, "st", 0, 0, hbm=(piece(0, 5),), bursts=st),
        )
        r = Machine(tiny, trace=True).run(ops)
        assert sorted(r.trace) == [("ld", "ld", 1, 30), ("st", "st", 9, 14)]
        assert sorted(r.ends) == [26, 43 + flush]
        assert r.cycles == 43 + flush
        assert r.busy["ld"] == 29 and r.busy["st"] == 5


def test_realigner_flush_of_a_load(tiny):
    """The LD's realigner (128-byte words) takes a cycle after its last input when the row's
    output words are as many as its input words but its first input makes none (s_in >
    s_out), or there are more output words than input words."""
    # 402 B from HBM byte 64 of a word to buffer byte 0: 4 input words, 4 output words, lead
    assert ld_flush_cycles(tiny, 30144, 1, 402, 402, 8192, 402) == 1
    # aligned alike: every input word is its output word
    assert ld_flush_cycles(tiny, 384, 1, 4288, 4288, 0, 4288) == 0
    # 100 B from byte 0 of a word to byte 64: 1 input word, 2 output words
    assert ld_flush_cycles(tiny, 0, 1, 100, 100, 64, 100) == 1
    # two strided rows, the last one's: HBM byte 1064 (40 into a word) to buffer byte 100:
    # 2 input words, 2 output words, no lead
    assert ld_flush_cycles(tiny, 64, 2, 100, 1000, 0, 100) == 0
