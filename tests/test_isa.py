"""ISA: field-table encode/decode round trip, program file refusals, the shared expansion."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from hwflow import isa
from hwflow import numerics as nx
from hwflow.config import load_hw
from hwflow.errors import ProgramError
from hwflow.isa import Program, Region, Runtime, Template, make


def _random_instr(spec: isa.OpSpec, rng: np.random.Generator) -> isa.Instr:
    vals = {}
    for f in spec.fields[1:]:
        if spec.unit == isa.Unit.SYS and f.name in ("wait", "release"):
            continue
        if f.signed:
            vals[f.name] = int(rng.integers(-(1 << (f.bits - 1)), 1 << (f.bits - 1)))
        else:
            vals[f.name] = int(rng.integers(0, 1 << f.bits, dtype=np.uint64))
    return make(spec.name, **vals)


@pytest.mark.parametrize("spec", isa.OPCODES, ids=lambda s: s.name)
def test_encode_decode_round_trip(spec):
    rng = np.random.default_rng(spec.code)
    for _ in range(200):
        ins = _random_instr(spec, rng)
        words = isa.encode(ins)
        assert len(words) == spec.words and all(0 <= w < 2**32 for w in words)
        back, nxt = isa.decode(words)
        assert back == ins and nxt == spec.words
        assert isa.disasm(back).startswith(spec.name)


def test_field_table_is_the_only_layout():
    for s in isa.OPCODES:
        assert [f.name for f in s.fields[:3]] == ["opcode", "wait", "release"]
        assert s.words == -(-sum(f.bits for f in s.fields) // 32)
        names = [f.name for f in s.fields]
        assert len(names) == len(set(names))
        for f in s.fields:
            if f.dyn:
                assert f.dyn[1] in names, (s.name, f.name)
    assert len({s.code for s in isa.OPCODES}) == len(isa.OPCODES)
    assert max(s.code for s in isa.OPCODES) < 64


def test_stream_round_trip_and_decode_errors():
    prog = [
        make("LOOP", count=3),
        make("SYNC.MV", wait=1, release=16),
        make("ENDLOOP"),
        make("END"),
    ]
    words = isa.encode_stream(prog)
    assert isa.decode_stream(words) == tuple(prog)
    with pytest.raises(ProgramError, match="unknown opcode"):
        isa.decode([63])
    with pytest.raises(ProgramError, match="truncated"):
        isa.decode(isa.encode(make("LD", rows=1))[:-1])
    with pytest.raises(ProgramError, match="padding"):
        isa.decode([isa.encode(make("END"))[0] | 1 << 31])


def test_make_checks_ranges_and_sys_tokens():
    with pytest.raises(ProgramError, match="rows = 70000 does not fit 16 bits"):
        make("MV", rows=70000)
    with pytest.raises(ProgramError, match="unknown fields"):
        make("LD", bogus=1)
    with pytest.raises(ProgramError, match="carry no tokens"):
        make("LOOP", count=1, wait=1)


def _program(digest: str = "abc") -> Program:
    t = Template("decode", 1, 16, (make("SYNC.LD", release=0), make("END")), {"tt": 1})
    header = {"isa_version": isa.ISA_VERSION, "preset": "x", "preset_digest": digest}
    header |= {"model": "m", "plan": "p", "max_len": 16}
    return Program(header, (Region("kv", 0, 64, "kv"),), (t,))


def test_program_file_round_trip_and_refusals(tmp_path):
    p = _program()
    data = p.to_bytes()
    q = Program.from_bytes(data)
    assert q.templates[0].instrs == p.templates[0].instrs
    assert q.regions == p.regions and dict(q.header) == dict(p.header)
    with pytest.raises(ProgramError, match="bad magic"):
        Program.from_bytes(b"NOTHWFLW" + data[8:])
    with pytest.raises(ProgramError, match="checksum"):
        Program.from_bytes(data[:-9] + bytes([data[-9] ^ 1]) + data[-8:])
    with pytest.raises(ProgramError, match=r"truncated|checksum"):
        Program.from_bytes(data[: len(data) // 2])
    other = bytearray(data)
    other[8:10] = struct.pack("<H", isa.ISA_VERSION + 1)
    other[-4:] = struct.pack("<I", zlib.crc32(bytes(other[:-4])))
    with pytest.raises(ProgramError, match=f"ISA version {isa.ISA_VERSION + 1}"):
        Program.from_bytes(bytes(other))
    old = bytearray(data)  # a program of the first numerics contract (INT8 residual)
    old[8:10] = struct.pack("<H", 1)
    old[-4:] = struct.pack("<I", zlib.crc32(bytes(old[:-4])))
    with pytest.raises(
        ProgramError, match=rf"ISA version 1, this hwflow reads version {isa.ISA_VERSION}"
    ):
        Program.from_bytes(bytes(old))
    hw = load_hw("tiny")
    f = tmp_path / "p.hwp"
    f.write_bytes(data)
    with pytest.raises(ProgramError, match=r"compiled for preset 'x'.*not for tiny"):
        isa.load_program(f, hw)
    with pytest.raises(ProgramError, match="cannot read"):
        isa.load_program(tmp_path / "missing.hwp")


def test_expand_resolves_loops_and_registers():
    ld = make("LD", hbm=100, hbm_reg=4, rows=8, rows_reg=3, row_bytes=2, kind=2)
    t = Template(
        "prefill",
        1,
        64,
        (
            make("SETI", rd=4, imm=1000),
            make("ADDI", rd=3, ra=1, imm=-2),  # R3 = LEN - 2
            make("LOOP", count=2),
            make("LOOP", count=3),
            ld,
            make("ADDI", rd=4, ra=4, imm=10),
            make("ENDLOOP"),
            make("MULI", rd=3, ra=3, imm=2),
            make("ENDLOOP"),
            make("END"),
        ),
    )
    out = list(isa.expand(t, Runtime(5)))
    assert [c["hbm"] for c in out] == [1100, 1110, 1120, 1130, 1140, 1150]
    assert [c["rows"] for c in out] == [3, 3, 3, 6, 6, 6]  # clamp(R3, 0, 8)
    assert "hbm_reg" not in out[0].fields and "rows_reg" not in out[0].fields
    assert [c.seq for c in out] == list(range(6))
    assert out[4].loops == ((2, 1), (3, 1))
    out = list(isa.expand(t, Runtime(1)))
    assert [c["rows"] for c in out][:3] == [0, 0, 0]  # R3 = -1 clamps to 0
    with pytest.raises(ProgramError, match="does not serve"):
        list(isa.expand(t, Runtime(65)))
    with pytest.raises(ProgramError, match="does not serve"):
        list(isa.expand(t, Runtime(5, pos=3)))  # prefill templates start at POS 0


def test_r2_reads_the_context_table_through_r15():
    """ISA v4: R2 = CTX[SEQ]; writing R15 reloads R2; an unnamed slot reads 0; a prefill's
    SEQ comes from the runtime (hand-computed addresses: hbm = 1000 + R2)."""
    ld = make("LD", hbm=1000, hbm_reg=2, rows=4, rows_reg=15, row_bytes=2, kind=2)
    body = (make("SETI", rd=15, imm=0), make("LOOP", count=4), ld,
            make("ADDI", rd=15, ra=15, imm=1), make("ENDLOOP"), make("END"))  # fmt: skip
    t = Template("decode", 1, 64, body, {"batch": 4})
    out = list(isa.expand(t, Runtime.batch([7, 30, 2])))
    assert [c["hbm"] for c in out] == [1007, 1030, 1002, 1000]  # slot 3 is idle: POS 0
    assert [c["rows"] for c in out] == [0, 1, 2, 3]  # clamp(SEQ, 0, 4)
    assert t.serves(Runtime.batch([7, 30, 2])) and not t.serves(Runtime.batch([1] * 5))
    assert not t.serves(Runtime.batch([64]))  # context 65 > 64
    assert not t.serves(Runtime(2, 5))  # two rows need two positions
    pre = Template("prefill", 1, 8, (ld, make("END")))
    (c,) = isa.expand(pre, Runtime(3, 0, seq=2))
    assert (c["hbm"], c["rows"]) == (1000, 2)
    with pytest.raises(ProgramError, match=r"decode step's rows are slots 0\.\.LEN-1"):
        list(isa.expand(t, Runtime(1, 7, seq=1)))
    with pytest.raises(ProgramError, match="one POS >= 0 per row"):
        list(isa.expand(t, Runtime(2, 7, 0, (7, -1))))
    prog = Program({}, (), (t,))
    with pytest.raises(ProgramError, match=r"serves 1\.\.4: compile with --batch 5"):
        prog.select("decode", Runtime.batch([1] * 5))


def test_expand_replays_iterations_by_key():
    """With an iteration key, the first iteration per key is bracketed, later ones are one
    ``repeat`` marker; registers and seq run on exactly as in the full expansion."""
    ld = make("LD", hbm=100, hbm_reg=4, rows=8, rows_reg=3, row_bytes=2, kind=2)
    st = make("ST", hbm=0, hbm_reg=4, rows=1, row_bytes=2, kind=2)
    t = Template(
        "prefill",
        1,
        64,
        (
            make("SETI", rd=4, imm=1000),
            make("ADDI", rd=3, ra=1, imm=-2),
            make("LOOP", count=4),
            ld,
            st,
            make("ADDI", rd=4, ra=4, imm=10),
            make("ENDLOOP"),
            st,
            make("END"),
        ),
    )
    full = list(isa.expand(t, Runtime(5)))
    keys = []

    def key(loop, regs):
        keys.append((loop, regs[4]))
        return regs[4] % 20  # iterations 0, 2 and 1, 3 alike (as far as this key says)

    out = list(isa.expand(t, Runtime(5), iteration_key=key))
    assert keys == [(2, 1000), (2, 1010), (2, 1020), (2, 1030)]
    marks = [(m.what, m.iteration, m.ident) for m in out if isinstance(m, isa.Reuse)]
    assert marks == [
        ("begin", 0, 0), ("end", 0, 0), ("begin", 1, 1), ("end", 1, 1),
        ("repeat", 2, 0), ("repeat", 3, 1),
    ]  # fmt: skip
    units = [c for c in out if not isinstance(c, isa.Reuse)]
    assert units[:4] == full[:4] and units[-1] == full[-1]
    assert units[-1].seq == 4 and units[-1]["hbm"] == 1040  # the 5th ST, after 4 iterations
    only = list(isa.expand(t, Runtime(5), iteration_key=key, only=frozenset({4, 7})))
    assert [c for c in only if not isinstance(c, isa.Reuse)] == [full[1], full[3], full[-1]]


def test_expand_refuses_bad_programs():
    base = dict(phase="decode", lo=1, hi=16)
    bad = Template(instrs=(make("SETI", rd=1, imm=3), make("END")), **base)
    with pytest.raises(ProgramError, match="read-only register R1"):
        list(isa.expand(bad, Runtime(1, 0)))
    with pytest.raises(ProgramError, match="LOOP without ENDLOOP"):
        list(isa.expand(Template(instrs=(make("LOOP", count=1), make("END")), **base), Runtime(1)))
    with pytest.raises(ProgramError, match="without END"):
        list(isa.expand(Template(instrs=(make("SYNC.LD"),), **base), Runtime(1)))


def test_select_names_served_range():
    p = _program()
    assert p.select("decode", Runtime(1, 15)).hi == 16
    with pytest.raises(ProgramError, match=r"context POS\+1 = 17 \(served: 1..16\)"):
        p.select("decode", Runtime(1, 16))


def test_hbm_channel_interleave():
    assert [isa.hbm_channel(a, 4, 256) for a in (0, 255, 256, 1024, 1280)] == [0, 0, 1, 0, 1]


def test_every_sfu_function_has_its_operand_formats():
    """The numerics contract's formats: the residual ops and the norm/softmax inputs INT32,
    gate/up INT16, per-row INT8 outputs (norm, softmax, gated product, OPT's ReLU) with a row
    factor of 4 bytes (uint16 mantissa, int16 exponent) before each row."""
    assert set(isa.SFU_FORMATS) == set(isa.SFU_FUNCS)
    rows = {f for f, fmt in isa.SFU_FORMATS.items() if fmt.row_factor}
    assert rows == {"norm", "softmax", "mul", "reluq", "qrows"}
    res, gate = nx.RESIDUAL_BITS // 8, nx.GATE_BITS // 8
    assert isa.SFU_FORMATS["add"] == isa.SfuFormat(res, res, res, False)
    assert isa.SFU_FORMATS["norm"].a == res and isa.SFU_FORMATS["softmax"].a == 4  # INT32 z
    assert isa.SFU_FORMATS["silu"] == isa.SfuFormat(gate, 0, gate, False)
    assert isa.SFU_FORMATS["mul"] == isa.SfuFormat(gate, gate, 1, True)
    # a row factor holds a ROW_MULT_BITS mantissa in 2 bytes and the exponent in 2 more
    assert nx.ROW_MULT_BITS <= 16 and isa.ROW_FACTOR_BYTES == 4


def test_function_and_kind_codes_are_isa_v2s():
    """The codes the compiler writes and the simulators read, pinned by hand from ISA v2 and
    unchanged in v3 (which only added the MM/MV ``wgroup`` field; the RTL decodes the same
    numbers) and v4 (the context table read through R15, no field) and v5 (rotated keys: the
    MM/MV ``brow`` field, SFU ropeq and ropek appended): a renumbered member must come with a
    new ISA_VERSION (and this test's update).
    The name tuples are indexed by code (``disasm`` and the cycle model read them so)."""
    assert isa.ISA_VERSION == 5  # v4 appended requant, rowmax, qrows; v5 ropeq, ropek
    v2 = {
        isa.XferKind: "weights params kv act rope logits",
        isa.MatmulFunc: "linear qk pv head",
        isa.SfuFunc: "norm softmax rope silu add mul mov reluq requant rowmax qrows ropeq ropek",
        isa.SoftmaxMask: "none causal block",
    }
    for codes, names in v2.items():
        assert [(c.value, c.name.lower()) for c in codes] == list(enumerate(names.split()))
    assert tuple(v2[isa.XferKind].split()) == isa.XFER_KINDS
    assert tuple(v2[isa.MatmulFunc].split()) == isa.MATMUL_FUNCS
    assert tuple(v2[isa.SfuFunc].split()) == isa.SFU_FUNCS
    assert "kind=kv" in isa.disasm(isa.make("LD", kind=2))
    assert "func=reluq" in isa.disasm(isa.make("SFU", func=7))


def test_isa_v5_rotated_keys_fields():
    """ISA v5's additions, pinned by hand (the seam the RTL decodes): MM/MV end in a 1-bit
    ``brow`` after ``wgroup`` at bit 288, so they take 10 words; the two SFU functions read
    INT16 A and B (the RoPE rows) and write INT8, ropek with a factor per head segment."""
    for op in ("MM", "MV"):
        s = isa.spec(op)
        assert [f.name for f in s.fields[-3:]] == ["arow", "wgroup", "brow"]
        assert s.index["brow"].bits == 1 and s.bits == 289 and s.words == 10
        words = isa.encode(isa.make(op, func=1, brow=1))
        assert words[9] == 1 and isa.decode(words)[0]["brow"] == 1
    assert (isa.SfuFunc.ROPEQ, isa.SfuFunc.ROPEK) == (11, 12)
    assert isa.SFU_FORMATS["ropeq"] == isa.SfuFormat(2, 2, 1, False, False)
    assert isa.SFU_FORMATS["ropek"] == isa.SfuFormat(2, 2, 1, False, True)
    assert not any(f.head_factor for n, f in isa.SFU_FORMATS.items() if n != "ropek")
