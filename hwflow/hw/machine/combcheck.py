"""A faster equivalent of Amaranth's combinational-cycle check, for large designs.

Amaranth 0.5's :meth:`amaranth.hdl._nir.Netlist.check_comb_cycles` walks the netlist bit by
bit: an output bit of an operator whose every output bit depends on every input bit (``+``,
``<``, shifts, ``Part``, ``Matches``, a memory's asynchronous read port...) visits all its
input bits again, so a ``w``-bit such cell costs ``w * 2w`` steps. On the machine's 1024-bit
buffer words (the realigners' 2048-bit windows, the units' wide adders) that quadratic walk
was most of the time Amaranth spent on the machine's Verilog (``hwflow.hw.cosim``).

:func:`check_comb_cycles` is the same depth-first search with one shortcut: once one output
bit of such a *whole-input* cell has been checked (all its input bits are then checked and
none lies on a cycle), every other output bit of that cell is checked at once, since it has
exactly the same inputs; and a priority match (one per ``Switch``: bit b depends on inputs
0..b) walks only the new input of a bit whose lower neighbour is checked. Cells whose bits
depend on single input bits (``~``, ``&``, ``|``, ``^``, the multiplexer, assignment lists)
are walked as before. It raises
the same :class:`~amaranth.hdl._nir.CombinationalCycle` with the same path message.
:func:`fast_comb_check` installs it while generating Verilog.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from amaranth.hdl import _ast, _nir

__all__ = ["check_comb_cycles", "fast_comb_check"]

_BITWISE = frozenset({"~", "&", "|", "^", "m"})


def _whole_input(cell: Any) -> bool:
    """Whether every output bit of ``cell`` has the same combinational inputs."""
    if isinstance(cell, _nir.Operator):
        return cell.operator not in _BITWISE
    return isinstance(cell, _nir.Part | _nir.Matches | _nir.AsyncReadPort | _nir.FlipFlop)


def _edges(cell: Any, net: Any, checked: set) -> Any:
    """The combinational inputs of output ``net`` of ``cell`` still worth walking: a priority
    match's bit b depends on its enable and input bits 0..b, so once bit b - 1 is checked
    only the enable and input bit b are left (the rest are checked)."""
    b = net & 0xFFFF  # the net's bit (a cell's net is cell << 16 | bit)
    if isinstance(cell, _nir.PriorityMatch) and b and net - 1 in checked:
        return ((cell.en, cell.src_loc), (cell.inputs[b], cell.src_loc))
    return cell.comb_edges_to(b)


def _cycle_message(path: list) -> str:
    msg = ["Combinational cycle detected, path:\n"]
    for obj, bit, src_loc in reversed(path):
        if isinstance(obj, _ast.Signal):
            obj = f"signal {obj.name}"
        elif isinstance(obj, _nir.Operator):
            obj = f"operator {obj.operator}"
        else:
            obj = f"cell {obj.__class__.__qualname__}"
        src_loc = "<unknown>:0" if src_loc is None else f"{src_loc[0]}:{src_loc[1]}"
        msg.append(f"  {src_loc}: {obj} bit {bit}\n")
    return "".join(msg)


class _Cycle:
    def __init__(self, start: Any) -> None:
        self.start = start
        self.path: list = []


def check_comb_cycles(self: Any) -> None:
    """:meth:`Netlist.check_comb_cycles` with the whole-input shortcut (module doc)."""
    checked: set = set()
    busy: set = set()
    whole = [_whole_input(c) for c in self.cells]
    whole_done: set[int] = set()  # whole-input cells with one output bit checked

    cells, connections = self.cells, self.connections

    def traverse(net: Any) -> _Cycle | None:
        # nets are ints: < 0 late (a signal's bit), 0 / 1 constants, else cell << 16 | bit
        if net in checked:
            return None
        if net in busy:
            return _Cycle(net)
        cell_idx = net >> 16 if net >= 2 else -1
        if cell_idx in whole_done:
            checked.add(net)
            return None
        busy.add(net)
        cycle = None
        if net < 0:
            cycle = traverse(connections[net])
            if cycle is not None:
                sig, bit = self.late_to_signal[net]
                cycle.path.append((sig, bit, sig.src_loc))
        elif cell_idx >= 0:
            cell = cells[cell_idx]
            for src, src_loc in _edges(cell, net, checked):
                cycle = traverse(src)
                if cycle is not None:
                    cycle.path.append((cell, net & 0xFFFF, src_loc))
                    break
        if cycle is not None and cycle.start == net:
            raise _nir.CombinationalCycle(_cycle_message(cycle.path))
        busy.remove(net)
        checked.add(net)
        if cycle is None and cell_idx >= 0 and whole[cell_idx]:
            whole_done.add(cell_idx)
        return cycle

    for cell_idx, cell in enumerate(self.cells):
        for net in cell.output_nets(cell_idx):
            assert traverse(net) is None
    for value in self.signals.values():
        for net in value:
            assert traverse(net) is None


@contextlib.contextmanager
def fast_comb_check() -> Iterator[None]:
    """While active, Amaranth's netlist builder uses :func:`check_comb_cycles`."""
    plain = _nir.Netlist.check_comb_cycles
    _nir.Netlist.check_comb_cycles = check_comb_cycles  # type: ignore[method-assign]
    try:
        yield
    finally:
        _nir.Netlist.check_comb_cycles = plain  # type: ignore[method-assign]
