"""Functional simulator: bit-exact against the integer reference; token hazards are caught."""

from __future__ import annotations

import numpy as np
import pytest

from hwflow.compiler import compile_model
from hwflow.compiler.layout import build_hbm_image
from hwflow.compress import quantize_model, random_weights
from hwflow.config import available, load_hw, load_model, load_plan
from hwflow.errors import ProgramError, SyncError, UnsupportedError
from hwflow.funcsim import FuncSim, boundary_lengths, check_against_reference
from hwflow.isa import Buf, Program, Runtime, SfuFunc, Template, Unit, XferKind, make

#: the plans the compiler takes on both tiny models (rotated keys, RoPE models only:
#: tests/test_rotated_keys_isa.py)
TINY_PLANS = [
    p for p in available("plans") if p != "w4a8-2of4" and load_plan(p).method.keys == "static"
]


def test_boundary_lengths():
    assert boundary_lengths(256, 128) == [1, 127, 128, 129, 255, 256]


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-opt"])
@pytest.mark.parametrize("plan", TINY_PLANS)
def test_bit_exact_prefill_and_decode(model, plan):
    """Prefill at 1, 127, 128, 129, 255, 256 and 8 decode steps crossing context 16 -> 17:
    logits and the whole KV cache equal the integer reference bit for bit."""
    res = check_against_reference(load_model(model), load_plan(plan), load_hw("tiny"), 256, 8)
    assert [s["tokens"] for s in res["steps"] if s["phase"] == "prefill"] == [
        1,
        127,
        128,
        129,
        255,
        256,
    ]
    decode_pos = [s["pos"] for s in res["steps"] if s["phase"] == "decode"]
    assert len(decode_pos) == 8 and min(decode_pos) < 16 <= max(decode_pos)
    assert res["bit_exact"], [s for s in res["steps"] if not s["equal"]]


def test_bit_exact_block_sparse_prefill():
    """Beyond 5 blocks of 64 the FlightLLM plan's block mask drops key blocks."""
    res = check_against_reference(
        load_model("tiny-llama"), load_plan("flightllm"), load_hw("tiny"), 512, 1, lengths=[449]
    )
    assert res["bit_exact"]


def test_unsupported_plan_refused_on_tiny():
    with pytest.raises(UnsupportedError, match="preset tiny does not support 2:4 sparsity"):
        check_against_reference(
            load_model("tiny-llama"), load_plan("w4a8-2of4"), load_hw("tiny"), 64, 1
        )


@pytest.fixture(scope="module")
def setup():
    cfg, hw, plan = load_model("tiny-llama"), load_hw("tiny"), load_plan("w4a8")
    comp = compile_model(cfg, plan, hw, 64)
    qm = quantize_model(cfg, plan, random_weights(cfg, 0))
    return cfg, hw, comp, qm, build_hbm_image(comp.layout, qm)


def _replace(prog: Program, idx: int, instrs: list) -> Program:
    ts = list(prog.templates)
    t = ts[idx]
    ts[idx] = Template(t.phase, t.lo, t.hi, tuple(instrs), t.info)
    return Program(prog.header, prog.regions, tuple(ts))


def _without_token(prog: Program, src: str, dst: str) -> Program:
    """The program with the first token pair ``src`` -> ``dst`` of its first decode template
    dropped (the release of the first ``src`` releasing ``dst``, the wait of the first ``dst``
    waiting on ``src``)."""
    s, d = Unit[src], Unit[dst]
    idx = next(i for i, t in enumerate(prog.templates) if t.phase == "decode")
    instrs = list(prog.templates[idx].instrs)
    a = next(i for i, x in enumerate(instrs) if x.op == src and x.release >> d & 1)
    b = next(i for i, x in enumerate(instrs) if x.op == dst and x.wait >> s & 1)
    instrs[a] = instrs[a].with_masks(instrs[a].wait, instrs[a].release & ~(1 << d))
    instrs[b] = instrs[b].with_masks(instrs[b].wait & ~(1 << s), instrs[b].release)
    return _replace(prog, idx, instrs)


def test_read_before_release_is_a_hazard(setup):
    """Drop the first LD->MV token pair: MV then reads weights LD has not released."""
    cfg, hw, comp, qm, image = setup
    prog = comp.program
    fs = FuncSim(_without_token(prog, "LD", "MV"), hw, cfg, comp.layout, image.copy())
    with pytest.raises(SyncError, match=r"hazard: MV pc \d+ \(MV\) reads WEIGHT .* written by LD"):
        fs.step("decode", qm.embed(np.array([3]), 5), 5)
    # the intact program runs clean from the same state
    ok = FuncSim(prog, hw, cfg, comp.layout, image.copy())
    ok.step("decode", qm.embed(np.array([3]), 5), 5)


def test_write_after_read_is_a_hazard(setup):
    """Drop the MV->LD token that frees a weight slot: LD overwrites a tile before MV has read
    it (reported when MV reads bytes whose writer it has no token from) or while MV reads."""
    cfg, hw, comp, qm, image = setup
    fs = FuncSim(_without_token(comp.program, "MV", "LD"), hw, cfg, comp.layout, image.copy())
    with pytest.raises(SyncError, match=r"hazard: (LD .* overwrites|MV .* reads) WEIGHT"):
        fs.step("decode", qm.embed(np.array([3]), 5), 5)


def test_overwrite_before_the_reader_released_is_a_hazard(setup):
    """The write-after-read check on its own: ST reads ACT bytes 0..15, then SFU overwrites
    them with no token from ST (nothing was written there before, so no read sees a stale
    writer: only the WAR check can report it)."""
    cfg, hw, comp, _, image = setup
    out = comp.layout.region("logits").base
    st = make("ST", kind=XferKind.LOGITS, hbm=out, hbm_stride=16, buf=Buf.ACT, off=0, stride=16,
              row_bytes=16, rows=1)  # fmt: skip
    mov = make("SFU", func=SfuFunc.MOV, rows=1, cols=16, a_buf=Buf.ACT, a_off=64, a_stride=16,
               o_buf=Buf.ACT, o_off=0, o_stride=16)  # fmt: skip
    racing = (st, mov, make("END"))
    prog = Program(comp.program.header, comp.program.regions, (Template("decode", 1, 16, racing),))
    fs = FuncSim(prog, hw, cfg, comp.layout, image.copy())
    with pytest.raises(
        SyncError, match=r"hazard: SFU pc 1 \(SFU\) overwrites ACT byte 0 still to be read by ST"
    ):
        fs.run("decode", Runtime(1, 3))
    # with the token ST -> SFU the same pair is ordered and runs clean
    ordered = (st.with_masks(0, 1 << Unit.SFU), mov.with_masks(1 << Unit.ST, 0), make("END"))
    prog = Program(prog.header, prog.regions, (Template("decode", 1, 16, ordered),))
    FuncSim(prog, hw, cfg, comp.layout, image.copy()).run("decode", Runtime(1, 3))


def test_runtime_deadlock_detected(setup):
    cfg, hw, comp, qm, image = setup
    prog = comp.program
    idx = next(i for i, t in enumerate(prog.templates) if t.phase == "decode")
    instrs = list(prog.templates[idx].instrs)
    mv = next(i for i, x in enumerate(instrs) if x.op == "MV")
    instrs[mv] = instrs[mv].with_masks(instrs[mv].wait | 1 << Unit.ST, instrs[mv].release)
    fs = FuncSim(_replace(prog, idx, instrs), hw, cfg, comp.layout, image.copy())
    with pytest.raises(SyncError, match=r"deadlock while running: .*MV at pc"):
        fs.step("decode", qm.embed(np.array([3]), 5), 5)


def test_program_for_other_preset_refused(setup):
    cfg, _, comp, _, image = setup
    with pytest.raises(ProgramError, match="compiled for preset 'tiny'"):
        FuncSim(comp.program, load_hw("u280"), cfg, comp.layout, image)


def test_length_outside_program_refused(setup):
    cfg, hw, comp, qm, image = setup
    fs = FuncSim(comp.program, hw, cfg, comp.layout, image.copy())
    with pytest.raises(
        ProgramError, match=r"no prefill template serves LEN = 65 \(served: 1..64\)"
    ):
        fs.step("prefill", qm.embed(np.arange(65), 0), 0)


def test_bit_exact_with_small_buffers_many_tiles_and_chunks():
    """Small buffers: every linear op spans several weight tiles, a prefill runs as several
    32-row chunks (bucket 32), attention has only two KV slots and one score slot (no head
    pipelining), still bit-exact."""
    hw = load_hw("tiny")
    small = hw.model_copy(
        update={
            "buffers": hw.buffers.model_copy(
                update={"weight_kib": 2, "act_kib": 27, "kv_kib": 3, "score_kib": 12}
            )
        }
    )
    cfg, plan = load_model("tiny-opt"), load_plan("flightllm")
    comp = compile_model(cfg, plan, small, 96)
    assert comp.tt == 32
    info = next(t.info for t in comp.program.templates if t.phase == "prefill" and t.hi == 96)
    assert info["kv_slots"] == 2 and info["score_slots"] == 1
    assert all(len(ts.tiles) > 1 for ts in comp.layout.tiles[0])
    res = check_against_reference(cfg, plan, small, 96, 3, lengths=[31, 32, 33, 95])
    assert res["bit_exact"], res["steps"]


def test_bit_exact_on_a_board_preset():
    res = check_against_reference(
        load_model("tiny-llama"), load_plan("w8a8"), load_hw("u280"), 160, 2, lengths=[130]
    )
    assert res["bit_exact"], res["steps"]


def test_decode_crosses_every_decode_bucket_boundary():
    """60 decode steps at contexts 5..64 cross 16|17, 32|33 and 48|49 (every decode bucket
    boundary of max_len 64), each step bit-exact."""
    res = check_against_reference(
        load_model("tiny-llama"), load_plan("flightllm"), load_hw("tiny"), 64, 60, lengths=[64]
    )
    ctx = [s["pos"] + 1 for s in res["steps"] if s["phase"] == "decode"]
    assert ctx == list(range(5, 65))
    assert res["bit_exact"], [s for s in res["steps"] if not s["equal"]]


def test_step_input_checked_before_it_is_written(setup):
    """More rows than the program serves, or rows of the wrong width, are refused before the
    input region of HBM is touched (they used to fail in a numpy broadcast)."""
    cfg, hw, comp, qm, image = setup
    fs = FuncSim(comp.program, hw, cfg, comp.layout, image.copy())
    with pytest.raises(ProgramError, match=r"no prefill template serves LEN = 5000"):
        fs.step("prefill", qm.embed(np.arange(5000) % cfg.vocab, 0), 0)
    with pytest.raises(ProgramError, match=r"expected \[tokens, 64\] INT32 rows"):
        fs.step("prefill", np.zeros((3, 65), np.int32), 0)
    with pytest.raises(ProgramError, match=r"step input outside the INT32 range"):
        fs.step("prefill", np.full((3, 64), 2**31, np.int64), 0)
    assert np.array_equal(fs.hbm, image)


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-opt"])
def test_decode_ignores_what_the_cache_holds_after_the_position(model):
    """Decode attends over the bucket's longest context with the keys after the current position
    masked (probability 0): a KV cache full of random bytes there changes no logit."""
    from hwflow.reference import generate_int

    cfg, plan, hw = load_model(model), load_plan("flightllm"), load_hw("tiny")
    comp = compile_model(cfg, plan, hw, 64)
    qm = quantize_model(cfg, plan, random_weights(cfg, 3))
    image = build_hbm_image(comp.layout, qm)
    kv = comp.layout.region("kv")
    rng = np.random.default_rng(5)
    image[kv.base : kv.base + kv.size] = rng.integers(0, 256, kv.size, dtype=np.uint8)
    ids = rng.integers(cfg.vocab, size=18)  # decode at POS 18..23: bucket 17..32, 9+ keys masked
    ref = generate_int(qm, ids, 6)
    fs = FuncSim(comp.program, hw, cfg, comp.layout, image)
    assert np.array_equal(fs.step("prefill", qm.embed(ids, 0), 0), ref[0].logits[-1])
    pos = len(ids)
    for s in range(1, 7):
        tok = np.array([int(np.argmax(ref[s - 1].logits[-1]))])
        assert np.array_equal(fs.step("decode", qm.embed(tok, pos), pos), ref[s].logits[-1]), s
        pos += 1


def test_final_norm_row_and_its_row_factor_sit_where_the_isa_says(setup):
    """After a prefill the act buffer holds ``hf``: the INT8 row at its data offset and, in the
    4 bytes before, the row factor as uint16 m and int16 e (isa.ROW_FACTOR_BYTES), equal to the
    reference's ``hf`` and ``hf#rows``."""
    from hwflow.compiler.lower import plan_buffers
    from hwflow.reference import generate_int

    cfg, hw, comp, qm, image = setup
    ids = np.arange(5) + 7
    ref = generate_int(qm, ids, 0)[0]
    fs = FuncSim(comp.program, hw, cfg, comp.layout, image.copy())
    fs.step("prefill", qm.embed(ids, 0), 0)
    bp = plan_buffers(cfg, hw, comp.tt, comp.program.select("prefill", Runtime(5, 0)).hi)
    off, _ = bp.act["hf"]
    act = fs.bufs[Buf.ACT]
    assert np.array_equal(act[off : off + cfg.hidden].view(np.int8), ref.tensors["hf"][-1])
    m, e = ref.tensors["hf#rows"]
    assert int(act[off - 4 : off - 2].view("<u2")[0]) == int(m[-1])
    assert int(act[off - 2 : off].view("<i2")[0]) == int(e[-1])


@pytest.mark.parametrize("record", ["norm1", "q.guard", "scores", "pv", "act"])
def test_funcsim_reads_each_parameter_record_of_the_blob(setup, record):
    """Doubling (plus one) the first int32 word of one record of layer 0's parameter blob in
    HBM (norm1: its pre-shift; q: its guard; scores/pv: head 0's multiplier; act: the SiLU
    index multiplier) changes the prefill logits: the program reads every record from where
    layout.param_blob puts it (the intact image is bit-exact, test_bit_exact_*)."""
    from hwflow.compiler.layout import param_blob
    from hwflow.reference import generate_int

    cfg, hw, comp, qm, image = setup
    ids = np.arange(9) + 3
    ref = generate_int(qm, ids, 0)[0]
    bad = image.copy()
    at = comp.layout.region("L0").base + param_blob(cfg)[record]
    word = bad[at : at + 4].view("<i4")
    word[0] = 2 * word[0] + 1
    fs = FuncSim(comp.program, hw, cfg, comp.layout, bad)
    assert not np.array_equal(fs.step("prefill", qm.embed(ids, 0), 0), ref.logits[-1])
