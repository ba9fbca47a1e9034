"""Hierarchical Verilog: each distinct module converted once, instantiated N times.

Amaranth emits one Verilog module per *instance* (it never deduplicates identical
submodules), so an engine of 128 identical chains costs 128 conversions and 128 copies of the
chain in the output. :class:`Hierarchy` avoids that: a parent places a leaf component with
:meth:`Hierarchy.place`, which converts the leaf to Verilog once per module name and puts an
:class:`~amaranth.hdl.Instance` of that module in the parent, wired to the leaf component's
own port signals (the leaf object is then only a bundle of wires the parent drives and reads).
Without a hierarchy (``None``: Amaranth's simulator, which cannot run Instances) the same call
adds the leaf as an ordinary submodule, so one elaboration serves both.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from amaranth.back import verilog
from amaranth.hdl import ClockSignal, Instance, Module, ResetSignal
from amaranth.lib import wiring

from hwflow.hw.machine.verilog import fast_generation

__all__ = ["Hierarchy", "place"]

_PORT = re.compile(r"^\s*(input|output)\s+(?:signed\s+)?(?:\[\d+:\d+\]\s+)?(\\?\S+)\s*;", re.M)
_TOP_ATTR = re.compile(r"^\(\* top = +1 +\*\)\n", re.M)


@dataclass
class _Leaf:
    text: str
    ports: frozenset[str]
    instances: int = 0
    seconds: float = 0.0


@dataclass
class Hierarchy:
    """The distinct leaf modules of one design, their Verilog and instance counts."""

    leaves: dict[str, _Leaf] = field(default_factory=dict)

    def instance(
        self, name: str, comp: wiring.Component, make: Callable[[], wiring.Component]
    ) -> Instance:
        """An Instance of module ``name`` wired to ``comp``'s ports; ``make()`` builds a fresh
        component of the same module, converted the first time ``name`` is seen."""
        leaf = self.leaves.get(name)
        if leaf is None:
            t0 = time.perf_counter()
            with fast_generation():
                text = verilog.convert(make(), name=name, emit_src=False)
            text = _TOP_ATTR.sub("", text)  # only the design's top carries (* top *)
            ports = frozenset(m.group(2) for m in _PORT.finditer(text))
            leaf = self.leaves[name] = _Leaf(text, ports, seconds=time.perf_counter() - t0)
        leaf.instances += 1
        comp._MustUse__silence = True  # a bundle of wires: never elaborated itself
        conns: dict[str, object] = {}
        if "clk" in leaf.ports:
            conns["i_clk"] = ClockSignal("sync")
        if "rst" in leaf.ports:
            conns["i_rst"] = ResetSignal("sync")
        for path, member, value in comp.signature.flatten(comp):
            port = "__".join(str(x) for x in path)
            if port not in leaf.ports:
                raise AssertionError(f"module {name} has no port {port}")
            conns[("i_" if member.flow == wiring.In else "o_") + port] = value
        return Instance(name, **conns)

    def verbatim(self, name: str, path: Path) -> None:
        """Include the hand-written module ``name`` (from ``path``, e.g. a RAM of rtl/) once,
        and count one more instance of it (the caller builds the Instance)."""
        leaf = self.leaves.get(name)
        if leaf is None:
            leaf = self.leaves[name] = _Leaf(path.read_text(), frozenset())
        leaf.instances += 1

    def verilog(self) -> str:
        """Every leaf module's Verilog, in first-use order."""
        return "".join(leaf.text for leaf in self.leaves.values())

    def counts(self) -> dict[str, int]:
        """Instances of each leaf module."""
        return {name: leaf.instances for name, leaf in self.leaves.items()}


def place(
    m: Module,
    hier: Hierarchy | None,
    sub: str,
    module: str,
    make: Callable[[], wiring.Component],
) -> wiring.Component:
    """Add a leaf built by ``make`` to ``m`` as submodule ``sub`` (an Instance of Verilog
    module ``module`` when ``hier`` is given); returns the component whose ports to wire."""
    comp = make()
    m.submodules[sub] = comp if hier is None else hier.instance(module, comp, make)
    return comp
