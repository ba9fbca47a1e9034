"""The wide-to-channel AXI splitters (hwflow.hw.machine.hbm_ports) in Amaranth's simulator:
behavioural per-channel AXI memories (random ready/valid) hold the HBM image interleaved by
hwflow.isa.hbm_channel; wide bursts read through the splitter must return the image's bytes
in request order (two sources interleaved), wide writes with strobes must land in the right
channel at the right offset, and every channel burst stays within the channel's limits."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from amaranth.sim import Simulator

from hwflow.config import load_hw
from hwflow.hw.machine.hbm_ports import ReadSplitter, WriteSplitter
from hwflow.hw.machine.params import MachineParams
from hwflow.isa import hbm_channel

TINY = MachineParams.from_preset(load_hw("tiny"))  # 128 B words, 4 channels of 32 B ports
#: u280's shape scaled down: a word (256 B) is 4 channel bursts (64 B) of 2 port beats
WIDE = replace(TINY, axi_data_bits=8 * 256, max_burst_beats=1, port_burst_bytes=64)
SIZE = 8192  # bytes of HBM image the test touches


def _to_channels(mp: MachineParams, image: bytes) -> list[bytearray]:
    """The image split into channel memories (the reference: isa.hbm_channel)."""
    g, n = mp.interleave_bytes, mp.channels
    mem = [bytearray(SIZE // n) for _ in range(n)]
    for a in range(0, SIZE, g):
        c = hbm_channel(a, n, g)
        off = (a // (g * n)) * g
        mem[c][off : off + g] = image[a : a + g]
    return mem


class _Channel:
    """One channel's AXI subordinate over ``mem``: random ready/valid, in-order responses;
    records each burst's (bytes) to check the limits."""

    def __init__(self, mp: MachineParams, port, mem: bytearray, rng: random.Random) -> None:
        self.p, self.mem, self.rng = port, mem, rng
        self.pb = mp.port_bits // 8
        self.ar: list[int] = []
        self.aw: list[tuple[int, int]] = []
        self.bursts: list[int] = []
        self.b = 0

    async def step(self, ctx) -> None:
        p, rng, pb = self.p, self.rng, self.pb
        if hasattr(p, "arvalid"):
            ctx.set(p.arready, rng.random() < 0.7)
            if ctx.get(p.arvalid) and ctx.get(p.arready):
                a, n = ctx.get(p.araddr), ctx.get(p.arlen) + 1
                assert ctx.get(p.arsize) == (pb - 1).bit_length()
                self.bursts.append(n * pb)
                self.ar += [a + pb * i for i in range(n)]
            ok = bool(self.ar) and rng.random() < 0.8
            ctx.set(p.rvalid, ok)
            if ok:
                a = self.ar[0]
                ctx.set(p.rdata, int.from_bytes(self.mem[a : a + pb], "little"))
                if ctx.get(p.rready):
                    self.ar.pop(0)
        else:
            ctx.set(p.awready, rng.random() < 0.7)
            if ctx.get(p.awvalid) and ctx.get(p.awready):
                a, n = ctx.get(p.awaddr), ctx.get(p.awlen) + 1
                self.bursts.append(n * pb)
                self.aw += [(a + pb * i, i == n - 1) for i in range(n)]
            ctx.set(p.wready, bool(self.aw) and rng.random() < 0.8)
            if ctx.get(p.wvalid) and ctx.get(p.wready):
                a, last = self.aw.pop(0)
                assert ctx.get(p.wlast) == last
                d, s = ctx.get(p.wdata).to_bytes(pb, "little"), ctx.get(p.wstrb)
                for t in range(pb):
                    if s >> t & 1:
                        self.mem[a + t] = d[t]
                self.b += last
            ctx.set(p.bvalid, self.b > 0)
            if self.b and ctx.get(p.bready):
                self.b -= 1


def _bursts(mp: MachineParams, rng: random.Random, count: int) -> list[tuple[int, int]]:
    """Wide bursts (first byte, words) as LD issues them: unaligned starts, never crossing
    a multiple of the wide burst length."""
    wb = mp.beat_bytes
    span = wb * mp.max_burst_beats
    out = []
    for _ in range(count):
        a = rng.randrange(0, SIZE - span)
        room = (span - a % span) // wb or 1
        out.append((a, rng.randint(1, max(1, min(room, mp.max_burst_beats)))))
    return out


@pytest.mark.parametrize("mp", [TINY, WIDE], ids=["tiny", "wide-word"])
def test_reads_return_the_image_in_request_order(mp: MachineParams) -> None:
    rng = random.Random(3)
    image = bytes(rng.randrange(256) for _ in range(SIZE))
    mems = _to_channels(mp, image)
    dut = ReadSplitter(mp, sources=2)
    wb = mp.beat_bytes
    reqs = [_bursts(mp, rng, 12), _bursts(mp, rng, 12)]
    got: list[list[tuple[int, bool]]] = [[], []]
    chans = [_Channel(mp, getattr(dut, f"ch{c}"), mems[c], rng) for c in range(mp.channels)]

    async def tb(ctx):
        pend = [list(r) for r in reqs]
        for _ in range(3000):
            for i in (0, 1):
                s = getattr(dut, f"s{i}")
                ctx.set(s.arvalid, bool(pend[i]))
                if pend[i]:
                    a, n = pend[i][0]
                    ctx.set(s.araddr, a)
                    ctx.set(s.arlen, n - 1)
                ctx.set(s.rready, rng.random() < 0.8)
            for ch in chans:
                await ch.step(ctx)
            for i in (0, 1):
                s = getattr(dut, f"s{i}")
                if pend[i] and ctx.get(s.arready):
                    pend[i].pop(0)
                if ctx.get(s.rvalid) and ctx.get(s.rready):
                    got[i].append((ctx.get(s.rdata), bool(ctx.get(s.rlast))))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    for i in (0, 1):
        want = []
        for a, n in reqs[i]:
            base = a & ~(wb - 1)
            want += [
                (int.from_bytes(image[base + k * wb : base + (k + 1) * wb], "little"), k == n - 1)
                for k in range(n)
            ]
        assert got[i] == want, i
    limit = min(wb, mp.port_burst_bytes)
    assert all(b == limit for ch in chans for b in ch.bursts)


@pytest.mark.parametrize("mp", [TINY, WIDE], ids=["tiny", "wide-word"])
def test_writes_land_in_their_channels_with_strobes(mp: MachineParams) -> None:
    rng = random.Random(5)
    image = bytearray(rng.randrange(256) for _ in range(SIZE))
    mems = _to_channels(mp, bytes(image))
    dut = WriteSplitter(mp)
    wb = mp.beat_bytes
    reqs = _bursts(mp, rng, 16)
    beats = []  # (data, strobes) per word, in order
    for a, n in reqs:
        base = a & ~(wb - 1)
        for k in range(n):
            data = bytes(rng.randrange(256) for _ in range(wb))
            strb = rng.getrandbits(wb)
            beats.append((int.from_bytes(data, "little"), strb, k == n - 1))
            for t in range(wb):
                if strb >> t & 1:
                    image[base + k * wb + t] = data[t]
    chans = [_Channel(mp, getattr(dut, f"ch{c}"), mems[c], rng) for c in range(mp.channels)]
    out = {"b": 0}

    async def tb(ctx):
        aws, ws = list(reqs), list(beats)
        ctx.set(dut.s.bready, 1)
        for _ in range(4000):
            ctx.set(dut.s.awvalid, bool(aws))
            if aws:
                ctx.set(dut.s.awaddr, aws[0][0])
                ctx.set(dut.s.awlen, aws[0][1] - 1)
            ctx.set(dut.s.wvalid, bool(ws))
            if ws:
                ctx.set(dut.s.wdata, ws[0][0])
                ctx.set(dut.s.wstrb, ws[0][1])
                ctx.set(dut.s.wlast, ws[0][2])
            for ch in chans:
                await ch.step(ctx)
            if aws and ctx.get(dut.s.awready):
                aws.pop(0)
            if ws and ctx.get(dut.s.wready):
                ws.pop(0)
            out["b"] += ctx.get(dut.s.bvalid)
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    assert out["b"] == len(reqs)
    assert mems == _to_channels(mp, bytes(image))
    limit = min(wb, mp.port_burst_bytes)
    assert all(b == limit for ch in chans for b in ch.bursts)
