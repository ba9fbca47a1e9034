"""Golden files of the ``.hwp`` binary format, one set per ISA version (issue 13).

``python tests/isa_golden.py`` writes ``tests/data/isa/v<ISA_VERSION>.json`` (the encoding
table: every opcode's number, unit and field layout, plus one instruction per opcode with its
32-bit words) and ``v<ISA_VERSION>.hwp`` (a program file holding those instructions). It
refuses to overwrite the files of an existing version: an encoding change needs a new
``hwflow.isa.ISA_VERSION``, and :mod:`tests.test_mutants_isa` fails until both go together.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

from hwflow import isa

DATA = Path(__file__).parent / "data" / "isa"


def _field(f: isa.Field) -> str:
    """``name:bits``, then ``:signed`` and ``:add+reg`` / ``:clamp+reg`` when they apply."""
    out = f"{f.name}:{f.bits}" + (":signed" if f.signed else "")
    return out + (f":{f.dyn[0]}+{f.dyn[1]}" if f.dyn else "")


def table() -> list[dict[str, Any]]:
    """The encoding table as plain data: what a program file's words mean."""
    return [
        {
            "name": s.name,
            "code": s.code,
            "unit": s.unit.name,
            "fields": [_field(f) for f in s.fields],
        }
        for s in isa.OPCODES
    ]


def _values(spec: isa.OpSpec) -> dict[str, int]:
    """Non-zero values for every field of an opcode (masks 0 for SYS), seeded by its code."""
    rng = random.Random(1000 + spec.code)
    out: dict[str, int] = {}
    for f in spec.fields[1:]:
        if spec.unit == isa.Unit.SYS and f.name in ("wait", "release"):
            continue
        if f.signed:
            out[f.name] = -1 - rng.getrandbits(f.bits - 1) // 2
        else:
            out[f.name] = rng.getrandbits(f.bits) | 1
    return out


def header() -> dict[str, Any]:
    return {
        "isa_version": isa.ISA_VERSION,
        "preset": "golden",
        "preset_digest": "0" * 64,
        "model": "golden",
        "plan": "golden",
        "max_len": 1,
    }


def main() -> int:
    v = isa.ISA_VERSION
    js, hwp = DATA / f"v{v}.json", DATA / f"v{v}.hwp"
    if js.exists() or hwp.exists():
        print(
            f"{js.name} exists: the golden files of ISA version {v} are frozen; if the encoding "
            "changed, bump ISA_VERSION in hwflow/isa.py first",
            file=sys.stderr,
        )
        return 2
    golden = []
    for s in sorted(isa.OPCODES, key=lambda s: s.code):  # by code: END (31) ends the program
        vals = _values(s)
        golden.append({"op": s.name, "values": vals, "words": isa.encode(isa.make(s.name, **vals))})
    instrs = tuple(isa.make(g["op"], **g["values"]) for g in golden)
    prog = isa.Program(
        header(),
        (isa.Region("golden", 0, 4096, "weights"),),
        (isa.Template("prefill", 1, 1, instrs, {"golden": True}),),
    )
    DATA.mkdir(parents=True, exist_ok=True)
    doc = {"isa_version": v, "opcodes": table(), "golden": golden}
    js.write_text(json.dumps(doc, indent=1) + "\n")
    hwp.write_bytes(prog.to_bytes())
    print(f"wrote {js} and {hwp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
