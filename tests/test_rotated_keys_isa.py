"""Rotated keys on the instruction set (ISA v5, issue 14): the SFU's ropeq / ropek and the qk's
key factors (``brow``) on hand-worked operands, compiled programs bit for bit against the
integer reference, the costs of the new SFU functions counted by hand, and the refusals."""

from __future__ import annotations

import numpy as np
import pytest

from hwflow.cli import main
from hwflow.compiler import compile_model
from hwflow.config import load_hw, load_model, load_plan
from hwflow.costs import sfu_op_cost, sfu_passes
from hwflow.errors import ProgramError, UnsupportedError
from hwflow.funcsim import FuncSim, check_against_reference
from hwflow.isa import Buf, Concrete, Unit, make
from hwflow.model import step_graph

ONE = 1 << 14  #: Q14 cos/sin 1.0 and the row-factor mantissa of 1.0 (with e = 14)


def _fs(hw: str = "tiny") -> FuncSim:
    p = load_hw(hw)
    return FuncSim.on_buffers(
        p, {b: np.zeros(p.buffers.bytes(b.name.lower()), np.uint8) for b in Buf}
    )


def _run(fs: FuncSim, op: str, **fields: int) -> None:
    ins = make(op, **fields)
    f = {k: v for k, v in ins.fields.items() if k not in ("opcode", "wait", "release")}
    unit = {"SFU": Unit.SFU, "MV": Unit.MV, "MM": Unit.MM}[op]
    fs.execute(Concrete(0, op, unit, 0, 0, f, 0, ()))


def _put(fs: FuncSim, buf: Buf, at: int, data: np.ndarray) -> None:
    raw = np.ascontiguousarray(data).view(np.uint8).ravel()
    fs.bufs[buf][at : at + raw.size] = raw


def _rope_rows(fs: FuncSim, at: int, cos: int, sin: int) -> None:
    """One RoPE row for head_dim 2: cos then sin, int16."""
    _put(fs, Buf.PARAM, at, np.array([cos, sin], "<i2"))


def test_ropeq_by_hand():
    """Head_dim 2, two heads, one row. RoPE at angle 0 leaves (3, 5); H2 gives (8, -2); head 0
    at mult 1, shift 1: round half up (4, -1). Head 1 (7, -1) -> (6, 8), at mult 3, shift 2:
    (18 + 2) >> 2 = 5, (24 + 2) >> 2 = 6. At 90 degrees (cos 0, sin 1) (3, 5) turns into
    (-5, 3), H2 (-2, -8)."""
    fs = _fs()
    _put(fs, Buf.ACT, 0, np.array([3, 5, 7, -1], "<i2"))
    _rope_rows(fs, 64, ONE, 0)
    _put(fs, Buf.PARAM, 0, np.array([1, 1, 3, 2], "<i4"))  # (mult, shift) per head
    _run(fs, "SFU", func=11, rows=1, cols=4, a_buf=Buf.ACT, a_stride=8, b_buf=Buf.PARAM,
         b_off=64, b_stride=4, o_buf=Buf.ACT, o_off=100, o_stride=4, p_off=0, aux=2)  # fmt: skip
    assert fs.bufs[Buf.ACT][100:104].view(np.int8).tolist() == [4, -1, 5, 6]
    _rope_rows(fs, 64, 0, ONE)
    _put(fs, Buf.PARAM, 0, np.array([1, 0], "<i4"))
    _run(fs, "SFU", func=11, rows=1, cols=2, a_buf=Buf.ACT, a_stride=8, b_buf=Buf.PARAM,
         b_off=64, b_stride=4, o_buf=Buf.ACT, o_off=100, o_stride=4, p_off=0, aux=2)  # fmt: skip
    assert fs.bufs[Buf.ACT][100:102].view(np.int8).tolist() == [-2, -8]


def test_ropek_by_hand():
    """Head_dim 2, two heads, two rows (stride 16). Head (3, 5): H2 (8, -2), M = 8, codes
    8 * 127 / 8 = 127 and -254 / 8 = -31.75 -> -32 (round half up), factor 8 = 16384 * 2**-11
    (m 16384, e 11). Head (0, 0): M = 1, codes 0, factor (16384, 14). Row 1, head (100, 100):
    H2 (200, 0): codes (127, 0), factor 200 = 25600 * 2**-7. Each head's factor sits in the 4
    bytes before its codes, head records 6 bytes apart."""
    fs = _fs()
    _put(fs, Buf.ACT, 0, np.array([3, 5, 0, 0], "<i2"))
    _put(fs, Buf.ACT, 16, np.array([100, 100, 7, 7], "<i2"))
    _rope_rows(fs, 64, ONE, 0)
    _rope_rows(fs, 68, ONE, 0)
    _run(fs, "SFU", func=12, rows=2, cols=4, a_buf=Buf.ACT, a_stride=16, b_buf=Buf.PARAM,
         b_off=64, b_stride=4, o_buf=Buf.ACT, o_off=204, o_stride=16, aux=2)  # fmt: skip
    act = fs.bufs[Buf.ACT]

    def record(at: int) -> tuple[int, int, list[int]]:
        m, e = int(act[at : at + 2].view("<u2")[0]), int(act[at + 2 : at + 4].view("<i2")[0])
        return m, e, act[at + 4 : at + 6].view(np.int8).tolist()

    assert record(200) == (16384, 11, [127, -32])
    assert record(206) == (16384, 14, [0, 0])
    assert record(216) == (25600, 7, [127, 0])
    # (7, 7) -> (14, 0): M = 14 = 28672 * 2**-11
    assert record(222) == (28672, 11, [127, 0])


def _keys(fs: FuncSim, factors: list[tuple[int, int]], rows: list[list[int]], at: int) -> None:
    """K records (factor, then INT8 codes) at ``at`` in the KV buffer, 6 bytes apart."""
    for j, ((m, e), r) in enumerate(zip(factors, rows, strict=True)):
        _put(fs, Buf.KV, at + 6 * j, np.array([m], "<u2"))
        _put(fs, Buf.KV, at + 6 * j + 2, np.array([e], "<i2"))
        _put(fs, Buf.KV, at + 6 * j + 4, np.array(r, np.int8))


@pytest.mark.parametrize("op", ["MM", "MV"])
def test_qk_key_factors_by_hand(op):
    """q (1, 2) against keys (3, 4) with factor 1.0 and (1, 1) with factor 1.5 (24576 *
    2**-14): acc (11, 3). Guard 0, mult 1, shift 0: (11, round(4.5) = 5). Guard 2: row stage
    (44, 18), then mult 3, shift 2: (132 + 2) >> 2 = 33, (54 + 2) >> 2 = 14. Without brow the
    factors are ignored: (11, 3)."""
    fs = _fs()
    _put(fs, Buf.ACT, 0, np.array([1, 2], np.int8))
    _keys(fs, [(ONE, 14), (24576, 14)], [[3, 4], [1, 1]], 0)
    base = dict(func=1, rows=1, cols=2, k=2, n=1, m=1, wbits=8, a_buf=Buf.ACT, a_stride=2,
                b_buf=Buf.KV, b_off=4, b_stride=6, o_buf=Buf.SCORE, o_stride=8, p_off=0,
                obits=32)  # fmt: skip

    def scores(brow: int, mult: int, shift: int, guard: int) -> list[int]:
        _put(fs, Buf.PARAM, 0, np.array([mult, shift, guard], "<i4"))
        _run(fs, op, brow=brow, **base)
        return fs.bufs[Buf.SCORE][0:8].view("<i4").tolist()

    assert scores(1, 1, 0, 0) == [11, 5]
    assert scores(1, 3, 2, 2) == [33, 14]
    assert scores(0, 1, 0, 0) == [11, 3]


def _variant(name: str, **update: int):
    cfg = load_model("tiny-llama")
    return cfg.model_copy(update={"name": name, **update}) if update else cfg


@pytest.mark.parametrize(
    ("cfg", "max_len"),
    [
        (_variant("tiny-llama"), 256),
        # one KV group of 4 heads; head_dim 32 keys of 36 bytes fill tiny's KV buffer at 128
        (_variant("tiny-llama-mqa-hd32", kv_heads=1, head_dim=32), 128),
        (_variant("tiny-llama-mha-hd8", kv_heads=4, head_dim=8), 256),
    ],
    ids=lambda x: x.name if hasattr(x, "name") else str(x),
)
def test_rotated_keys_bit_exact_prefill_and_decode(cfg, max_len):
    """Prefill on both sides of the chunk boundaries and decode across context 16 -> 17:
    logits, the K codes, V and every key's row factor in the HBM KV cache equal the integer
    reference (:func:`hwflow.reference.run_int` with rotated keys) bit for bit."""
    res = check_against_reference(cfg, load_plan("w8a8-rotk"), load_hw("tiny"), max_len, 6)
    assert res["bit_exact"], [s for s in res["steps"] if not s["equal"]]
    steps = [(s["phase"], s["tokens"]) for s in res["steps"]]
    assert ("prefill", max_len) in steps and steps.count(("decode", 1)) == 6


def test_the_program_uses_the_new_encodings():
    """What the lowering emits for rotated keys (the seam the RTL implements): q/k linears at
    INT16, ropeq and ropek (no plain rope), every qk with brow on K records of head_dim + 4
    bytes, and the KV cache sized for those records."""
    cfg, hw = load_model("tiny-llama"), load_hw("tiny")
    comp = compile_model(cfg, load_plan("w8a8-rotk"), hw, 64)
    static = compile_model(cfg, load_plan("w8a8"), hw, 64)
    for t in comp.program.templates:
        sfu = [i["func"] for i in t.instrs if i.op == "SFU"]
        assert 11 in sfu and 12 in sfu and 2 not in sfu
        qk = [i for i in t.instrs if i.op in ("MM", "MV") and i["func"] == 1]
        assert qk and all(i["brow"] == 1 and i["b_stride"] == 20 for i in qk)
        lin16 = [
            i for i in t.instrs if i.op in ("MM", "MV") and i["func"] == 0 and i["obits"] == 16
        ]
        assert len(lin16) >= 4  # q, k, gate, up (at least one tile each)
    assert all(i["brow"] == 0 for t in static.program.templates for i in t.instrs
               if i.op in ("MM", "MV"))  # fmt: skip
    assert comp.layout.rotated and not static.layout.rotated
    assert comp.layout.head_stride("K") >= 64 * 20  # 64 records of 16 + 4 bytes
    # the V heads keep the static stride (their rows have no factor)
    assert comp.layout.head_stride("V") == static.layout.head_stride("V")


def test_kv_bytes_count_the_key_factors():
    """Decode at context 100 of tiny-llama (2 layers, 2 KV heads, head_dim 16): the new K and V
    rows 2 * (16 + 16) bytes, the scores read 2 * 100 * 16 and P x V as much; rotated keys add
    4 bytes per key row: 2 * (20 + 16), 2 * 100 * 20."""
    cfg = load_model("tiny-llama")
    g = step_graph(cfg, load_plan("w8a8"), "decode", 1, 99)
    r = step_graph(cfg, load_plan("w8a8-rotk"), "decode", 1, 99)
    assert g.kv_bytes == 2 * (64 + 3200 + 3200)
    assert r.kv_bytes == 2 * (72 + 4000 + 3200)


def test_sfu_costs_by_hand():
    """Tiny preset: 4 lanes, head_dim 16: C = 4 chunks a head, log2(4) * 4 / 2 = 4 butterfly
    cycles, 2 to hand the head over: 10 a head (ropek + 8 for the reciprocal: 18); after
    the last head its 4 chunks out less 2; rope's fill 4. ropeq, one row of 4 heads:
    4 * 10 + 2 + 4 = 46; ropek, one head: 18 + 2 + 4 = 24, two: 36 + 2 + 4 = 42 (the
    RTL's measured busy cycles less the preset's latency 8: 54, 32, 50;
    tests/test_rtl_sfu_rot.py)."""
    hw = load_hw("tiny")
    assert (sfu_passes(hw, "ropeq", head_dim=16), sfu_passes(hw, "ropek", head_dim=16)) == (5, 6)
    assert sfu_op_cost(hw, "ropeq", 1, 64, head_dim=16, shared=True).beats == 46
    assert sfu_op_cost(hw, "ropek", 1, 16, head_dim=16, shared=True).beats == 24
    assert sfu_op_cost(hw, "ropek", 1, 32, head_dim=16, shared=True).beats == 42
    # u280: 16 lanes. Head_dim 16: C = 2 chunks of 8, 1 butterfly cycle: ropek 2 + 1 + 2 + 8
    # = 13, + 0 + 4 = 17
    assert sfu_op_cost(load_hw("u280"), "ropek", 1, 16, head_dim=16, shared=True).beats == 17
    # head_dim 128: C = 8, 3 * 8 / 2 = 12 butterfly cycles: 32 heads * 22 + 6 + 4
    assert sfu_op_cost(load_hw("u280"), "ropeq", 1, 4096, head_dim=128, shared=True).beats == 714


def test_malformed_rotation_is_a_program_error():
    """A ropeq / ropek whose head_dim (aux) is no power of two dividing cols is a malformed
    program for the cycle model and the functional simulator alike."""
    from hwflow.isa import Runtime, Template, expand
    from hwflow.perf.lower import lower

    for func, aux, cols in ((11, 0, 16), (12, 12, 24), (11, 16, 24)):
        ins = make("SFU", func=func, rows=1, cols=cols, aux=aux, a_stride=64, o_stride=64)
        t = Template("prefill", 1, 1, (ins, make("END")))
        with pytest.raises(ProgramError, match=rf"^SFU \(pc 0\): rope. head_dim aux={aux} "):
            lower(load_hw("tiny"), expand(t, Runtime(1, 0)))
        with pytest.raises(ProgramError, match=rf"head_dim aux={aux} must be a power of two"):
            _run(_fs(), "SFU", **{k: v for k, v in ins.fields.items() if k != "opcode"})


def test_refusals(capsys):
    """OPT (learned positions) is refused by compress.check_keys through the compiler; a batch
    of sequences is refused with exit 2 and says why (the RTL co-simulation runs rotated keys
    since h-rotkrtl: tests/test_rtl_machine_rotk.py)."""
    with pytest.raises(UnsupportedError, match="needs RoPE positions; tiny-opt has 'learned'"):
        compile_model(load_model("tiny-opt"), load_plan("w8a8-rotk"), load_hw("tiny"), 64)
    with pytest.raises(UnsupportedError, match=r"'rotated' on batch 2 is not implemented"):
        compile_model(load_model("tiny-llama"), load_plan("w8a8-rotk"), load_hw("tiny"), 64, 2)
    argv = ["compile", "--model", "tiny-opt", "--hw", "tiny", "--plan", "w8a8-rotk"]
    assert main(argv) == 2
    assert "method.keys 'rotated' needs RoPE positions" in capsys.readouterr().err
