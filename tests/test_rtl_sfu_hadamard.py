"""The SFU's Hadamard row buffer (hwflow/hw/machine/sfu_hadamard.py) in Amaranth's simulator
against numerics.hadamard_int: every head size up to the buffer's, the tiny and the u280
lane counts, random input gaps and output stalls, the head maximum and the cycle count."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from hwflow.config import load_hw
from hwflow.hw.machine.sfu_hadamard import Hadamard, chunk, head_cycles
from hwflow.numerics import hadamard_int


def _run(lanes: int, max_dim: int, heads: list[np.ndarray], seed: int, corrupt: bool = False):
    """Feed ``heads`` (INT16 rows) chunk by chunk with random gaps and stalls; returns the
    transforms, their maxima and the cycles from each head's first chunk in to its last out
    when nothing stalls (the first head)."""
    dut = Hadamard(lanes, max_dim)
    rng = np.random.default_rng(seed)
    got: list[list[int]] = []
    mxs: list[int] = []
    span: list[int] = []
    w = dut.width

    async def tb(ctx) -> None:
        cyc = 0
        for h, x in enumerate(heads):
            hd = x.size
            n = chunk(lanes, hd)
            ctx.set(dut.ldim, hd.bit_length() - 1)
            t0 = cyc
            for c in range(hd // n):
                while h and rng.random() < 0.3:  # gaps (not in the first head)
                    await ctx.tick()
                    cyc += 1
                word = 0
                for q, v in enumerate(x[c * n : (c + 1) * n]):
                    word |= (int(v) & 0xFFFF) << (16 * q)
                ctx.set(dut.i.payload, word)
                ctx.set(dut.i.valid, 1)
                while not ctx.get(dut.i.ready):
                    await ctx.tick()
                    cyc += 1
                await ctx.tick()
                cyc += 1
                ctx.set(dut.i.valid, 0)
            out: list[int] = []
            while True:
                stall = h and rng.random() < 0.3
                ctx.set(dut.o.ready, 0 if stall else 1)
                if ctx.get(dut.o.valid) and not stall:
                    raw = ctx.get(dut.o.payload.data)
                    for q in range(n):
                        v = (raw >> (w * q)) & ((1 << w) - 1)
                        out.append(v - (1 << w) if v >> (w - 1) else v)
                    mx = ctx.get(dut.mx)
                    last = ctx.get(dut.o.payload.last)
                    await ctx.tick()
                    cyc += 1
                    if last:
                        break
                else:
                    await ctx.tick()
                    cyc += 1
            ctx.set(dut.o.ready, 0)
            got.append(out)
            mxs.append(mx)
            span.append(cyc - t0)
            assert ctx.get(dut.idle)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return got, mxs, span


@pytest.mark.parametrize("preset", ["tiny", "u280"])
def test_hadamard_equals_numerics(preset: str) -> None:
    """Random INT16 heads of every size 2..128 (the extremes -32768 and 32767 included):
    each transform and its maximum equal numerics.hadamard_int's, and an unstalled head takes
    head_cycles' in + stage + out cycles."""
    lanes = load_hw(preset).sfu.lanes
    rng = np.random.default_rng(3)
    heads = []
    for hd in (2, 4, 8, 16, 32, 64, 128, 16, 2, 128):
        x = rng.integers(-32768, 32768, hd)
        x[rng.integers(0, hd)] = int(rng.choice([-32768, 32767]))
        heads.append(x)
    heads.insert(0, np.full(128, -32768))  # the largest magnitude the buffer must hold
    got, mxs, span = _run(lanes, 128, heads, seed=1)
    for x, y, mx in zip(heads, got, mxs, strict=True):
        want = hadamard_int(x)
        assert y == want.tolist(), x.size
        assert mx == int(np.abs(want).max())
    assert span[0] == sum(head_cycles(lanes, 128))


def test_hadamard_check_is_live() -> None:
    """The comparison fails when the expected transform is wrong (one element off)."""
    x = np.arange(-8, 8) * 1000
    got, _, _ = _run(4, 16, [x], seed=2)
    want = hadamard_int(x)
    want[5] += 1
    assert got[0] != want.tolist()
