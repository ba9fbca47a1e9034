"""Binary compatibility of the ``.hwp`` format (issue 13).

The encoding of ISA version N is frozen in ``tests/data/isa/vN.json`` (opcode numbers, units,
field layouts, one instruction per opcode with its words) and ``vN.hwp`` (a program file of
those instructions). Changing an opcode number or a field without bumping
:data:`hwflow.isa.ISA_VERSION` fails here: a program written before the change would be misread
after it. After a deliberate change: bump ISA_VERSION, run ``python tests/isa_golden.py``
(it writes the new version's files and never overwrites an old one's) and commit them.
"""

from __future__ import annotations

import json
import re
import struct
import zlib

import pytest
from isa_golden import DATA, table

from hwflow import isa
from hwflow.errors import ProgramError
from hwflow.isa import Program, Runtime, make

BUMP = "bump ISA_VERSION in hwflow/isa.py and run python tests/isa_golden.py"


@pytest.fixture(scope="module")
def golden() -> dict:
    path = DATA / f"v{isa.ISA_VERSION}.json"
    if not path.is_file():
        pytest.fail(f"ISA version {isa.ISA_VERSION} has no golden files ({path}): {BUMP}")
    return json.loads(path.read_text())


def test_encoding_table_is_frozen_for_this_version(golden):
    """Every opcode of the frozen table keeps its number, unit and layout. An opcode appended
    with a number the table does not use leaves every older program's words meaning what they
    did, so it needs no bump (it is pinned when the next version's files are written)."""
    assert golden["isa_version"] == isa.ISA_VERSION
    now = {op["name"]: op for op in table()}
    for op in golden["opcodes"]:
        assert now.get(op["name"]) == op, f"{op['name']} changed without a version bump: {BUMP}"
    frozen = {op["code"] for op in golden["opcodes"]}
    added = [op for op in table() if op["name"] not in {g["name"] for g in golden["opcodes"]}]
    assert not [op["name"] for op in added if op["code"] in frozen], BUMP


def test_one_golden_instruction_per_opcode(golden):
    by_code = sorted(isa.OPCODES, key=lambda s: s.code)  # END (31) ends the golden program
    assert [g["op"] for g in golden["golden"]] == [s.name for s in by_code]
    for g in golden["golden"]:
        ins = make(g["op"], **g["values"])
        assert isa.encode(ins) == g["words"], g["op"]
        assert isa.decode(g["words"]) == (ins, len(g["words"])), g["op"]


def golden_ops(golden: dict) -> list[str]:
    """The opcode names the golden instructions cover, in file order."""
    return [g["op"] for g in golden["golden"]]


def test_golden_program_file_reads_and_writes_the_same_bytes(golden):
    data = (DATA / f"v{isa.ISA_VERSION}.hwp").read_bytes()
    prog = isa.load_program(DATA / f"v{isa.ISA_VERSION}.hwp")
    want = tuple(make(g["op"], **g["values"]) for g in golden["golden"])
    assert prog.templates[0].instrs == want
    assert prog.to_bytes() == data


def test_older_versions_are_refused_not_misread():
    files = sorted(DATA.glob("v*.hwp"))
    versions = sorted(int(re.fullmatch(r"v(\d+)\.hwp", f.name).group(1)) for f in files)
    assert versions and versions[-1] == isa.ISA_VERSION, versions
    for v in versions[:-1]:
        with pytest.raises(ProgramError, match=f"ISA version {v}, this hwflow reads version"):
            Program.from_bytes((DATA / f"v{v}.hwp").read_bytes())


# Words worked out by hand from the field table of the module doc (LSB first): a reader can
# check these without running anything.


def test_hand_encoded_words():
    assert isa.ISA_VERSION == 5, "checked by hand for versions 1-5: rework for the new layout"
    # END: opcode 31, no fields
    assert isa.encode(make("END")) == [31]
    # ALLRED 26 (v4): buf 16..18, off 19..42, off_reg 43..46, stride 47..70, row_bytes 71..94,
    # rows 95..110, rows_reg 111..114, peer 115..120 (word 3, bit 19), red 121 (word 3, bit 25)
    assert isa.encode(make("ALLRED", peer=8, red=1)) == [26, 0, 0, 8 << 19 | 1 << 25]
    # SYNC.MV (8 + 3 = 11), wait LD (bit 0) at bit 6, release SFU (bit 4) at bit 11
    assert isa.encode(make("SYNC.MV", wait=1, release=16)) == [11 | 1 << 6 | 16 << 11]
    # LOOP 16, count at bit 16
    assert isa.encode(make("LOOP", count=3)) == [16 | 3 << 16]
    # SETI 18, rd at 16..19, imm (44 bits, two's complement) at 20..63: -1 fills them
    assert isa.encode(make("SETI", rd=3, imm=-1)) == [0xFFF30012, 0xFFFFFFFF]
    # LD 1: kind at 16..18, hbm at 19..58, row_bytes at 142..165 (word 4, bit 14), rows at
    # 166..181 (word 5, bit 6); 186 bits in all -> 6 words
    ld = make("LD", kind=2, hbm=0x100, row_bytes=64, rows=1)
    assert isa.encode(ld) == [1 | 2 << 16 | 0x100 << 19, 0, 0, 0, 64 << 14, 1 << 6]
    # MM 3 (v3): wgroup is the last field, 3 bits at 285..287 (word 8, bit 29): before it 16
    # header + 2 func + 3 * (16 + 4) extents + 5 n + 5 m + 4 wbits + 1 bias + 3 * 55 operands
    # + 20 p_off + 6 obits + 1 arow = 285 bits; 288 in all, still 9 words
    # (v5: brow, 1 bit at 288, word 9 bit 0: 289 bits, 10 words)
    assert isa.encode(make("MM", wgroup=5)) == [3, 0, 0, 0, 0, 0, 0, 0, 5 << 29, 0]
    assert isa.encode(make("MV", brow=1)) == [4, 0, 0, 0, 0, 0, 0, 0, 0, 1]


def test_program_file_refusals_name_the_file_and_the_fault():
    """The smallest well-formed frame is 18 bytes (magic 8, version 2, header length 4,
    CRC 4): 17 bytes are 'truncated'; 18 with a zero-length header reach the header check.
    A bad word inside a template is reported with the file name in front."""
    short = isa.MAGIC + struct.pack("<HI", isa.ISA_VERSION, 0)[:5]
    with pytest.raises(
        ProgramError, match=r"^p\.hwp: truncated \(17 bytes\), not an hwflow program$"
    ):
        Program.from_bytes(_with_crc(short), "p.hwp")
    frame = _with_crc(isa.MAGIC + struct.pack("<HI", isa.ISA_VERSION, 0))
    assert len(frame) == 18
    with pytest.raises(ProgramError, match=r"^p\.hwp: malformed program \(header length 0"):
        Program.from_bytes(frame, "p.hwp")
    data = (DATA / f"v{isa.ISA_VERSION}.hwp").read_bytes()
    assert struct.unpack("<I", data[-8:-4]) == (31,)  # the golden template ends with END
    bad = _with_crc(data[:-8] + struct.pack("<I", 63))
    with pytest.raises(
        ProgramError, match=rf"^p\.hwp: word \d+: unknown opcode 63 \(ISA v{isa.ISA_VERSION}\)$"
    ):
        Program.from_bytes(bad, "p.hwp")


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def test_template_with_an_unknown_phase_is_refused():
    t = isa.Template("sideways", 1, 1, (make("END"),))
    head = {"isa_version": isa.ISA_VERSION, "preset": "x", "preset_digest": "0", "model": "m"}
    data = Program({**head, "plan": "p", "max_len": 1}, (), (t,)).to_bytes()
    with pytest.raises(
        ProgramError, match=r"^p\.hwp: malformed program \(template 0 is malformed\)$"
    ):
        Program.from_bytes(data, "p.hwp")


# Text and refusals, written out by hand from the module doc and the field tables.


def test_disasm_lines_written_out_by_hand():
    """``disasm``: the name padded to 8, for unit ops ``w=`` and ``r=`` masks padded to 11,
    then every non-zero field in table order (``count`` and ``imm`` also when 0); code fields
    by name, buffer ids by Buf name, the HBM address in hex."""
    ld = make("LD", wait=1 | 8, release=16, kind=2, hbm=0x100, buf=1, off=64, row_bytes=64, rows=3)
    assert isa.disasm(ld) == (
        "LD       w=LD|MV       r=SFU         kind=kv hbm=0x100 buf=ACT off=64 row_bytes=64 rows=3"
    )
    assert isa.disasm(make("SYNC.ST")) == "SYNC.ST  w=-           r=-          "
    assert isa.disasm(make("LOOP", count=0)) == "LOOP     count=0"
    assert isa.disasm(make("SETI", rd=3, imm=0)) == "SETI     rd=3 imm=0"
    assert isa.disasm(make("ENDLOOP")) == "ENDLOOP "
    mv = make("MV", func=1, rows=2, a_buf=2, a_off=16, o_buf=3, b_buf=7)
    assert isa.disasm(mv).split()[3:] == [
        "func=qk",
        "rows=2",
        "a_buf=KV",
        "a_off=16",
        "b_buf=7",
        "o_buf=SCORE",
    ]
    assert isa.disasm(make("MM", func=3)).split()[3:] == ["func=head"]
    assert isa.disasm(make("SFU", func=1, mask=2)).split()[3:] == ["func=softmax", "mask=2"]
    assert isa.disasm(make("SFU", func=15)).split()[3:] == ["func=15"]
    assert isa.disasm(make("ST", kind=7)).split()[3:] == ["kind=7"]


def test_mask_str_names_units_in_bit_order():
    assert isa.mask_str(0) == "-"
    assert isa.mask_str(0b11111) == "LD|ST|MM|MV|SFU"
    assert isa.mask_str(0b10100) == "MM|SFU"


def test_program_file_refusals_word_for_word(tmp_path):
    """Each refusal names the file and the fault; the magic shown is the file's first 8 bytes.
    The version and header length are unsigned (u16, u32): version 0x8003 reads as 32771."""
    data = _program_bytes()
    with pytest.raises(ProgramError) as err:
        Program.from_bytes(b"NOTHWFLW" + data[8:])
    assert str(err.value) == "program: bad magic b'NOTHWFLW', not an hwflow program"
    with pytest.raises(ProgramError) as err:
        Program.from_bytes(data[:17])
    assert str(err.value) == "program: truncated (17 bytes), not an hwflow program"
    v = bytearray(data)
    v[8:10] = struct.pack("<H", 0x8003)
    with pytest.raises(ProgramError) as err:
        Program.from_bytes(_with_crc(bytes(v[:-4])), "p.hwp")
    assert (
        str(err.value) == f"p.hwp: ISA version 32771, this hwflow reads version {isa.ISA_VERSION}"
    )
    h = bytearray(data)
    h[10:14] = struct.pack("<I", 0x80000000)
    with pytest.raises(ProgramError) as err:
        Program.from_bytes(_with_crc(bytes(h[:-4])), "p.hwp")
    assert str(err.value) == (
        "p.hwp: malformed program (header length 2147483648 runs past the end of the file)"
    )
    f = tmp_path / "bad.hwp"
    f.write_bytes(b"NOTHWFLW" + data[8:])
    with pytest.raises(ProgramError) as err:
        isa.load_program(f)
    assert str(err.value) == f"{f}: bad magic b'NOTHWFLW', not an hwflow program"


def _program_bytes() -> bytes:
    """A small program file: one decode template holding END."""
    head = {"isa_version": isa.ISA_VERSION, "preset": "x", "preset_digest": "0", "model": "m"}
    t = isa.Template("decode", 1, 4, (make("END"),))
    return Program({**head, "plan": "p", "max_len": 4}, (), (t,)).to_bytes()


HEAD = {
    "isa_version": isa.ISA_VERSION,
    "preset": "x",
    "preset_digest": "0",
    "model": "m",
    "plan": "p",
}


def _frame(header: dict, sections: list[tuple[bytes, bytes]], nsec: int | None = None) -> bytes:
    """A program file laid out by hand from the module doc: magic, version u16, header length
    u32, header JSON, section count u16, sections (tag, length u32, payload), CRC-32."""
    head = json.dumps(header).encode()
    body = isa.MAGIC + struct.pack("<HI", isa.ISA_VERSION, len(head)) + head
    body += struct.pack("<H", len(sections) if nsec is None else nsec)
    for tag, payload in sections:
        body += tag + struct.pack("<I", len(payload)) + payload
    return _with_crc(body)


def _tmpl(words: list[int]) -> tuple[bytes, bytes]:
    """A TMPL section: meta length u32, meta JSON, the instruction words."""
    meta = json.dumps({"phase": "decode", "lo": 1, "hi": 4, "info": {}}).encode()
    return b"TMPL", struct.pack("<I", len(meta)) + meta + struct.pack(f"<{len(words)}I", *words)


def _refusal(data: bytes) -> str:
    with pytest.raises(ProgramError) as err:
        Program.from_bytes(data, "p.hwp")
    return str(err.value)


def test_smallest_program_files_load():
    """No sections at all (the header ends 2 bytes before the CRC: the section count), and a
    file with a template but no REGN section (no regions)."""
    empty = Program.from_bytes(_frame({**HEAD, "max_len": 4}, []))
    assert (empty.regions, empty.templates, empty.header["max_len"]) == ((), (), 4)
    only = Program.from_bytes(_frame({**HEAD, "max_len": 4}, [_tmpl([31])]))
    assert only.regions == () and only.templates[0].instrs == (make("END"),)


def test_header_refusals_word_for_word():
    pre = "p.hwp: malformed program"
    assert _refusal(_frame(HEAD, [])) == f"{pre} (header lacks ['max_len'])"
    assert _refusal(_frame({"model": "m"}, [])) == (
        f"{pre} (header lacks ['isa_version', 'max_len', 'plan', 'preset', 'preset_digest'])"
    )
    assert _refusal(_frame({**HEAD, "max_len": True}, [])) == (
        f"{pre} (header max_len = True is not int)"
    )
    assert _refusal(_frame({**HEAD, "max_len": "4"}, [])) == (
        f"{pre} (header max_len = '4' is not int)"
    )
    data = bytearray(_frame({**HEAD, "max_len": 4}, []))
    (hlen,) = struct.unpack_from("<I", data, 10)
    data[10:14] = struct.pack("<I", hlen + 1)  # the count's 2 bytes no longer fit
    assert _refusal(_with_crc(bytes(data[:-4]))) == (
        f"{pre} (header length {hlen + 1} runs past the end of the file)"
    )


def test_section_refusals_word_for_word():
    pre = "p.hwp: malformed program"
    head = {**HEAD, "max_len": 4}
    assert _refusal(_frame(head, [], nsec=0x8000)) == (
        f"{pre} (the file ends before section 0 of 32768)"
    )
    regn = (b"REGN", b"[]")
    assert _refusal(_frame(head, [regn], nsec=2)) == (
        f"{pre} (the file ends before section 1 of 2)"
    )
    assert _refusal(_frame(head, [(b"ZZZZ", b"")])) == "p.hwp: unknown section b'ZZZZ'"
    for length in (3, 0x80000000):  # one byte past the end; past it by 2 GiB (unsigned)
        data = bytearray(_frame(head, [regn]))
        data[-10:-6] = struct.pack("<I", length)
        assert _refusal(_with_crc(bytes(data[:-4]))) == (
            f"{pre} (section 0 (b'REGN') runs past the end of the file)"
        )
    stray = _frame(head, [regn])[:-4] + b"abc"
    assert _refusal(_with_crc(stray)) == f"{pre} (3 stray bytes after the last section)"


def test_decode_past_the_end_is_a_truncation():
    for words, at in (([], 0), ([31], 1)):
        with pytest.raises(ProgramError) as err:
            isa.decode(words, at)
        assert str(err.value) == f"instruction stream truncated at word {at}"
    with pytest.raises(ProgramError) as err:
        isa.decode([31, 1], 1)  # LD needs 6 words
    assert str(err.value) == "word 1: LD needs 6 words, stream truncated"


# Expansion and dispatch semantics, expectations worked out by hand from the module doc.


def _run(instrs: list[isa.Instr], length: int = 5, pos: int = 0, phase: str = "prefill"):
    t = isa.Template(phase, 1, 64, (*instrs, make("END")))
    return list(isa.expand(t, Runtime(length, pos)))


def _probe(*regs: int) -> list[isa.Instr]:
    """One LD per register: its ``hbm`` (field 0, add mode) reads R[reg]."""
    return [make("LD", hbm_reg=r) for r in regs]


def test_every_alu_op_by_hand():
    """LEN 5, POS 0 (prefill). R3 = 7; R4 = R3 + -10 = -3; R5 = R3 - R4 = 10;
    R6 = R3 * -4 = -28; R7 = R4 + R5 = 7; R8 = min(R5, 9) = 9; R9 = min(R4, 9) = -3;
    R10 = LEN - POS = 5 (SUB of the runtime registers)."""
    prog = [
        make("SETI", rd=3, imm=7),
        make("ADDI", rd=4, ra=3, imm=-10),
        make("SUB", rd=5, ra=3, rb=4),
        make("MULI", rd=6, ra=3, imm=-4),
        make("ADD", rd=7, ra=4, rb=5),
        make("MINI", rd=8, ra=5, imm=9),
        make("MINI", rd=9, ra=4, imm=9),
        make("SUB", rd=10, ra=1, rb=2),
        *_probe(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10),
    ]
    got = [c["hbm"] for c in _run(prog)]
    assert got == [0, 5, 0, 7, -3, 10, -28, 7, 9, -3, 5]


def test_runtime_registers_and_read_only_ones():
    """R1 = LEN, R2 = POS (a decode step: LEN 1 after 9 positions); R3 is the first register a
    program may write, R0..R2 are refused with the pc and the op named."""
    c = _run(_probe(1, 2), length=1, pos=9, phase="decode")
    assert [x["hbm"] for x in c] == [1, 9]
    assert [x["hbm"] for x in _run([make("SETI", rd=3, imm=4), *_probe(3)])] == [4]
    for rd in (0, 1, 2):
        with pytest.raises(ProgramError) as err:
            _run([make("SETI", rd=3, imm=1), make("ADDI", rd=rd, ra=3, imm=1)])
        assert str(err.value) == f"pc 1: ADDI writes read-only register R{rd}"


def test_clamp_and_add_modes_by_hand():
    """``rows`` (clamp by ``rows_reg``): R3 = 8 > 6 gives 6; R3 = 6 gives 6; 4 gives 4; 0 and
    -2 give 0; ``rows_reg`` 0 keeps the field. ``off`` (add ``off_reg``): 100 + R3."""
    out = []
    for r3 in (8, 6, 4, 0, -2):
        prog = [make("SETI", rd=3, imm=r3), make("LD", rows=6, rows_reg=3, off=100, off_reg=3)]
        (c,) = _run(prog)
        out.append((c["rows"], c["off"]))
    assert out == [(6, 108), (6, 106), (4, 104), (0, 100), (0, 98)]
    (c,) = _run([make("SETI", rd=3, imm=2), make("LD", rows=6, off=100)])
    assert (c["rows"], c["off"]) == (6, 100)
    assert set(c.fields) == set(isa.spec("LD").index) - {"opcode", "wait", "release"} - {
        "hbm_reg",
        "off_reg",
        "rows_reg",
    }


def test_concrete_records_by_hand():
    """pc, op, unit, masks, per-unit seq and the (loop pc, iteration) of each enclosing loop."""
    prog = [
        make("SYNC.MV", wait=1, release=16),
        make("LOOP", count=2),
        make("SYNC.LD", release=8),
        make("LOOP", count=1),
        make("SYNC.MV", wait=1),
        make("ENDLOOP"),
        make("ENDLOOP"),
        make("LOOP", count=0),
        make("SYNC.LD"),
        make("ENDLOOP"),
    ]
    got = [(c.pc, c.op, c.unit, c.wait, c.release, c.seq, c.loops) for c in _run(prog)]
    assert got == [
        (0, "SYNC.MV", isa.Unit.MV, 1, 16, 0, ()),
        (2, "SYNC.LD", isa.Unit.LD, 0, 8, 0, ((1, 0),)),
        (4, "SYNC.MV", isa.Unit.MV, 1, 0, 1, ((1, 0), (3, 0))),
        (2, "SYNC.LD", isa.Unit.LD, 0, 8, 1, ((1, 1),)),
        (4, "SYNC.MV", isa.Unit.MV, 1, 0, 2, ((1, 1), (3, 0))),
    ]


def test_expand_refusals_word_for_word():
    t = isa.Template("prefill", 2, 8, (make("END"),))
    for rt, msg in (
        (Runtime(0), "runtime LEN = 0, POS = 0: need LEN >= 1, POS >= 0"),
        (Runtime(3, -1), "runtime LEN = 3, POS = -1: need LEN >= 1, POS >= 0"),
        (Runtime(1), "prefill template 2..8 does not serve LEN = 1, POS = 0"),
        (Runtime(9), "prefill template 2..8 does not serve LEN = 9, POS = 0"),
    ):
        with pytest.raises(ProgramError) as err:
            list(isa.expand(t, rt))
        assert str(err.value) == msg
    assert list(isa.expand(t, Runtime(2))) == [] and list(isa.expand(t, Runtime(8))) == []
    inside = isa.Template("prefill", 1, 8, (make("LOOP", count=1), make("END"), make("ENDLOOP")))
    with pytest.raises(ProgramError) as err:
        list(isa.expand(inside, Runtime(1)))
    assert str(err.value) == "pc 1: END inside a loop"
    with pytest.raises(ProgramError) as err:
        isa.loop_spans((make("ENDLOOP"),))
    assert str(err.value) == "pc 0: ENDLOOP without LOOP"
    with pytest.raises(ProgramError) as err:
        isa.loop_spans((make("LOOP", count=1), make("LOOP", count=1), make("ENDLOOP")))
    assert str(err.value) == "pc 0: LOOP without ENDLOOP"
    assert isa.loop_spans([make("LOOP"), make("LOOP"), make("ENDLOOP"), make("ENDLOOP")]) == {
        0: 3,
        1: 2,
    }


def test_serves_at_the_range_edges():
    """Prefill serves LEN lo..hi at POS 0; decode serves LEN 1 at context POS + 1 in lo..hi."""
    pre = isa.Template("prefill", 4, 8, (make("END"),))
    assert [pre.serves(Runtime(n)) for n in (3, 4, 8, 9)] == [False, True, True, False]
    assert not pre.serves(Runtime(4, 1))
    dec = isa.Template("decode", 4, 8, (make("END"),))
    assert [dec.serves(Runtime(1, p)) for p in (2, 3, 7, 8)] == [False, True, True, False]
    assert not dec.serves(Runtime(2, 3))


def test_select_and_check_preset_messages():
    t = [isa.Template("prefill", lo, hi, (make("END"),)) for lo, hi in ((1, 4), (5, 16))]
    d = isa.Template("decode", 1, 32, (make("END"),))
    p = Program({"preset": "tiny", "preset_digest": "ab" * 32}, (), (*t, d))
    assert p.select("prefill", Runtime(5)) is t[1] and p.select("prefill", Runtime(4)) is t[0]
    assert p.select("decode", Runtime(1, 31)) is d
    for phase, rt, msg in (
        ("prefill", Runtime(17), "no prefill template serves LEN = 17 (served: 1..16)"),
        ("decode", Runtime(1, 32), "no decode template serves context POS+1 = 33 (served: 1..32)"),
        ("sideways", Runtime(1), "no sideways template serves context POS+1 = 1 (served: none)"),
    ):
        with pytest.raises(ProgramError) as err:
            p.select(phase, rt)
        assert str(err.value) == msg
    p.check_preset("ab" * 32)
    with pytest.raises(ProgramError) as err:
        p.check_preset("cd" * 32, "u280")
    assert str(err.value) == (
        "program was compiled for preset 'tiny' (digest abababababab), "
        "not for u280 (digest cdcdcdcdcdcd)"
    )
    with pytest.raises(ProgramError) as err:
        p.check_preset("cd" * 32)
    assert str(err.value).endswith("not for this preset (digest cdcdcdcdcdcd)")
    with pytest.raises(ProgramError) as err:
        p.region("kv")
    assert str(err.value) == "program has no HBM region 'kv'"


def test_make_ranges_at_the_edges():
    """Unsigned fields take 0..2**bits - 1, signed ones -2**(bits-1)..2**(bits-1) - 1."""
    assert make("MV", rows=65535)["rows"] == 65535
    assert make("SETI", rd=3, imm=-(1 << 43))["imm"] == -(1 << 43)
    assert make("SETI", rd=3, imm=(1 << 43) - 1)["imm"] == (1 << 43) - 1
    for op, field, v, msg in (
        ("MV", "rows", 65536, "MV.rows = 65536 does not fit 16 bits (0..65535)"),
        ("MV", "rows", -1, "MV.rows = -1 does not fit 16 bits (0..65535)"),
        ("MINI", "imm", 1 << 23, "MINI.imm = 8388608 does not fit 24 bits (-8388608..8388607)"),
        (
            "MINI",
            "imm",
            -(1 << 23) - 1,
            "MINI.imm = -8388609 does not fit 24 bits (-8388608..8388607)",
        ),
        ("SYNC.LD", "wait", 32, "SYNC.LD.wait = 32 does not fit 5 bits (0..31)"),
    ):
        with pytest.raises(ProgramError) as err:
            make(op, **{field: v})
        assert str(err.value) == msg
    with pytest.raises(ProgramError) as err:
        make("LD", zz=1, bogus=2)
    assert str(err.value) == "LD: unknown fields ['bogus', 'zz']"
    with pytest.raises(ProgramError) as err:
        make("ENDLOOP", release=2)
    assert str(err.value) == "ENDLOOP: SYS instructions carry no tokens"
    with pytest.raises(ProgramError) as err:
        make("NOP")
    assert str(err.value).startswith("unknown opcode 'NOP' (known: ['ADD', 'ADDI', ")
    ins = make("END", opcode=5)  # the opcode comes from the name
    assert ins["opcode"] == 31 and ins.fields == {"opcode": 31, "wait": 0, "release": 0}
    m = make("SYNC.MM", wait=3).with_masks(4, 8)
    assert (m.op, m.wait, m.release, m.unit) == ("SYNC.MM", 4, 8, isa.Unit.MM)


def test_iteration_keys_in_nested_loops_by_hand():
    """Outer loop (pc 1, 2 iterations, one key): its second iteration is a ``repeat``, muted
    whole, inner loop included (no keys asked inside). Inner loop (pc 3) keyed by R3 % 2: both
    of its iterations in the first outer iteration are new. seq and R3 run on through the
    muted iteration: the LD after the loops is LD's third op and reads R3 = 4."""
    prog = (
        make("SETI", rd=3, imm=0),
        make("LOOP", count=2),
        make("SYNC.LD"),
        make("LOOP", count=2),
        make("SYNC.MV"),
        make("ADDI", rd=3, ra=3, imm=1),
        make("ENDLOOP"),
        make("SYNC.SFU"),
        make("ENDLOOP"),
        make("LD", hbm_reg=3),
        make("END"),
    )
    t = isa.Template("prefill", 1, 8, prog)
    asked = []

    def key(loop, regs):
        asked.append((loop, regs[3]))
        return "outer" if loop == 1 else regs[3] % 2

    def show(items):
        return [
            (x.what, x.pc, x.iteration, x.ident)
            if isinstance(x, isa.Reuse)
            else (x.pc, x.seq, x.loops, x["hbm"] if x.op == "LD" else None)
            for x in items
        ]

    want = [
        ("begin", 1, 0, 0),
        (2, 0, ((1, 0),), None),
        ("begin", 3, 0, 1),
        (4, 0, ((1, 0), (3, 0)), None),
        ("end", 3, 0, 1),
        ("begin", 3, 1, 2),
        (4, 1, ((1, 0), (3, 1)), None),
        ("end", 3, 1, 2),
        (7, 0, ((1, 0),), None),
        ("end", 1, 0, 0),
        ("repeat", 1, 1, 0),
        (9, 2, (), 4),
    ]
    assert show(isa.expand(t, Runtime(1), iteration_key=key)) == want
    assert asked == [(1, 0), (3, 0), (3, 1), (1, 2)]
    only = show(isa.expand(t, Runtime(1), iteration_key=key, only=frozenset({4, 9})))
    assert only == [w for w in want if w[0] not in (2, 7)]


def test_only_skips_to_the_wanted_pc_and_counts_the_rest():
    """Four unit ops in a row (LD, MV, LD, MV), then a LOOP of 2 around an SFU op: with
    ``only`` the skipped ops still advance their unit's seq."""
    prog = (
        make("SYNC.LD"),
        make("SYNC.MV"),
        make("SYNC.LD"),
        make("SYNC.MV"),
        make("LOOP", count=2),
        make("SYNC.SFU"),
        make("ENDLOOP"),
        make("SYNC.LD"),
        make("END"),
    )
    t = isa.Template("prefill", 1, 8, prog)

    def run(*pcs):
        return [(c.pc, c.seq) for c in isa.expand(t, Runtime(1), only=frozenset(pcs))]

    assert run(2) == [(2, 1)]
    assert run(3) == [(3, 1)]
    assert run(1, 3) == [(1, 0), (3, 1)]
    assert run(5) == [(5, 0), (5, 1)]
    assert run(7) == [(7, 2)]
    assert run() == []


class _Item:
    def __init__(self, name: str, wait: int = 0, release: int = 0) -> None:
        self.name, self.wait, self.release = name, wait, release


def test_dispatch_token_discipline_by_hand():
    """MV listed first: its ``b`` waits for LD, so the first round runs LD's ``a`` (releasing
    to MV and SFU); the second round runs ``b`` (popping a's token) and stops at ``c``, which
    waits for a second LD token that never comes. SFU's ``s`` waits for LD and MV: it pops
    a's token and b's, in unit order. Queues are keyed (src, dst)."""
    from collections import deque

    LD, MV, SFU = isa.Unit.LD, isa.Unit.MV, isa.Unit.SFU
    streams = {
        MV: [_Item("b", wait=1 << LD, release=1 << SFU), _Item("c", wait=1 << LD)],
        LD: [_Item("a", release=1 << MV | 1 << SFU)],
        SFU: [_Item("s", wait=1 << LD | 1 << MV)],
    }
    fired = []

    def fire(unit, item, popped):
        fired.append((unit.name, item.name, popped))
        return item.name

    queues: dict = {}
    pos = isa.dispatch(streams, queues, fire)
    assert pos == {MV: 1, LD: 1, SFU: 1}
    assert fired == [("LD", "a", []), ("MV", "b", ["a"]), ("SFU", "s", ["a", "b"])]
    assert all(not q for q in queues.values()) and set(queues) == {(LD, MV), (LD, SFU), (MV, SFU)}
    # without fire the tokens are None; a token already queued (LD -> MV) lets c run at once
    queues = {(LD, MV): deque(["x"])}
    pos = isa.dispatch({MV: [_Item("c", wait=1 << LD, release=1 << LD)]}, queues)
    assert pos == {MV: 1} and list(queues[(MV, LD)]) == [None] and not queues[(LD, MV)]


def test_instruction_bytes_by_hand():
    """LD is 186 bits (6 words), MM 289 (10, since v5's brow), END 16 (1): 4 bytes a word."""
    a = isa.Template("prefill", 1, 1, (make("LD"), make("END")))
    b = isa.Template("decode", 1, 1, (make("MM"), make("END")))
    assert (isa.spec("LD").bits, isa.spec("MM").bits, isa.spec("END").bits) == (186, 289, 16)
    assert (a.nbytes, b.nbytes) == (28, 44)
    assert Program({}, (), (a, b)).instr_bytes == 72


def test_region_by_name():
    a, b = isa.Region("weights", 0, 64, "weights"), isa.Region("kv", 64, 32, "kv")
    p = Program({}, (a, b), ())
    assert p.region("kv") is b and p.region("weights") is a


def test_header_is_written_with_sorted_keys():
    """Equal programs give equal bytes whatever order their header was built in."""
    header = {"preset_digest": "0", "preset": "x", "plan": "p", "model": "m", "max_len": 4}
    data = Program({**header, "isa_version": isa.ISA_VERSION}, (), ()).to_bytes()
    (hlen,) = struct.unpack_from("<I", data, 10)
    assert data[14 : 14 + hlen] == (
        b'{"isa_version": %d, "max_len": 4, "model": "m", "plan": "p", "preset": "x", '
        b'"preset_digest": "0"}' % isa.ISA_VERSION
    )


def test_template_meta_length_is_unsigned():
    """A TMPL's meta length of 2**32 - 12 runs past its payload: refused. (Read as a signed
    -12, ``payload[4:-8]`` would be the meta and the last 8 bytes 2 instruction words.)"""
    meta = json.dumps({"phase": "decode", "lo": 1, "hi": 4, "info": {}}).encode()
    payload = struct.pack("<I", 2**32 - 12) + meta + struct.pack("<2I", 31, 31)
    data = _frame({**HEAD, "max_len": 4}, [(b"TMPL", payload)])
    assert _refusal(data).startswith("p.hwp: malformed program (")


def test_section_count_is_unsigned():
    """The section count is a u16: 32767 templates and the REGN section make 32768 sections,
    written as 0x8000 and read back."""
    end = isa.Template("decode", 1, 1, (make("END"),))
    data = Program({**HEAD, "max_len": 1}, (), (end,) * 32767).to_bytes()
    (hlen,) = struct.unpack_from("<I", data, 10)
    assert struct.unpack_from("<H", data, 14 + hlen) == (0x8000,)
    assert len(Program.from_bytes(data).templates) == 32767


def test_resolvers_by_hand():
    """Per pc: None for SYS; for a unit op its static fields and its register-modified ones
    as (name, field value, add mode, register)."""
    t = isa.Template(
        "prefill", 1, 1, (make("SETI", rd=3), make("LD", hbm=5, hbm_reg=3, kind=2), make("END"))
    )
    statics = {"kind": 2, "hbm_stride": 0, "buf": 0, "stride": 0, "row_bytes": 0}
    dyn = (("hbm", 5, True, 3), ("off", 0, True, 0), ("rows", 0, False, 0))
    assert t.resolvers == (None, (statics, dyn), None)


def test_select_without_decode_templates():
    """A prefill-only program asked for decode: a single sequence gets the served range
    ("none"), a batch of 2 the batch message (a program without decode templates serves 1)."""
    p = Program({}, (), (isa.Template("prefill", 1, 4, (make("END"),)),))
    with pytest.raises(ProgramError) as err:
        p.select("decode", Runtime(1, 5))
    assert str(err.value) == "no decode template serves context POS+1 = 6 (served: none)"
    with pytest.raises(ProgramError) as err:
        p.select("decode", Runtime.batch([3, 4]))
    assert str(err.value) == (
        "no decode template serves a batch of 2 sequences (the program serves 1..1: "
        "compile with --batch 2)"
    )


def test_batch_runtime_of_no_sequences():
    """An empty batch: no rows, POS 0, no positions."""
    assert Runtime.batch([]) == Runtime(0, 0, 0, ())
    assert Runtime.batch([7, 2]) == Runtime(2, 7, 0, (7, 2))


def test_dispatch_holds_items_back_until_ready_and_resumes():
    """``ready(unit, item)`` is asked once an item's tokens are there; a held item stops its
    stream, not the others; ``pos`` resumes where the last call stopped. LD's ``a`` releases
    to MV; LD's ``r`` (a RECV) waits for its link; MV's ``b`` waits for a's token."""
    LD, MV = isa.Unit.LD, isa.Unit.MV
    streams = {LD: [_Item("a", release=1 << MV), _Item("r")], MV: [_Item("b", wait=1 << LD)]}
    asked, fired = [], []

    def fire(unit, item, popped):
        fired.append(item.name)
        if len(fired) > 10:
            raise AssertionError("an item fired twice")
        return item.name

    def ready(unit, item):
        asked.append((unit, item.name))
        return item.name != "r" or link_up

    link_up = False
    queues: dict = {}
    pos = isa.dispatch(streams, queues, fire, ready)
    assert pos == {LD: 1, MV: 1} and fired == ["a", "b"]
    assert asked[:3] == [(LD, "a"), (LD, "r"), (MV, "b")]
    link_up = True
    again = isa.dispatch(streams, queues, fire, ready, pos)
    assert again is pos and pos == {LD: 2, MV: 1} and fired == ["a", "b", "r"]
    # four items without tokens run in order, each once
    fired.clear()
    row = [_Item(n) for n in "wxyz"]
    assert isa.dispatch({LD: row}, {}, fire) == {LD: 4} and fired == list("wxyz")


def test_repeat_markers_name_the_loop_pc_and_the_iteration():
    """One loop at pc 0, 3 iterations with one key: the first is recorded, the other two are
    repeats of loop pc 0, iterations 1 and 2 (their SYNC.LD muted)."""
    t = isa.Template(
        "prefill", 1, 8, (make("LOOP", count=3), make("SYNC.LD"), make("ENDLOOP"), make("END"))
    )
    items = isa.expand(t, Runtime(1), iteration_key=lambda loop, regs: "same")
    marks = [(x.what, x.pc, x.iteration) if isinstance(x, isa.Reuse) else x.pc for x in items]
    assert marks == [("begin", 0, 0), 1, ("end", 0, 0), ("repeat", 0, 1), ("repeat", 0, 2)]


def test_expand_refuses_a_template_without_end_and_takes_pos_0_in_a_batch():
    """A template whose instructions run out before END is refused word for word; a decode
    step whose (only) sequence is at POS 0 (its first token) is a valid batch runtime."""
    with pytest.raises(ProgramError) as err:
        list(isa.expand(isa.Template("prefill", 1, 8, (make("SYNC.LD"),)), Runtime(1)))
    assert str(err.value) == "program ends without END"
    dec = isa.Template("decode", 1, 8, (make("SYNC.LD"), make("END")))
    assert [c.pc for c in isa.expand(dec, Runtime.batch([0]))] == [0]
