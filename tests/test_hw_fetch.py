"""Instruction fetch and memory of the RTL machine in Amaranth's simulator (no Verilator): a
template's words at an unaligned HBM address are fetched through a behavioural AXI
subordinate, and every instruction window read back equals the words at that index; the
memory has the shape the resource estimate counts (hwflow.hw.memories.instr_memory)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from amaranth.hdl import Fragment, Module
from amaranth.sim import Simulator

from hwflow.config import load_hw
from hwflow.hw.machine.decode import MAX_INSTR_BITS
from hwflow.hw.machine.fetch import Fetch, InstrMem
from hwflow.hw.machine.params import MachineParams
from hwflow.hw.memories import INSTR_ROW_WORDS, instr_memory

TINY = MachineParams.from_preset(load_hw("tiny"))
#: tiny's machine with 512-byte beats (4 row pairs per beat), 8 KiB of instruction memory
WIDE = replace(TINY, axi_data_bits=8 * 512, max_burst_beats=1, instr_bytes=8192)
NWIN = MAX_INSTR_BITS // 32


def _run(mp: MachineParams, words: np.ndarray, addr: int, probes: list[int], stall: int):
    """Fetch ``words`` from HBM byte ``addr``; returns (cycles to done, windows at
    ``probes``: word indices into the program) as lists of 32-bit words."""
    wb = mp.beat_bytes
    hbm = bytearray(addr + 4 * len(words) + 2 * wb)
    hbm[addr : addr + 4 * len(words)] = words.astype("<u4").tobytes()
    m = Module()
    m.submodules.imem = imem = InstrMem(mp)
    m.submodules.fetch = fetch = Fetch(mp, imem.line_bits)
    m.d.comb += [
        imem.w_line.eq(fetch.w_line),
        imem.w_data.eq(fetch.w_data),
        imem.w_en.eq(fetch.w_en),
    ]
    out: dict = {"cycles": -1, "win": []}
    skip = (addr % wb) // 4

    async def tb(ctx):
        ctx.set(fetch.addr, addr)
        ctx.set(fetch.words, len(words))
        ctx.set(fetch.start, 1)
        await ctx.tick()
        ctx.set(fetch.start, 0)
        beats: list[int] = []
        ctx.set(fetch.axi.arready, 1)
        for cyc in range(5000):
            if ctx.get(fetch.axi.arvalid):
                a, n = ctx.get(fetch.axi.araddr), ctx.get(fetch.axi.arlen) + 1
                beats += [a + wb * i for i in range(n)]
            ready = bool(beats) and cyc % (stall + 1) == 0
            ctx.set(fetch.axi.rvalid, ready)
            if ready:
                a = beats[0]
                ctx.set(fetch.axi.rdata, int.from_bytes(hbm[a : a + wb], "little"))
                if ctx.get(fetch.axi.rready):
                    beats.pop(0)
            if ctx.get(fetch.done):
                out["cycles"] = cyc
                break
            await ctx.tick()
        await ctx.tick()
        for i in probes:
            ctx.set(imem.raddr, i + skip)
            await ctx.tick()
            v = ctx.get(imem.window)
            out["win"].append([(v >> (32 * k)) & 0xFFFFFFFF for k in range(NWIN)])

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return out["cycles"], out["win"]


@pytest.mark.parametrize("mp", [TINY, WIDE], ids=["tiny-128B", "wide-512B"])
def test_fetched_windows_equal_the_program_words(mp: MachineParams) -> None:
    rng = np.random.default_rng(7)
    words = rng.integers(0, 2**32, 700, dtype=np.uint64).astype(np.uint32)
    addr = 3 * mp.beat_bytes + 4 * 29  # unaligned in its beat
    probes = [0, 1, 15, 16, 17, 31, 47, 300, 689, 690 - NWIN]
    cycles, wins = _run(mp, words, addr, probes, stall=1)
    assert cycles > 0
    padded = np.concatenate([words, np.zeros(NWIN, np.uint32)])
    for i, w in zip(probes, wins, strict=True):
        want = [int(x) for x in padded[i : i + NWIN]]
        assert w[: min(NWIN, len(words) - i)] == want[: min(NWIN, len(words) - i)], i


@pytest.mark.parametrize("mp", [TINY, WIDE], ids=["tiny-128B", "wide-512B"])
def test_fetch_writes_one_row_pair_per_cycle(mp: MachineParams) -> None:
    """Beats arriving every cycle: a beat of k row pairs takes k cycles (tiny: one per
    cycle), so the fetch of B beats ends B*k - 1 cycles after the first beat (+ the AR
    cycle)."""
    words = np.arange(1, 513, dtype=np.uint32)
    beats = 4 * len(words) // mp.beat_bytes
    k = mp.beat_bytes // (8 * INSTR_ROW_WORDS)
    cycles, _ = _run(mp, words, 0, [], stall=0)
    assert cycles == beats * k


def test_instr_memory_has_the_counted_shape() -> None:
    """Two banks of 16-word rows (memories.instr_memory), holding the preset's bytes."""
    mp = MachineParams.from_preset(load_hw("tiny"))
    im = InstrMem(mp)
    Fragment.get(im, None)  # elaborates (Amaranth warns of an unused component)
    shape = instr_memory(mp.instr_bytes)
    assert (im.depth, im.row_bits, shape.copies) == (shape.depth, 512, 2)
    assert 2 * im.depth * im.row_bits // 8 >= mp.instr_bytes
