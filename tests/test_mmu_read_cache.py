"""The matmul unit's part reader (hwflow.hw.machine.mmu_read.PartReader) in Amaranth's
simulator: windows equal the buffer's bytes, and a stream's row spanning two words is read
once, not again for every row group."""

from __future__ import annotations

import random

from amaranth.hdl import Elaboratable, Module
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator

from hwflow.hw.machine.mmu_read import PartReader
from hwflow.isa import Buf

WB = 32  #: bytes per buffer word
WORDS = 16


class _Bench(Elaboratable):
    """A PartReader on a WEIGHT buffer of random words, every request granted."""

    def __init__(self, init: list[int], streams: int) -> None:
        self.init = init
        self.rd = PartReader(dict.fromkeys(Buf, WORDS), WB, streams, 8)

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.submodules.rd = rd = self.rd
        m.submodules.mem = mem = Memory(shape=8 * WB, depth=WORDS, init=self.init)
        rp = mem.read_port()
        port = rd.rd_weight
        m.d.comb += [
            rp.addr.eq(port.addr),
            rp.en.eq(port.en),
            port.grant.eq(port.en),
            port.data.eq(rp.data),
            rd.buf.eq(Buf.WEIGHT),
        ]
        return m


def _run(parts: list[tuple[int, int, int]], streams: int = 1, seed: int = 3):
    """Issue ``parts`` (addr, nbytes, sid) back to back; returns (windows' bytes, reads)."""
    rng = random.Random(seed)
    data = bytes(rng.randrange(256) for _ in range(WB * WORDS))
    init = [int.from_bytes(data[i * WB : (i + 1) * WB], "little") for i in range(WORDS)]
    dut = _Bench(init, streams)
    rd = dut.rd
    got: list[bytes] = []
    reads = [0]

    async def bench(ctx) -> None:
        pending = list(parts)
        sent = []
        for _ in range(10 * len(parts) + 10):
            if pending:
                a, n, sid = pending[0]
                ctx.set(rd.req.valid, 1)
                ctx.set(rd.req.payload.addr, a)
                ctx.set(rd.req.payload.nbytes, n)
                ctx.set(rd.req.payload.sid, sid)
            else:
                ctx.set(rd.req.valid, 0)
            took = pending and ctx.get(rd.req.ready)
            reads[0] += ctx.get(rd.rd_weight.en) and ctx.get(rd.rd_weight.grant)
            if ctx.get(rd.out_valid):
                a, n, _ = sent[len(got)]
                got.append(ctx.get(rd.out_win).to_bytes(WB, "little")[:n])
            await ctx.tick()
            if took:
                sent.append(pending.pop(0))
        return

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    want = [data[a : a + n] for a, n, _ in parts]
    return got, want, reads[0]


def test_a_row_over_two_words_is_read_once_per_pass() -> None:
    """Row bytes [20, 52) over words 0 and 1, in 8-byte blocks 20, 28 (straddles), 36, 44,
    three row groups: the first group reads word 0 (block 20) and word 1 (block 28: word 0
    cached), the later groups find word 0 as the word before the cached word 1: 2 reads (a
    one-word cache re-reads word 0 and word 1 every group: 6)."""
    parts = [(a, 8, 0) for _ in range(3) for a in (20, 28, 36, 44)]
    got, want, reads = _run(parts)
    assert got == want
    assert reads == 2


def test_windows_equal_the_buffer_bytes() -> None:
    """Random parts of three streams (up to a word, straddling or not, near one another so
    the caches hit) return the buffer's bytes."""
    rng = random.Random(11)
    parts = []
    for _ in range(120):
        sid = rng.randrange(3)
        a = rng.randrange(0, WB * (WORDS - 2))
        parts.append((a, rng.randrange(1, WB + 1), sid))
        parts.append((a + rng.randrange(0, WB), rng.randrange(1, WB + 1), sid))
    got, want, _ = _run(parts, streams=3)
    assert got == want
