"""Instruction layouts of the RTL machine, generated from the ISA's one field table.

Two views of an instruction, both derived from :data:`hwflow.isa.OPCODES` (no second copy of a
field list):

* :func:`raw_layout` of an opcode: the encoded bit stream as an Amaranth ``StructLayout``.
  The ISA encodes an instruction's fields LSB first in table order and ``StructLayout`` places
  its members LSB first in declaration order, so the concatenated little-endian words of an
  instruction, viewed through this layout, *are* its fields.
* :func:`cmd_layout` of a unit: what the dispatcher hands that unit's queue once SYS has
  resolved the register-modified fields as :func:`hwflow.isa.expand` does (``add``: field +
  R[reg]; ``clamp``: clamp(R[reg], 0, field), the field itself when reg = 0). The header
  (opcode, wait, release) and the register selectors are gone: tokens are handled by the queue
  front end, the register values are folded in. A resolved field keeps its encoded width:
  programs the compiler accepts never resolve to a value outside it.

SYNC.<unit> instructions carry tokens only; they never reach a unit (the queue front end
retires them), so a unit's command layout is the layout of its one executing opcode.
"""

from __future__ import annotations

from functools import cache

from amaranth.hdl import signed, unsigned
from amaranth.lib import data

from hwflow.isa import LINK_OPS, OPCODES, OpSpec, Unit

__all__ = [
    "HEADER_BITS",
    "MACHINE_OPCODES",
    "MAX_INSTR_BITS",
    "cmd_layout",
    "executing_op",
    "raw_layout",
    "register_fields",
]

#: The opcodes of the single-board machine: every opcode but the board-to-board links
#: (:data:`hwflow.isa.LINK_OPS`), which the dispatcher refuses like an unknown opcode.
MACHINE_OPCODES = tuple(s for s in OPCODES if s.name not in LINK_OPS)
#: opcode (6) + wait (5) + release (5): the header every layout starts with.
HEADER_BITS = sum(f.bits for f in OPCODES[0].fields[:3])
#: The widest instruction, in bits (a queue entry / fetch assembly register holds one).
MAX_INSTR_BITS = max(32 * s.words for s in MACHINE_OPCODES)


def raw_layout(spec: OpSpec) -> data.StructLayout:
    """The encoded instruction ``spec`` as a struct, padded to whole 32-bit words."""
    members = {f.name: (signed if f.signed else unsigned)(f.bits) for f in spec.fields}
    pad = 32 * spec.words - spec.bits
    if pad:
        members["_pad"] = unsigned(pad)
    return data.StructLayout(members)


def register_fields(spec: OpSpec) -> frozenset[str]:
    """The register-selector fields of ``spec`` (``*_reg``): consumed by the dispatcher."""
    return frozenset(f.dyn[1] for f in spec.fields if f.dyn)


@cache
def executing_op(unit: Unit) -> OpSpec:
    """The one opcode a token unit executes (SYNC.<unit> aside)."""
    ops = [s for s in MACHINE_OPCODES if s.unit == unit and not s.name.startswith("SYNC")]
    if len(ops) != 1:
        raise ValueError(f"unit {unit.name}: expected one executing opcode, found {len(ops)}")
    return ops[0]


@cache
def cmd_layout(unit: Unit) -> data.StructLayout:
    """The resolved command the dispatcher pushes to ``unit``'s queue (see module doc)."""
    spec = executing_op(unit)
    regs = register_fields(spec)
    return data.StructLayout(
        {
            f.name: (signed if f.signed else unsigned)(f.bits)
            for f in spec.fields[3:]
            if f.name not in regs
        }
    )
