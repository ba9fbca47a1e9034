"""The numerics contract's rounding shift and saturation as combinational Amaranth logic, for
the matmul unit's two-stage requantization (:func:`hwflow.numerics.linear_out`,
:func:`hwflow.numerics.requantize`)."""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, Value, signed, unsigned

from hwflow.numerics import ACT_MIN

__all__ = ["LEFT_MAX", "round_shift", "saturate"]

#: Largest left shift computed exactly: every result is saturated to at most 32 bits next, so
#: a nonzero value shifted left by 33 or more saturates whatever the exact shift.
LEFT_MAX = 33


def round_shift(m: Module, x: Value, s: Value, name: str) -> Signal:
    """:func:`hwflow.numerics.round_shift`: ``(x + 2**(s-1)) >> s`` for ``s > 0`` (round half
    up), ``x`` for 0, ``x << -s`` for ``s < 0`` (exact up to :data:`LEFT_MAX`). ``x`` and
    ``s`` signed. A right shift of ``len(x)`` or more gives 0 (``|x| < 2**(len(x)-1)``), so
    the amount is clamped there."""
    xw = len(x)
    sr = Signal(range(xw + 1), name=f"{name}_sr")
    sl = Signal(range(LEFT_MAX + 1), name=f"{name}_sl")
    with m.If(s[-1]):  # negative: left
        m.d.comb += sl.eq(Mux(-s > LEFT_MAX, LEFT_MAX, -s))
    with m.Else():
        m.d.comb += sr.eq(Mux(s > xw, xw, s))
    one = Const(1, unsigned(xw + 1))
    half = Signal(unsigned(xw + 1), name=f"{name}_half")
    m.d.comb += half.eq(Mux(sr.any(), one << (sr - 1)[: len(sr)], 0))
    out = Signal(signed(xw + LEFT_MAX + 2), name=name)
    xs = x.as_signed()
    m.d.comb += out.eq(Mux(s[-1], xs << sl, (xs + half) >> sr))
    return out


def saturate(x: Value, bits: int) -> Value:
    """:func:`hwflow.numerics.saturate` to ``bits`` (8: the symmetric -127..127)."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if bits == 8:
        lo = ACT_MIN
    return Mux(x > hi, hi, Mux(x < lo, lo, x))
