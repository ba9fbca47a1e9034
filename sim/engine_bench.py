"""cocotb bench of a DSP-chain engine (``hwflow.hw.engine``), run on Verilator.

Scoreboard structure: the *driver* feeds beats (``i``) and requantization entries (``p``)
with random idle gaps, the *monitor* collects results (``o``) under random backpressure, the
*model* is :func:`hwflow.hw.stimulus.op_expected` (hwflow.numerics: matmul_int, nm_expand,
requantize), the *checker* compares every lane bit for bit. Design parameters come from the
environment (set by :func:`hwflow.hw.cosim.run_bench`) and rebuild the same
:class:`~hwflow.hw.params.EngineParams` as the Verilog.

Tests:

* ``random_ops``: every (weight bits, N, raw/requantized) the engine supports, random shapes,
  plus full-scale directed vectors, with gaps and backpressure.
* ``cost_model``: per shape, the op's latency in an idle engine and the start-to-start
  distance of two back-to-back ops equal :func:`hwflow.costs.matmul_cost` of the same op.
* ``throughput``: a long stream of beats; records simulated cycles per second.

``HWFLOW_CORRUPT=1`` falsifies one expected value: the run must then fail (tested).
"""

from __future__ import annotations

import itertools
import json
import os
import time
from dataclasses import dataclass, field

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from hwflow.config import load_hw
from hwflow.costs import matmul_cost
from hwflow.hw.pack import decode, encode
from hwflow.hw.params import EngineParams
from hwflow.hw.stimulus import MatmulOp, make_op, op_beats, op_expected, op_params

_STATS: dict[str, float] = {}


def _params() -> tuple[EngineParams, object]:
    hw = load_hw(os.environ["HWFLOW_PRESET"])
    kind = os.environ["HWFLOW_KIND"]
    chains = int(os.environ["HWFLOW_CHAINS"])
    p = EngineParams.from_preset(hw, kind, chains)  # type: ignore[arg-type]
    engine = getattr(hw, kind).model_copy(update={"chains": chains})
    return p, engine


def _save_stats(**kv: float) -> None:
    _STATS.update(kv)
    path = os.environ.get("HWFLOW_STATS")
    if path:
        with open(path, "w") as f:
            json.dump(_STATS, f)


@dataclass
class Traffic:
    """What a run saw: handshake cycles and the results, in order."""

    in_cycles: list[int] = field(default_factory=list)
    out_cycles: list[int] = field(default_factory=list)
    results: list[dict] = field(default_factory=list)
    cycles: int = 0


async def _reset(dut: object) -> None:
    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    dut.i__valid.value = 0
    dut.p__valid.value = 0
    dut.o__ready.value = 0
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    await RisingEdge(dut.clk)


async def _drive(
    dut: object,
    p: EngineParams,
    beats: list[int],
    params: list[int],
    n_results: int,
    rng: np.random.Generator,
    *,
    gap: float = 0.0,
    backpressure: float = 0.0,
    timeout: int = 100_000,
    decode_results: bool = True,
) -> Traffic:
    """Drive all beats and parameter entries, collect ``n_results`` results (one loop per
    cycle: set inputs, settle, sample handshakes, clock edge)."""
    tr = Traffic()
    bi = pi = 0
    cycle = 0
    while len(tr.results) < n_results or bi < len(beats):
        if cycle > timeout:
            raise AssertionError(
                f"timeout after {cycle} cycles: {bi}/{len(beats)} beats, "
                f"{pi}/{len(params)} params, {len(tr.results)}/{n_results} results"
            )
        iv = bi < len(beats) and not (gap and rng.random() < gap)
        pv = pi < len(params) and not (gap and rng.random() < gap)
        orr = not (backpressure and rng.random() < backpressure)
        dut.i__valid.value = int(iv)
        if iv:
            dut.i__payload.value = beats[bi]
        dut.p__valid.value = int(pv)
        if pv:
            dut.p__payload.value = params[pi]
        dut.o__ready.value = int(orr)
        await ReadOnly()
        if iv and dut.i__ready.value:
            tr.in_cycles.append(cycle)
            bi += 1
        if pv and dut.p__ready.value:
            pi += 1
        if orr and dut.o__valid.value:
            tr.out_cycles.append(cycle)
            word = int(dut.o__payload.value)
            tr.results.append(decode(p.result_layout, word) if decode_results else {})
        await RisingEdge(dut.clk)
        cycle += 1
    dut.i__valid.value = 0
    dut.p__valid.value = 0
    if pi != len(params):
        raise AssertionError(f"engine consumed {pi} of {len(params)} requantization entries")
    tr.cycles = cycle
    return tr


def _encode_ops(p: EngineParams, ops: list[MatmulOp]) -> tuple[list[int], list[int], list]:
    beats = [encode(p.beat_layout, b) for op in ops for b in op_beats(p, op)]
    params = [encode(p.params_layout, e) for op in ops for e in op_params(p, op)]
    expected = [e for op in ops for e in op_expected(p, op)]
    return beats, params, expected


def _check(results: list[dict], expected: list, ops_desc: list[str]) -> None:
    if os.environ.get("HWFLOW_CORRUPT") == "1":
        expected = [list(map(list, e)) for e in expected]
        expected[len(expected) // 2][0][0] += 1  # a wrong expected value must fail the bench
    assert len(results) == len(expected), f"{len(results)} results, expected {len(expected)}"
    for n, (got, exp) in enumerate(zip(results, expected, strict=True)):
        if got["data"] != exp:
            bad = [
                (t, lane, g, e)
                for t, (gr, er) in enumerate(zip(got["data"], exp, strict=True))
                for lane, (g, e) in enumerate(zip(gr, er, strict=True))
                if g != e
            ]
            raise AssertionError(
                f"result {n} ({ops_desc[n]}): {len(bad)} lanes differ, first (token, lane, "
                f"got, expected): {bad[:4]}"
            )


@cocotb.test()
async def random_ops(dut: object) -> None:
    """Every bits x N x raw combination, random shapes, gaps and backpressure, bit-exact."""
    p, _ = _params()
    rng = np.random.default_rng(int(os.environ.get("HWFLOW_SEED", "7")))
    await _reset(dut)
    ops: list[MatmulOp] = []
    combos = list(itertools.product(p.weight_bits, p.n_modes, (False, True)))
    for bits, n, raw in combos:
        rpb = p.rows_per_beat(n)
        for extreme in (False, True):
            tokens = int(rng.integers(1, 2 * p.rows + 2)) if p.rows > 1 else 1
            rows = int(rng.integers(1, 2 * rpb + 2))
            k = p.m * int(rng.integers(1, 4))
            ops.append(
                make_op(
                    p, rng, tokens=tokens, rows=rows, k=k, n=n, bits=bits, raw=raw, extreme=extreme
                )
            )
    ops = [ops[i] for i in rng.permutation(len(ops))]  # modes change from op to op
    desc = _relabel(p, ops)
    beats, params, expected = _encode_ops(p, ops)
    t0 = time.perf_counter()
    gap = float(os.environ.get("HWFLOW_GAP", "0.2"))
    bp = float(os.environ.get("HWFLOW_BACKPRESSURE", "0.3"))
    tr = await _drive(dut, p, beats, params, len(expected), rng, gap=gap, backpressure=bp)
    wall = time.perf_counter() - t0
    _check(tr.results, expected, desc)
    dut._log.info(
        "%d ops (%d combos), %d beats, %d results, %d cycles",
        len(ops),
        len(combos),
        len(beats),
        len(expected),
        tr.cycles,
    )
    _save_stats(random_cycles=tr.cycles, random_wall_s=wall, random_ops=len(ops))


def _relabel(p: EngineParams, ops: list[MatmulOp]) -> list[str]:
    out = []
    for op in ops:
        label = f"W{op.bits} {op.n}:{p.m} {'raw' if op.raw else 'requant'}"
        label += f" T{op.tokens} R{op.rows} K{op.k}"
        out += [label] * len(op_expected(p, op))
    return out


@cocotb.test()
async def cost_model(dut: object) -> None:
    """Measured latency and back-to-back issue interval == hwflow.costs.matmul_cost."""
    p, engine = _params()
    rng = np.random.default_rng(11)
    await _reset(dut)
    shapes = []
    for n in p.n_modes:
        rpb = p.rows_per_beat(n)
        for rows in (1, rpb, rpb + 1, 3 * rpb - 1):
            for blocks in (1, 2, 5):
                tokens = int(rng.integers(1, 3 * p.rows + 1)) if p.rows > 1 else 1
                shapes.append((tokens, rows, blocks * p.m, n))
    checked = 0
    for tokens, rows, k, n in shapes:
        bits = int(rng.choice(p.weight_bits))
        a = make_op(p, rng, tokens=tokens, rows=rows, k=k, n=n, bits=bits)
        b = make_op(p, rng, tokens=tokens, rows=rows, k=k, n=n, bits=bits, raw=True)
        beats, params, expected = _encode_ops(p, [a, b])
        tr = await _drive(dut, p, beats, params, len(expected), rng)
        _check(tr.results, expected, _relabel(p, [a, b]))
        cost = matmul_cost(engine, p.m, tokens, rows, k, n)
        na = len(op_beats(p, a))
        nra = len(op_expected(p, a))
        assert na == cost.beats, f"{(tokens, rows, k, n)}: {na} beats, cost says {cost.beats}"
        start_a, start_b = tr.in_cycles[0], tr.in_cycles[na]
        # no stall inside an op: one beat per cycle
        assert tr.in_cycles[na - 1] - start_a + 1 == cost.beats
        latency_a = tr.out_cycles[nra - 1] - start_a + 1
        latency_b = tr.out_cycles[-1] - start_b + 1
        assert latency_a == cost.latency, (
            f"T{tokens} R{rows} K{k} N{n}: latency {latency_a}, cost {cost.latency}"
        )
        assert start_b - start_a == cost.beats, (
            f"T{tokens} R{rows} K{k} N{n}: back-to-back interval {start_b - start_a}, "
            f"cost {cost.beats}"
        )
        assert latency_b == cost.latency
        checked += 1
        for _ in range(3):  # let the engine drain: the next shape starts idle
            await RisingEdge(dut.clk)
        while True:
            await ReadOnly()
            busy = dut.o__valid.value
            await RisingEdge(dut.clk)
            if not busy:
                break
        for _ in range(p.latency + 2):
            await RisingEdge(dut.clk)
    dut._log.info("cost model matched on %d shapes", checked)
    _save_stats(cost_shapes=checked)


@cocotb.test()
async def throughput(dut: object) -> None:
    """A long stream of dense beats without gaps: simulated cycles per second."""
    p, _ = _params()
    rng = np.random.default_rng(3)
    cycles = int(os.environ.get("HWFLOW_THROUGHPUT_CYCLES", "2000"))
    await _reset(dut)
    n = max(p.n_modes)
    op = make_op(p, rng, tokens=p.rows, rows=p.rows_per_beat(n), k=p.m, n=n, bits=8, raw=True)
    beat = [encode(p.beat_layout, b) for b in op_beats(p, op)]
    beats = beat * cycles
    t0 = time.perf_counter()
    tr = await _drive(dut, p, beats, [], cycles, rng, decode_results=False)
    wall = time.perf_counter() - t0
    dut._log.info("%d cycles in %.2f s: %.0f cycles/s", tr.cycles, wall, tr.cycles / wall)
    _save_stats(throughput_cycles=tr.cycles, throughput_wall_s=wall)
