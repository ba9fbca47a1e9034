"""hwflow.hw.machine.combcheck: the linear combinational-cycle check finds the cycles
Amaranth's own check finds, with the same message, and passes designs without one."""

from __future__ import annotations

import pytest
from amaranth.back import rtlil
from amaranth.hdl import Cat, Module, Signal
from amaranth.hdl._nir import CombinationalCycle

from hwflow.hw.machine.combcheck import fast_comb_check


def _adder_loop() -> tuple[Module, list]:
    """A 64-bit adder fed by its own output (a whole-input cell on the cycle)."""
    m = Module()
    a, b = Signal(64), Signal(64)
    m.d.comb += a.eq(b + 1)
    m.d.comb += b.eq(Cat(a[:32], Signal(32)))
    return m, [a]


def _bitwise_loop() -> tuple[Module, list]:
    """Bit 5 of ``x`` depends on bit 5 of ``y`` through ``&``, which depends on ``x``."""
    m = Module()
    x, y, z = Signal(8), Signal(8), Signal(8)
    m.d.comb += [x.eq(y & z), y.eq(x | 3)]
    return m, [x, z]


def _switch_loop() -> tuple[Module, list]:
    """A ``Switch`` (a priority match) whose selector is its own result."""
    m = Module()
    sel, o = Signal(4), Signal(8)
    with m.Switch(sel):
        for k in range(6):
            with m.Case(k):
                m.d.comb += o.eq(k + 1)
    m.d.comb += sel.eq(o[:4])
    return m, [o]


def _no_loop() -> tuple[Module, list]:
    """Wide adders, a shift and a registered feedback, but no combinational cycle."""
    m = Module()
    a, b, r = Signal(256), Signal(256), Signal(256)
    m.d.comb += [a.eq(r + 5), b.eq((a << 3)[:256] ^ a)]
    m.d.sync += r.eq(b)
    o = Signal(8)
    with m.Switch(r[:4]):
        for k in range(6):
            with m.Case(k):
                m.d.comb += o.eq(a[k : k + 8])
    return m, [b, o]


def _message(design: tuple[Module, list]) -> str:
    with pytest.raises(CombinationalCycle) as e:
        rtlil.convert(design[0], ports=design[1])
    return str(e.value)


@pytest.mark.parametrize("make", [_adder_loop, _bitwise_loop, _switch_loop])
def test_finds_the_cycles_amaranth_finds(make) -> None:
    plain = _message(make())
    with fast_comb_check():
        fast = _message(make())
    assert "Combinational cycle detected" in fast
    assert fast == plain


def test_passes_a_design_without_a_cycle() -> None:
    with fast_comb_check():
        m, ports = _no_loop()
        text = rtlil.convert(m, ports=ports)
    assert "$add" in text
