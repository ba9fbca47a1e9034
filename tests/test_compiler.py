"""Compiler: bucket coverage, layout, token assignment, deadlock proof, capacity and plan errors."""

from __future__ import annotations

import itertools

import pytest

from hwflow import isa
from hwflow.compiler import compile_model, storage_report
from hwflow.compiler.layout import pack_rows, unpack_rows
from hwflow.compiler.sync import check_deadlock
from hwflow.config import load_hw, load_model, load_plan
from hwflow.errors import CapacityError, ConfigError, SyncError, UnsupportedError
from hwflow.isa import Runtime, Unit, make


@pytest.fixture(scope="module")
def tiny():
    cfg, hw, plan = load_model("tiny-llama"), load_hw("tiny"), load_plan("flightllm")
    return cfg, hw, plan, compile_model(cfg, plan, hw, 256)


def test_templates_cover_every_length_once(tiny):
    _, _, _, comp = tiny
    prog = comp.program
    assert comp.tt == 128
    for phase in ("prefill", "decode"):
        ts = [t for t in prog.templates if t.phase == phase]
        covered = [n for t in ts for n in range(t.lo, t.hi + 1)]
        assert covered == list(range(1, 257))
    assert [t.hi for t in prog.templates if t.phase == "prefill"] == [128, 256]
    assert len([t for t in prog.templates if t.phase == "decode"]) == 16
    for n in (1, 127, 128, 129, 256):
        assert prog.select("prefill", Runtime(n)).lo <= n
    assert prog.header["preset_digest"] == load_hw("tiny").digest


def test_program_is_frozen_and_round_trips(tiny):
    _, _, _, comp = tiny
    prog = comp.program
    with pytest.raises(AttributeError):
        prog.templates = ()  # type: ignore[misc]
    with pytest.raises(TypeError):
        prog.templates[0].instrs[0].fields["wait"] = 1  # type: ignore[index]
    back = isa.Program.from_bytes(prog.to_bytes())
    assert [t.instrs for t in back.templates] == [t.instrs for t in prog.templates]


def test_layers_loop_over_runs():
    cfg, hw = load_model("llama2-7b"), load_hw("u280")
    comp = compile_model(cfg, load_plan("flightllm"), hw, 64)
    # flightllm: layers 0 and 31 are denser -> three runs; layers 1..30 share one loop body
    assert [r[:2] for r in comp.layout.runs] == [(0, 1), (1, 30), (31, 1)]
    t = comp.program.select("decode", Runtime(1, 40))
    assert [i["count"] for i in t.instrs if i.op == "LOOP"] == [1, 1, 30, 1]
    # HBM: regions of a run at a constant stride, everything inside the preset's capacity
    bases = [comp.layout.region(f"L{i}").base for i in range(1, 31)]
    assert len({b - a for a, b in itertools.pairwise(bases)}) == 1
    assert comp.layout.total <= hw.hbm.capacity_bytes
    per = comp.layout.channel_bytes(hw.hbm.channels, hw.hbm.interleave_bytes)
    assert max(per) - min(per) <= hw.hbm.interleave_bytes


def test_ld_never_waits_for_sfu_and_reads_weights_ahead():
    """Weight and KV loads wait only for the engine to free a slot, never for SFU work."""
    cfg, hw = load_model("llama2-7b"), load_hw("u280")
    comp = compile_model(cfg, load_plan("flightllm"), hw, 64)
    for t in comp.program.templates:
        eng = Unit.MM if t.phase == "prefill" else Unit.MV
        for ins in t.instrs:
            if ins.op == "LD" and ins["kind"] in (0, 2):
                assert ins.wait & ~(1 << eng) == 0, isa.disasm(ins)


def test_storage_is_counted_from_the_real_expansion(tiny):
    *_, comp = tiny
    st = storage_report(comp)
    assert st["templates"] == len(comp.program.templates)
    assert st["ratio"] > 10
    # per-length bytes = the expanded unit instructions of that length (+ END)
    t = comp.program.select("prefill", Runtime(200))
    words = sum(isa.spec(c.op).words for c in isa.expand(t, Runtime(200)))
    from hwflow.compiler import _unrolled_bytes

    spans = isa.loop_spans(t.instrs)
    assert _unrolled_bytes(t.instrs, {min(spans): 2}) == 4 * words + 4


def test_deadlock_checker_catches_broken_schedules(tiny):
    _, _, _, comp = tiny
    instrs = list(comp.program.templates[2].instrs)
    check_deadlock(instrs)
    # a wait no one releases
    i = next(k for k, ins in enumerate(instrs) if ins.op == "MV")
    broken = [*instrs]
    broken[i] = instrs[i].with_masks(instrs[i].wait | 1 << Unit.ST, instrs[i].release)
    with pytest.raises(SyncError, match=r"deadlock.*MV at pc"):
        check_deadlock(broken)
    # a release no one waits for: tokens left over
    broken = [*instrs]
    broken[i] = instrs[i].with_masks(instrs[i].wait, instrs[i].release | 1 << Unit.ST)
    with pytest.raises(SyncError, match=r"changes the token counts|left in queues"):
        check_deadlock(broken)
    # a cycle: two units each waiting for the other first
    cyc = [
        make("SYNC.LD", wait=1 << Unit.MV, release=1 << Unit.MV),
        make("SYNC.MV", wait=1 << Unit.LD, release=1 << Unit.LD),
        make("END"),
    ]
    with pytest.raises(SyncError, match="deadlock"):
        check_deadlock(cyc)


def test_unsupported_plan_is_refused_with_allowed_values():
    with pytest.raises(
        UnsupportedError, match=r"2:4 sparsity \(allowed: 2:16, 4:16, 8:16, 16:16, or dense\)"
    ):
        compile_model(load_model("tiny-llama"), load_plan("w4a8-2of4"), load_hw("tiny"), 64)


def test_capacity_errors_name_the_sizes():
    with pytest.raises(CapacityError, match=r"needs .* GiB of HBM .* but preset tiny has 1.00 GiB"):
        compile_model(load_model("llama2-7b"), load_plan("w4a8"), load_hw("tiny"), 64)
    hw = load_hw("tiny")
    small = hw.model_copy(update={"buffers": hw.buffers.model_copy(update={"act_kib": 1})})
    with pytest.raises(CapacityError, match=r"buffers.act_kib holds 1024 bytes"):
        compile_model(load_model("tiny-llama"), load_plan("w4a8"), small, 64)
    tiny_w = hw.model_copy(update={"buffers": hw.buffers.model_copy(update={"weight_kib": 0})})
    with pytest.raises(CapacityError, match="weight slot"):
        compile_model(load_model("tiny-llama"), load_plan("w8a8"), tiny_w, 64)


def test_max_len_is_checked():
    with pytest.raises(ConfigError, match=r"max_len = 0 must lie in 1..512"):
        compile_model(load_model("tiny-llama"), load_plan("w4a8"), load_hw("tiny"), 0)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pack_rows_matches_numerics(bits):
    import numpy as np

    from hwflow import numerics as nx

    rng = np.random.default_rng(bits)
    lo = -(1 << (bits - 1)) + 1
    x = rng.integers(lo, -lo + 1, size=(5, 13))
    packed = pack_rows(x, bits)
    for r in range(5):
        assert np.array_equal(packed[r], nx.pack_bits(x[r], bits))
    assert np.array_equal(unpack_rows(packed.ravel(), bits, 5, 13, True), x)
