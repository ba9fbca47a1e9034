"""Faster netlist building in Amaranth 0.5, for designs with wide datapaths.

Two costs made most of the tiny machine's Verilog generation (299 s of 300 at load ~5):

* **Shared expressions copied per use.** Before building the netlist Amaranth lowers every
  statement (``_xfrm.DomainLowerer``), which rebuilds each expression tree, so a Python
  expression the design uses in n places becomes n distinct trees, each turned into cells of
  its own (the MM unit's write combiner slices one 383-bit shift for each of its byte
  enables: 4,121 copies of that shifter, 8,900 lines of Verilog; 575 lines once shared).
  :func:`_lower_value` lowers each expression object once (per domain map), so every use
  refers to the same lowered tree and the netlist has it once, as the design wrote it.
* **Per-bit bookkeeping.** A value is a tuple of nets, and every time one is built
  (:class:`_nir.Value`) Amaranth checks each net's type with a Python call (``Net.ensure``,
  an ``assert``); a cell's output nets are made by one ``Net.from_cell`` call per bit, late
  nets likewise, and resolving them runs a property per bit (65 million checked nets for the
  tiny machine). The replacements build the same tuples of the same nets without the per-bit
  Python calls (what the ``assert`` s check holds by construction; a net index past 16 bits,
  the one check with a user-facing cause, is still refused).

:func:`fast_nir` installs both. Without shared expressions the Verilog is the same text;
``tests/test_fastnir.py`` compares it for a design with every kind of cell the machine uses,
and checks that a shared expression is built once. Only the Amaranth releases the functions
were checked against are patched (:data:`CHECKED_VERSIONS`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import amaranth
from amaranth.hdl import _nir, _xfrm

__all__ = ["fast_nir"]

_Net = _nir.Net
_tuple_new = tuple.__new__


def _value_new(cls: type, nets: Any = ()) -> Any:
    """``_nir.Value(nets)`` without the per-net type check."""
    if isinstance(nets, _Net):
        return _tuple_new(cls, (nets,))
    return _tuple_new(cls, nets)


def _cell_nets(cell_idx: int, width: int) -> Iterable[Any]:
    """The output nets of cell ``cell_idx`` (bits 0 .. width - 1), as ``Net.from_cell``."""
    if width > 1 << 16:
        raise AssertionError(f"a cell of {width} bits exceeds the netlist's 65,536-bit limit")
    base = cell_idx << 16
    return map(_Net, range(base, base + width))


def _from_cell(cls: type, cell: int, bit: int) -> Any:
    """``Net.from_cell`` with its checks as plain comparisons (no ``range`` built per call)."""
    if bit >> 16 or cell < 0 or (cell == 0 and bit < 2):
        raise AssertionError(f"no net {bit} of cell {cell} (a cell has at most 65,536 bits)")
    return cls((cell << 16) | bit)


def _alloc_late_value(self: Any, signal: Any) -> Any:
    """``Netlist.alloc_late_value``: ``len(signal)`` new late (negative) nets for ``signal``."""
    width = len(signal)
    self.last_late_net -= width
    value = _value_new(_nir.Value, map(_Net, range(self.last_late_net, self.last_late_net + width)))
    late = self.late_to_signal
    for bit, net in enumerate(value):
        late[net] = signal, bit
    return value


def _add_value_cell(self: Any, width: int, cell: Any) -> Any:
    """``Netlist.add_value_cell``: add ``cell``, return its output nets."""
    return _value_new(_nir.Value, _cell_nets(self.add_cell(cell), width))


def _operator_output_nets(self: Any, self_idx: int) -> set:
    """``Operator.output_nets``."""
    return set(_cell_nets(self_idx, self.width))


def _resolve_value(self: Any, value: Any) -> Any:
    """``Netlist.resolve_value``: follow each late net (negative) to its driver."""
    conns = self.connections
    out = []
    for net in value:
        while net < 0:
            net = conns[net]
        out.append(net)
    return _tuple_new(_nir.Value, out)


def _lower_value(self: Any, value: Any) -> Any:
    """``DomainLowerer.on_value`` once per value object (and domain map): the lowered copy of
    an expression the design uses in several places stays one object, so it is built once."""
    memo = self.__dict__.setdefault("_hwflow_memo", {})
    key = (id(value), id(self.domains))
    hit = memo.get(key)
    if hit is None:
        hit = memo[key] = (value, self.domains, _plain_on_value(self, value))
    return hit[2]


_plain_on_value = _xfrm.ValueVisitor.on_value

_PATCHES = (
    (_nir.Value, "__new__", _value_new),
    (_nir.Net, "from_cell", _from_cell),
    (_nir.Netlist, "alloc_late_value", _alloc_late_value),
    (_nir.Netlist, "add_value_cell", _add_value_cell),
    (_nir.Operator, "output_nets", _operator_output_nets),
    (_nir.Netlist, "resolve_value", _resolve_value),
    (_xfrm.DomainLowerer, "on_value", _lower_value),
)


def _wrap(name: str, fn: Any) -> Any:
    """``fn`` as the kind of attribute ``name`` is (``__new__`` static, ``from_cell`` a class
    method)."""
    if name == "__new__":
        return staticmethod(fn)
    return classmethod(fn) if name == "from_cell" else fn


#: The Amaranth releases whose netlist builder these functions were checked against.
CHECKED_VERSIONS = ("0.5.",)


@contextlib.contextmanager
def fast_nir() -> Iterator[None]:
    """While active, Amaranth's netlist builder uses the functions above (module doc); a no-op
    on another Amaranth (it then generates as it does, slower)."""
    checked = amaranth.__version__.startswith(CHECKED_VERSIONS)
    if not checked or not all(hasattr(owner, name) for owner, name, _ in _PATCHES):
        yield
        return
    plain = [(owner, name, owner.__dict__.get(name)) for owner, name, _ in _PATCHES]
    try:
        for owner, name, fn in _PATCHES:
            setattr(owner, name, _wrap(name, fn))
        yield
    finally:
        for owner, name, fn in plain:
            if fn is None:  # inherited: drop the override
                delattr(owner, name)
            else:
                setattr(owner, name, fn)
