"""One SFU lane: the element-wise arithmetic of every SFU function (numerics contract).

Each function takes one element (and the row's registers) and returns Amaranth values; the
unit instantiates them once per lane. Table lookups go through comb read ports of ROMs whose
contents are :func:`hwflow.numerics.sigmoid_table` and :func:`hwflow.numerics.exp2_table`.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Value
from amaranth.lib.memory import Memory

from hwflow.hw.machine.sfu_math import clamp, round_shift, wire
from hwflow.numerics import (
    ACT_MIN,
    EXP2_FRAC,
    GATE_BITS,
    NORM_IN_BITS,
    P_MAX,
    QROW_SHIFT,
    RESIDUAL_BITS,
    ROPE_FRAC,
    SIG_HALF,
    exp2_table,
    sigmoid_table,
)

__all__ = [
    "add_lane",
    "exp2_rom",
    "norm_lane",
    "quant_lane",
    "rope_lane",
    "sigmoid_rom",
    "silu_lane",
    "softmax_lane",
]

_I8 = (ACT_MIN, 127)


def _rom(table: list[int]) -> Memory:
    width = max(int(v) for v in table).bit_length()
    return Memory(shape=width, depth=len(table), init=[int(v) for v in table])


def sigmoid_rom() -> Memory:
    """The Q15 sigmoid table of :func:`hwflow.numerics.silu_int16` as a ROM."""
    return _rom(list(sigmoid_table()))


def exp2_rom() -> Memory:
    """The Q15 ``2**(-i/256)`` table of :func:`hwflow.numerics.softmax_rows` as a ROM."""
    return _rom(list(exp2_table()))


def norm_lane(
    m: Module,
    x: Value,
    pre: Value,
    center: Value,
    d: Value,
    cshift: Value,
    sxr: Value,
    gamma: Value,
) -> tuple[Value, Value, Value]:
    """numerics.norm_rows per element: ``xr`` (pre-shifted, saturated), ``xc`` (centred for
    LayerNorm with the row sum ``sxr``), ``y = xc * gamma``."""
    lim = 1 << NORM_IN_BITS
    xr = wire(m, clamp(m, round_shift(x, pre), -lim, lim - 1), "norm_xr")
    xc = wire(m, Mux(center, round_shift(d * xr - sxr, cshift), xr), "norm_xc")
    return xr, xc, wire(m, xc * gamma, "norm_y")


def quant_lane(m: Module, v: Value, recip: Value) -> Value:
    """numerics.quant_rows per element: ``sat8(round_shift(v * recip, 46))``."""
    return clamp(m, round_shift(v * recip, QROW_SHIFT), *_I8)


def softmax_lane(m: Module, z: Value, mx: Value, rom: Memory) -> Value:
    """numerics.softmax_rows per kept element: the UINT8 numerator of ``d = mx - z``."""
    rp = rom.read_port(domain="comb")
    d = wire(m, (mx - z).as_unsigned()[:33], "sm_d")
    m.d.comb += rp.addr.eq(d[:8])
    sh = d[8:]
    e = wire(m, rp.data >> Mux(sh > 31, 31, sh[:5]), "sm_e")
    return (P_MAX * e + (1 << (EXP2_FRAC - 1))) >> EXP2_FRAC


def silu_lane(m: Module, g: Value, mult: Value, shift: Value, rom: Memory) -> Value:
    """numerics.silu_int16 per element (``shift`` 0..63)."""
    rp = rom.read_port(domain="comb")
    i = wire(m, clamp(m, round_shift(g * mult, shift), -SIG_HALF, SIG_HALF - 1) + SIG_HALF, "si_i")
    m.d.comb += rp.addr.eq(i[: (2 * SIG_HALF - 1).bit_length()])
    lim = 1 << (GATE_BITS - 1)
    return clamp(m, round_shift(g * rp.data, 15), -lim, lim - 1)


def rope_lane(
    m: Module, x0: Value, x1: Value, c: Value, s: Value, second: Value, bits: int = 8
) -> Value:
    """numerics.rope_int per element: ``x0`` this half's element, ``x1`` its partner;
    first half ``x0*c - x1*s``, second half ``x0*c + x1*s``, saturated to ``bits`` (8, or 16
    for rotated keys)."""
    t = Mux(second, x0 * c + x1 * s, x0 * c - x1 * s)
    lim = 1 << (bits - 1)
    return clamp(m, round_shift(t, ROPE_FRAC), *(_I8 if bits == 8 else (-lim, lim - 1)))


def add_lane(m: Module, a: Value, b: Value) -> Value:
    """numerics.add_residual per element: ``sat32(a + b)``."""
    lim = 1 << (RESIDUAL_BITS - 1)
    return clamp(m, a + b, -lim, lim - 1)
