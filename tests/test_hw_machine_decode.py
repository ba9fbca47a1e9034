"""The RTL machine's instruction layouts agree with the ISA's encoder, field by field."""

from __future__ import annotations

import random

import pytest
from amaranth.lib import data

from hwflow.hw.machine.decode import (
    MACHINE_OPCODES,
    MAX_INSTR_BITS,
    cmd_layout,
    raw_layout,
    register_fields,
)
from hwflow.isa import OPCODES, TOKEN_UNITS, Unit, encode, make


def _random_fields(spec, rng: random.Random) -> dict[str, int]:
    out = {}
    for f in spec.fields[1:]:
        if spec.unit == Unit.SYS and f.name in ("wait", "release"):
            out[f.name] = 0
        elif f.signed:
            out[f.name] = rng.randrange(-(1 << (f.bits - 1)), 1 << (f.bits - 1))
        else:
            out[f.name] = rng.randrange(1 << f.bits)
    return out


@pytest.mark.parametrize("spec", OPCODES, ids=lambda s: s.name)
def test_raw_layout_reads_the_encoded_fields(spec) -> None:
    rng = random.Random(spec.code)
    for _ in range(20):
        vals = _random_fields(spec, rng)
        words = encode(make(spec.name, **vals))
        bits = sum(w << (32 * i) for i, w in enumerate(words))
        view = data.Const(raw_layout(spec), bits)
        assert view.opcode == spec.code
        for name, v in vals.items():
            assert view[name] == v, name
        assert raw_layout(spec).size <= MAX_INSTR_BITS


@pytest.mark.parametrize("unit", TOKEN_UNITS, ids=lambda u: u.name)
def test_cmd_layout_drops_header_and_register_selectors(unit) -> None:
    members = set(cmd_layout(unit).members)
    assert not members & {"opcode", "wait", "release"}
    for spec in MACHINE_OPCODES:  # the link opcodes are not the single-board machine's
        if spec.unit == unit and not spec.name.startswith("SYNC"):
            assert not members & register_fields(spec)
            assert members == {f.name for f in spec.fields[3:]} - register_fields(spec)
