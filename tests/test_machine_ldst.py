"""LD/ST units and token counters of the RTL machine in Amaranth's simulator (no Verilator):
rows at random unaligned offsets and strides through a behavioural AXI subordinate, compared
with plain byte slicing; the token counters' overflow flag."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from hwflow.config import load_hw
from hwflow.costs import hbm_pieces, hbm_runs
from hwflow.hw.machine.ldst import LoadUnit, StoreUnit
from hwflow.hw.machine.params import MachineParams
from hwflow.hw.machine.queue import Tokens
from hwflow.isa import Buf

MP = MachineParams.from_preset(load_hw("tiny"))
WB = MP.beat_bytes


def _cmd(dut, **f: int) -> list:
    return [(getattr(dut.cmd.payload, k), v) for k, v in f.items()]


def _run_ld(hbm: bytes, f: dict[str, int]) -> tuple[bytearray, int, list]:
    """LoadUnit on one command; returns the ACT buffer, cycles to done, the AR bursts."""
    dut = LoadUnit(MP)
    buf = bytearray(MP.words[Buf.ACT] * WB)
    out = {"cycles": -1, "ars": []}

    async def tb(ctx):
        ctx.set(dut.wr_act.grant, 1)
        for k, v in _cmd(dut, buf=Buf.ACT, **f):
            ctx.set(k, v)
        ctx.set(dut.cmd.valid, 1)
        if ctx.get(dut.done):  # an empty command is done as it is accepted
            out["cycles"] = 0
            return
        await ctx.tick()
        ctx.set(dut.cmd.valid, 0)
        beats: list = []
        for cyc in range(2000):
            ctx.set(dut.axi.arready, 1)
            if ctx.get(dut.axi.arvalid):
                a, n = ctx.get(dut.axi.araddr), ctx.get(dut.axi.arlen) + 1
                out["ars"].append((a, n, ctx.get(dut.axi.aruser)))
                a &= ~(WB - 1)  # the beats of an unaligned burst are whole (IHI0022 A3.4.1)
                beats += [(a + WB * i, i == n - 1) for i in range(n)]
            ctx.set(dut.axi.rvalid, bool(beats))
            if beats:
                a, last = beats[0]
                ctx.set(dut.axi.rdata, int.from_bytes(hbm[a : a + WB], "little"))
                ctx.set(dut.axi.rlast, last)
                if ctx.get(dut.axi.rready):
                    beats.pop(0)
            if ctx.get(dut.wr_act.en):
                w, d, s = (
                    ctx.get(dut.wr_act.addr),
                    ctx.get(dut.wr_act.data),
                    ctx.get(dut.wr_act.strb),
                )
                raw = d.to_bytes(WB, "little")
                for t in range(WB):
                    if s >> t & 1:
                        buf[w * WB + t] = raw[t]
            if ctx.get(dut.done):
                out["cycles"] = cyc
                return
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return buf, out["cycles"], out["ars"]


CASES = [
    dict(hbm=5, hbm_stride=77, off=3, stride=100, row_bytes=70, rows=3),
    dict(hbm=16, hbm_stride=16, off=0, stride=32, row_bytes=16, rows=16),  # one run, rows apart
    dict(hbm=100, hbm_stride=50, off=9, stride=77, row_bytes=50, rows=15),  # ... past a burst
    dict(hbm=0, hbm_stride=16, off=0, stride=16, row_bytes=16, rows=24),  # one run both sides
    dict(hbm=31, hbm_stride=1, off=0, stride=1, row_bytes=1, rows=9),  # overlapping 1-byte rows
    dict(hbm=100, hbm_stride=700, off=45, stride=1200, row_bytes=1100, rows=2),  # 3+ bursts
    dict(hbm=64, hbm_stride=32, off=64, stride=32, row_bytes=32, rows=4),  # aligned
    dict(hbm=7, hbm_stride=9, off=5, stride=9, row_bytes=0, rows=4),  # empty rows
]


def _random_cases(n: int) -> list[dict[str, int]]:
    """Random geometries inside the benches' 8 KiB HBM: contiguous or strided on either side,
    short and long rows, any alignment."""
    rng = np.random.default_rng(11)
    out = []
    for _ in range(n):
        rows, rb = int(rng.integers(1, 12)), int(rng.integers(1, 300))
        hs = rb if rng.random() < 0.5 else rb + int(rng.integers(1, 200))
        bs = rb if rng.random() < 0.5 else rb + int(rng.integers(1, 200))
        hbm = int(rng.integers(0, 8192 - rows * hs - rb))
        out.append(dict(hbm=hbm, hbm_stride=hs, off=int(rng.integers(0, 300)), stride=bs,
                        row_bytes=rb, rows=rows))  # fmt: skip
    return out


CASES += _random_cases(8)


@pytest.mark.parametrize("f", CASES)
def test_load_unit_moves_rows_like_byte_slicing(f: dict[str, int]) -> None:
    """Every LD geometry (unaligned both sides, overlapping rows, multi-burst, empty) writes
    exactly the bytes funcsim's LD writes; no burst passes max_burst_bytes or a 4 KiB page."""
    hbm = np.random.default_rng(3).integers(0, 256, 8192, dtype=np.uint8).tobytes()
    got, cycles, ars = _run_ld(hbm, f)
    assert [_span(*ar) for ar in ars] == _want_spans(f)
    lg = (WB - 1).bit_length()
    assert [u >> (lg + 1) for _a, _n, u in ars] == [1, *[0] * (len(ars) - 1)][: len(ars)]
    want = bytearray(len(got))
    for i in range(f["rows"]):
        a, b = f["hbm"] + i * f["hbm_stride"], f["off"] + i * f["stride"]
        want[b : b + f["row_bytes"]] = hbm[a : a + f["row_bytes"]]
    assert got == want and cycles >= 0
    for a, n, _user in ars:
        assert n * WB <= load_hw("tiny").hbm.max_burst_bytes
        assert a // 4096 == (a + n * WB - 1) // 4096


def _span(a: int, n: int, user: int) -> tuple[int, int, bool]:
    """A burst's bytes [first, end) and hop flag from AxADDR, the beats and AxUSER."""
    lg = (WB - 1).bit_length()
    last = (a & ~(WB - 1)) + (n - 1) * WB + (user & (WB - 1))
    return a, last + 1, bool(user >> lg & 1)


def _want_spans(f: dict[str, int]) -> list[tuple[int, int, bool]]:
    """The bursts the cost model's runs give (costs.hbm_runs): each run split at multiples of
    max_burst_bytes; a hop run's bursts that enter a channel flagged (its first, and one
    starting an interleave granule: each channel piece of a hop run opens a DRAM row)."""
    hw = load_hw("tiny")
    mb, g = hw.hbm.max_burst_bytes, hw.hbm.interleave_bytes
    out = []
    for a, n, hop in hbm_runs(hw, f["hbm"], f["rows"], f["row_bytes"], f["hbm_stride"]):
        lo, end = a, a + n
        while lo < end:
            hi = min(end, (lo // mb + 1) * mb)
            out.append((lo, hi, hop and (lo == a or lo % g == 0)))
            lo = hi
    return out


def _run_st(buf: bytes, f: dict[str, int], spans: list) -> bytearray:
    dut = StoreUnit(MP)
    hbm = bytearray(8192)

    async def tb(ctx):
        for k, v in _cmd(dut, buf=Buf.ACT, **f):
            ctx.set(k, v)
        ctx.set(dut.cmd.valid, 1)
        if ctx.get(dut.done):  # an empty command is done as it is accepted
            return
        await ctx.tick()
        ctx.set(dut.cmd.valid, 0)
        aws: list = []
        pend_b, rd = 0, None
        spans.clear()
        for _ in range(3000):
            ctx.set(dut.rd_act.grant, ctx.get(dut.rd_act.en))
            data = int.from_bytes(buf[rd * WB : rd * WB + WB], "little") if rd is not None else 0
            ctx.set(dut.rd_act.data, data)
            rd = ctx.get(dut.rd_act.addr) if ctx.get(dut.rd_act.en) else None
            ctx.set(dut.axi.awready, 1)
            ctx.set(dut.axi.wready, 1)
            if ctx.get(dut.axi.awvalid):
                a, n = ctx.get(dut.axi.awaddr), ctx.get(dut.axi.awlen) + 1
                spans.append(_span(a, n, ctx.get(dut.axi.awuser)))
                aws.append([a & ~(WB - 1), n])
            ctx.set(dut.axi.bvalid, pend_b > 0)
            pend_b -= pend_b > 0 and ctx.get(dut.axi.bready)
            if ctx.get(dut.axi.wvalid):
                a, _n = aws[0]
                raw = ctx.get(dut.axi.wdata).to_bytes(WB, "little")
                strb = ctx.get(dut.axi.wstrb)
                for t in range(WB):
                    if strb >> t & 1:
                        hbm[a + t] = raw[t]
                aws[0][0] += WB
                aws[0][1] -= 1
                assert ctx.get(dut.axi.wlast) == (aws[0][1] == 0)  # wlast ends each burst
                if aws[0][1] == 0:
                    aws.pop(0)
                    pend_b += 1
            if ctx.get(dut.done):
                return
            await ctx.tick()
        raise AssertionError("ST never finished")

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return hbm


@pytest.mark.parametrize("f", CASES)
def test_store_unit_moves_rows_like_byte_slicing(f: dict[str, int]) -> None:
    """ST of the same geometries writes exactly funcsim's bytes (later rows win overlaps)."""
    buf = np.random.default_rng(4).integers(0, 256, MP.words[Buf.ACT] * WB, dtype=np.uint8)
    buf = buf.tobytes()
    spans: list = []
    got = _run_st(buf, f, spans)
    assert spans == _want_spans(f)
    want = bytearray(len(got))
    for i in range(f["rows"]):
        a, b = f["hbm"] + i * f["hbm_stride"], f["off"] + i * f["stride"]
        want[a : a + f["row_bytes"]] = buf[b : b + f["row_bytes"]]
    assert got == want


def test_token_counter_overflow_is_flagged() -> None:
    """2**token_bits pushes without a pop overflow the counter: the sticky flag rises (the
    count wrapped to 0); one fewer does not raise it."""
    dut = Tokens(MP)
    seen = {}

    async def tb(ctx):
        for n in range(1 << MP.token_bits):
            ctx.set(dut.push[0], 0b00010)  # LD -> ST
            await ctx.tick()
            if n == (1 << MP.token_bits) - 2:
                seen["before"] = ctx.get(dut.overflow)
        ctx.set(dut.push[0], 0)
        await ctx.tick()
        seen["after"] = ctx.get(dut.overflow)
        seen["avail"] = ctx.get(dut.avail[1])

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    assert seen == {"before": 0, "after": 1, "avail": 0}


def _hbm_waits(st_after: int) -> dict[str, int]:
    """The simulated HBM (hbm_sim.HbmModel) given one LD burst (512 bytes at byte 0: channels
    0 and 1) and, ``st_after`` cycles later, an ST burst of one beat at byte 0 (channel 0) and
    then a second ST burst of the same transfer at byte 256 (channel 1); returns the ports'
    channel waits and transfer counts once both are charged."""
    from hwflow.hw.machine.axi import user_bits
    from hwflow.hw.machine.hbm_sim import HbmModel

    hw = load_hw("tiny")
    dut = HbmModel(hw, MP, 64)
    lg = (WB - 1).bit_length()
    start = 1 << (lg + 1)  # AxUSER: the transfer's first burst (axi.user_bits)
    assert user_bits(MP.axi_data_bits) == lg + 2
    out: dict[str, int] = {}

    async def tb(ctx):
        ctx.set(dut.ld.rready, 1)
        ctx.set(dut.st.bready, 1)
        ctx.set(dut.ld.araddr, 0)
        ctx.set(dut.ld.arlen, 512 // WB - 1)
        ctx.set(dut.ld.aruser, start | (WB - 1))
        ctx.set(dut.ld.arvalid, 1)
        await ctx.tick()
        ctx.set(dut.ld.arvalid, 0)
        for _ in range(st_after - 1):
            await ctx.tick()
        for addr, first in ((0, start), (256, 0)):
            ctx.set(dut.st.awaddr, addr)
            ctx.set(dut.st.awlen, 0)
            ctx.set(dut.st.awuser, first | (WB - 1))
            ctx.set(dut.st.awvalid, 1)
            ctx.set(dut.st.wvalid, 1)
            ctx.set(dut.st.wlast, 1)
            ctx.set(dut.st.wstrb, (1 << WB) - 1)
            await ctx.tick()
        ctx.set(dut.st.awvalid, 0)
        for _ in range(12):
            await ctx.tick()
        for k in ("ld_wait", "ld_count", "st_wait", "st_count"):
            out[k] = ctx.get(getattr(dut, f"chan_{k}"))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return out


def test_hbm_model_reports_the_queueing_before_a_transfers_first_channel() -> None:
    """An ST arriving while an LD burst holds its channels waits until the first of its
    channels is free: ``costs.hbm_pieces`` occupancy of the LD on channel 0 less the cycles
    between the two arrivals (the later ST burst, on channel 1, frees no earlier; the port's
    wait is the transfer's earliest start). The LD itself did not wait; each port counted one
    transfer. Arriving after the LD's occupancy, the ST does not wait."""
    hw = load_hw("tiny")
    occ = {p.channel: p.occupancy for p in hbm_pieces(hw, 0, 512)}
    assert occ[0] == occ[1] > 3
    got = _hbm_waits(2)
    assert got == {"ld_wait": 0, "ld_count": 1, "st_wait": occ[0] - 2, "st_count": 1}
    assert _hbm_waits(occ[0] + 1)["st_wait"] == 0


def test_class_table_counts_channel_queueing_as_stall() -> None:
    """An RTL record's busy time is start to done (inclusive) less its channel wait: an LD
    accepted in cycle 10, done in cycle 29, that queued 5 cycles for its first channel is 15
    busy cycles; a record without the field waited nothing (an MM, 4 cycles)."""
    from hwflow.hw.machine.cycles import class_table
    from hwflow.isa import TOKEN_UNITS, Unit

    ld, mm = TOKEN_UNITS.index(Unit.LD), TOKEN_UNITS.index(Unit.MM)
    model = {u: [] for u in TOKEN_UNITS}
    model[Unit.LD] = [("LD", 15)]
    model[Unit.MM] = [("MM", 4)]
    rows = {r.name: r for r in class_table([(ld, 0, 10, 29, 5), (mm, 1, 3, 6)], model)}
    assert (rows["LD"].rtl, rows["LD"].error) == (15, 0)
    assert (rows["MM"].rtl, rows["MM"].error) == (4, 0)
