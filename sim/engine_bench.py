"""cocotb bench of a DSP-chain engine (``hwflow.hw.engine``), run on Verilator.

Scoreboard structure: the *driver* feeds beats (``i``) and requantization entries (``p``)
with random idle gaps, the *monitor* collects drain words (``o``) under random backpressure,
the *model* is :func:`hwflow.hw.stimulus.op_words` (hwflow.numerics: matmul_int, nm_expand,
requantize), the *checker* compares every word, lane and ``last`` flag bit for bit. Design parameters come from the
environment (set by :func:`hwflow.hw.cosim.run_bench`) and rebuild the same
:class:`~hwflow.hw.params.EngineParams` as the Verilog.

Tests:

* ``random_ops``: every (weight bits, N, raw/requantized) the engine supports, random shapes,
  plus full-scale directed vectors, with gaps and backpressure.
* ``cost_model``: per shape, the op's latency in an idle engine and the start-to-start
  distance of two back-to-back ops equal :func:`hwflow.costs.matmul_cost` of the same op,
  and every beat is accepted in the cycle the cost's schedule says (a result's beats back to
  back, results max(K/M, drain) cycles apart).
* ``throughput``: a long stream of beats; records simulated cycles per second.

``HWFLOW_CORRUPT=1`` falsifies one expected value: the run must then fail (tested).
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from hwflow.config import load_hw
from hwflow.costs import matmul_cost
from hwflow.hw.cosim import save_bench_stats
from hwflow.hw.pack import decode, encode
from hwflow.hw.params import EngineParams
from hwflow.hw.stimulus import (
    MatmulOp,
    make_op,
    op_beats,
    op_params,
    op_results,
    op_words,
    param_writes,
)

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
    save_bench_stats(_STATS)


@dataclass
class Traffic:
    """What a run saw: handshake cycles and the results, in order."""

    in_cycles: list[int] = field(default_factory=list)
    out_cycles: list[int] = field(default_factory=list)
    words: list[tuple[list[int], int]] = field(default_factory=list)
    results: int = 0  #: row groups completed (words with ``last``)
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


@dataclass
class Stimulus:
    """Encoded port traffic of a list of ops, with the ordering rules of the parameter
    memory: ``beat_result[i]`` is the result beat i contributes to (its parameters must be
    written before it, unless raw); ``write_result[j]`` the result write j serves (it may not
    overwrite an entry whose result is still in flight)."""

    beats: list[int] = field(default_factory=list)
    gmults: list[int] = field(default_factory=list)  #: the ``gmult`` port, with each beat
    beat_result: list[int] = field(default_factory=list)
    beat_raw: list[bool] = field(default_factory=list)
    writes: list[int] = field(default_factory=list)
    write_result: list[int] = field(default_factory=list)
    expected: list = field(default_factory=list)  #: per result, its (values, last) words
    labels: list[str] = field(default_factory=list)

    @property
    def n_words(self) -> int:
        return sum(len(w) for w in self.expected)


def _encode_ops(p: EngineParams, ops: list[MatmulOp]) -> Stimulus:
    st = Stimulus()
    first = 0
    for op in ops:
        n_res = op_results(p, op)
        beats = op_beats(p, op, first)
        per_result = len(beats) // n_res
        for i, b in enumerate(beats):
            st.beats.append(encode(p.beat_layout, b))
            st.gmults.append(encode(p.gmult_layout, b.get("gmult", [])))
            st.beat_result.append(first + i // per_result)
            st.beat_raw.append(op.raw)
        for r, entry in enumerate(op_params(p, op)):
            if entry is not None:
                for w in param_writes(p, entry, first + r):
                    st.writes.append(encode(p.params_layout, w))
                    st.write_result.append(first + r)
        st.expected += op_words(p, op)
        label = f"W{op.bits} {op.n}:{p.m} {'raw' if op.raw else 'requant'}"
        st.labels += [f"{label} T{op.tokens} R{op.rows} K{op.k}"] * n_res
        first += n_res
    return st


async def _drive(
    dut: object,
    p: EngineParams,
    st: Stimulus,
    rng: np.random.Generator,
    *,
    gap: float = 0.0,
    backpressure: float = 0.0,
    preload: bool = False,
    timeout: int = 200_000,
    decode_results: bool = True,
) -> Traffic:
    """Drive all beats and parameter writes and collect every result (one loop per cycle:
    set inputs, settle, sample handshakes, clock edge). With ``preload`` no beat is offered
    before the last write."""
    tr = Traffic()
    bi = wi = 0
    cycle = 0
    n_results, n_words = len(st.expected), st.n_words
    last_bit = 1 << p.result_layout["last"].offset
    seen = 0
    while seen < n_words or bi < len(st.beats):
        if cycle > timeout:
            raise AssertionError(
                f"timeout after {cycle} cycles: {bi}/{len(st.beats)} beats, "
                f"{wi}/{len(st.writes)} writes, {seen}/{n_words} words"
            )
        # results whose parameter writes are all done: those below the next pending write's
        pending = st.write_result[wi] if wi < len(st.writes) else n_results
        beat_ok = bi < len(st.beats) and (st.beat_raw[bi] or st.beat_result[bi] < pending)
        if preload and wi < len(st.writes):
            beat_ok = False
        # an entry may be rewritten once the result that used it last has left the engine
        write_ok = wi < len(st.writes) and st.write_result[wi] - p.param_depth < tr.results
        iv = beat_ok and not (gap and rng.random() < gap)
        pv = write_ok and not (gap and rng.random() < gap)
        orr = not (backpressure and rng.random() < backpressure)
        dut.i__valid.value = int(iv)
        if iv:
            dut.i__payload.value = st.beats[bi]
            dut.gmult.value = st.gmults[bi]
        dut.p__valid.value = int(pv)
        if pv:
            dut.p__payload.value = st.writes[wi]
        dut.o__ready.value = int(orr)
        await ReadOnly()
        if iv and dut.i__ready.value:
            tr.in_cycles.append(cycle)
            bi += 1
        if pv and dut.p__ready.value:
            wi += 1
        if orr and dut.o__valid.value:
            tr.out_cycles.append(cycle)
            word = int(dut.o__payload.value)
            seen += 1
            tr.results += int(bool(word & last_bit))
            if decode_results:
                w = decode(p.result_layout, word)
                tr.words.append((w["data"], w["last"]))
        await RisingEdge(dut.clk)
        cycle += 1
    dut.i__valid.value = 0
    dut.p__valid.value = 0
    tr.cycles = cycle
    return tr


def _check(words: list, expected: list, ops_desc: list[str]) -> None:
    """Every drain word (values and ``last``) against the model, result by result."""
    if os.environ.get("HWFLOW_CORRUPT") == "1":
        expected = [list(e) for e in expected]
        vals, last = expected[len(expected) // 2][0]
        # a wrong expected value must fail the bench
        expected[len(expected) // 2][0] = ([vals[0] + 1, *vals[1:]], last)
    total = sum(len(e) for e in expected)
    assert len(words) == total, f"{len(words)} words, expected {total}"
    at = 0
    for n, exp in enumerate(expected):
        got = words[at : at + len(exp)]
        at += len(exp)
        if got != exp:
            bad = [
                (w, lane, g, e)
                for w, ((gv, gl), (ev, el)) in enumerate(zip(got, exp, strict=True))
                for lane, (g, e) in enumerate(zip([*gv, gl], [*ev, el], strict=True))
                if g != e
            ]
            raise AssertionError(
                f"result {n} ({ops_desc[n]}): {len(bad)} values differ, first (word, lane "
                f"(R = last flag), got, expected): {bad[:4]}"
            )


@cocotb.test()
async def random_ops(dut: object) -> None:
    """Every bits x N x raw combination, random shapes, gaps and backpressure, bit-exact."""
    p, _ = _params()
    rng = np.random.default_rng(int(os.environ.get("HWFLOW_SEED", "7")))
    await _reset(dut)
    ops: list[MatmulOp] = []
    combos = list(itertools.product(p.weight_bits, p.n_modes, (False, True)))
    # two rounds: more results than parameter-memory entries, so entries are reused
    for (bits, n, raw), _round in itertools.product(combos, range(2)):
        rpb = p.rows_per_beat(n)
        for extreme in (False, True):
            tokens = int(rng.integers(1, 2 * p.rows + 2)) if p.rows > 1 and not raw else 1
            rows = int(rng.integers(1, 2 * rpb + 2))
            k = p.m * int(rng.integers(1, 4))
            ops.append(
                make_op(
                    p, rng, tokens=tokens, rows=rows, k=k, n=n, bits=bits, raw=raw, extreme=extreme
                )
            )
    ops = [ops[i] for i in rng.permutation(len(ops))]  # modes change from op to op
    st = _encode_ops(p, ops)
    gap = float(os.environ.get("HWFLOW_GAP", "0.2"))
    bp = float(os.environ.get("HWFLOW_BACKPRESSURE", "0.3"))
    t0 = time.perf_counter()
    tr = await _drive(dut, p, st, rng, gap=gap, backpressure=bp)
    wall = time.perf_counter() - t0
    _check(tr.words, st.expected, st.labels)
    dut._log.info(
        "%d ops (%d combos), %d beats, %d writes, %d words, %d cycles",
        len(ops),
        len(combos),
        len(st.beats),
        len(st.writes),
        st.n_words,
        tr.cycles,
    )
    _save_stats(random_cycles=tr.cycles, random_wall_s=wall, random_ops=len(ops))


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
                shapes.append((tokens, rows, blocks * p.m, n, None))
        # weight-grouped ops (GROUP_STAGES more latency): groups of one and of two blocks
        tokens = int(rng.integers(1, 3 * p.rows + 1)) if p.rows > 1 else 1
        shapes += [(tokens, rpb + 1, 2 * p.m, n, p.m), (tokens, rpb, 4 * p.m, n, 2 * p.m)]
    checked = 0
    for tokens, rows, k, n, group in shapes:
        bits = int(rng.choice(p.weight_bits))
        a = make_op(p, rng, tokens=tokens, rows=rows, k=k, n=n, bits=bits, group=group)
        raw = tokens == 1 and group is None
        b = make_op(p, rng, tokens=tokens, rows=rows, k=k, n=n, bits=bits, raw=raw, group=group)
        st = _encode_ops(p, [a, b])
        tr = await _drive(dut, p, st, rng, preload=True)
        _check(tr.words, st.expected, st.labels)
        cost = matmul_cost(engine, p.m, tokens, rows, k, n, group)
        na, blocks = len(op_beats(p, a)), k // p.m
        wa = sum(len(w) for w in op_words(p, a))
        shape = f"T{tokens} R{rows} K{k} N{n} G{group}"
        start_a, start_b = tr.in_cycles[0], tr.in_cycles[na]
        slot = cost.beats // op_results(p, a)  # input cycles per result
        sched = [start_a + (j // blocks) * slot + j % blocks for j in range(na)]
        assert tr.in_cycles[:na] == sched, f"{shape}: beats at {tr.in_cycles[:na]}, cost {sched}"
        latency_a = tr.out_cycles[wa - 1] - start_a + 1
        latency_b = tr.out_cycles[-1] - start_b + 1
        assert latency_a == cost.latency, f"{shape}: latency {latency_a}, cost {cost.latency}"
        assert start_b - start_a == cost.beats, (
            f"{shape}: back-to-back interval {start_b - start_a}, cost {cost.beats}"
        )
        assert latency_b == cost.latency, f"{shape}: 2nd op latency {latency_b}"
        checked += 1
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
    st = _encode_ops(p, [op])
    reps = Stimulus(
        beats=st.beats * cycles,
        gmults=st.gmults * cycles,
        beat_result=list(range(cycles)),
        beat_raw=[True] * cycles,
        expected=st.expected * cycles,
    )  # one beat per result; a result drains in one word when R covers the group
    t0 = time.perf_counter()
    tr = await _drive(dut, p, reps, rng, decode_results=False)
    wall = time.perf_counter() - t0
    dut._log.info("%d cycles in %.2f s: %.0f cycles/s", tr.cycles, wall, tr.cycles / wall)
    _save_stats(throughput_cycles=tr.cycles, throughput_wall_s=wall)
