"""Arithmetic pieces of the SFU: the numerics contract's integer steps as Amaranth logic.

Each helper mirrors one function of :mod:`hwflow.numerics` (named in its docstring) for the
operand widths the SFU meets; the bench compares the whole unit with the contract itself.
:class:`Scalar` is the per-row scalar engine: a restoring divider and a digit-by-digit square
root, ``steps`` result bits per cycle.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hwflow.numerics import ROW_MULT_BITS

__all__ = ["Scalar", "bit_length", "clamp", "round_shift", "row_factor", "wire"]


def round_shift(x: Value, s: Value | int) -> Value:
    """numerics.round_shift for a non-negative shift: ``(x + 2**(s-1)) >> s``, x unchanged at 0."""
    if isinstance(s, int):
        return x if s == 0 else (x + (1 << (s - 1))) >> s
    half = (Const(1, 1) << s) >> 1
    return (x + half) >> s


def wire(m: Module, v: Value, name: str) -> Signal:
    """``v`` through a named wire, so expressions using it several times share it."""
    s = Signal.like(v, name=name)
    m.d.comb += s.eq(v)
    return s


def clamp(m: Module, x: Value, lo: int, hi: int) -> Value:
    """``min(max(x, lo), hi)`` (numerics.saturate's clip)."""
    x = wire(m, x, "clamp_in")
    return Mux(x < lo, lo, Mux(x > hi, hi, x))


def bit_length(m: Module, v: Value, name: str) -> Signal:
    """Python's ``int.bit_length`` of an unsigned value (a priority encoder)."""
    b = Signal(range(len(v) + 1), name=name)
    m.d.comb += b.eq(0)
    for i in range(len(v)):
        with m.If(v[i]):
            m.d.comb += b.eq(i + 1)
    return b


def row_factor(m: Module, v: Value, name: str) -> tuple[Signal, Signal]:
    """numerics.row_factor of one positive value: ``v ~= mant * 2**-exp``, mant 15 bits."""
    vv = Signal(len(v), name=f"{name}_v")
    m.d.comb += vv.eq(Mux(v == 0, 1, v))
    b = bit_length(m, vv, f"{name}_b")
    rnd = Signal(len(v) + 1, name=f"{name}_r")
    sh = Signal(range(len(v) + 1), name=f"{name}_s")
    with m.If(b > ROW_MULT_BITS):
        m.d.comb += [sh.eq(b - ROW_MULT_BITS), rnd.eq(round_shift(vv, sh))]
    with m.Else():
        m.d.comb += [sh.eq(ROW_MULT_BITS - b), rnd.eq(vv << sh)]
    over = rnd[ROW_MULT_BITS:].any()
    mant = Signal(ROW_MULT_BITS + 1, name=f"{name}_m")
    exp = Signal(signed(10), name=f"{name}_e")
    m.d.comb += [
        mant.eq(Mux(over, rnd >> 1, rnd)),
        exp.eq(ROW_MULT_BITS - b - over),
    ]
    return mant, exp


class Scalar(wiring.Component):
    """Per-row scalar engine: ``q = a // d`` (``sqrt`` 0) or ``q = isqrt(a)`` (``sqrt`` 1).

    Restoring division over ``num_bits`` numerator bits, or (``roots``) the digit-by-digit
    root over ``num_bits // 2`` result bits, ``steps`` bits per cycle: :func:`scalar_cycles`
    cycles from ``start`` to ``done``. ``done`` pulses with ``q``/``rem`` valid until the next
    ``start``.
    """

    def __init__(
        self, num_bits: int = 80, den_bits: int = 48, steps: int = 8, roots: bool = True
    ) -> None:
        if num_bits % (2 * steps if roots else steps):
            raise ValueError(f"num_bits {num_bits!r} must be a multiple of the bits per cycle")
        self.nb, self.db, self.steps, self.roots = num_bits, den_bits, steps, roots
        super().__init__(
            {
                "start": In(1),
                "sqrt": In(1),
                "a": In(num_bits),
                "d": In(den_bits),
                "q": Out(num_bits),
                "rem": Out(den_bits),
                "done": Out(1),
                "busy": Out(1),
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        nsh = Signal(self.nb)
        self.rw = max(self.db + 1, self.nb // 2 + 4)
        rem = Signal(self.rw)
        quo = Signal(self.nb)
        mode = Signal()
        cnt = Signal(range(self.nb // self.steps + 1))
        dv = Signal(self.db)
        m.d.comb += [self.q.eq(quo), self.rem.eq(rem), self.busy.eq(cnt != 0)]
        with m.If(self.start):
            m.d.sync += [
                nsh.eq(self.a),
                rem.eq(0),
                quo.eq(0),
                self.done.eq(0),
                mode.eq(self.sqrt),
                dv.eq(self.d),
                cnt.eq(
                    Mux(self.sqrt & self.roots, self.nb // 2 // self.steps, self.nb // self.steps)
                ),
            ]
        with m.Elif(cnt != 0):
            dn, dr, dq = self._div_steps(m, nsh, rem, quo, dv)
            sn, sr, sq = self._sqrt_steps(m, nsh, rem, quo) if self.roots else (dn, dr, dq)
            m.d.sync += [
                nsh.eq(Mux(mode, sn, dn)),
                rem.eq(Mux(mode, sr, dr)),
                quo.eq(Mux(mode, sq, dq)),
                cnt.eq(cnt - 1),
            ]
            m.d.sync += self.done.eq(cnt == 1)
        with m.Else():
            m.d.sync += self.done.eq(0)
        return m

    def _div_steps(
        self, m: Module, nsh: Value, rem: Value, quo: Value, d: Value
    ) -> tuple[Value, ...]:
        """``steps`` restoring-division steps: shift a numerator bit in, subtract if it fits."""
        for k in range(self.steps):
            r2 = Signal(self.db + 1, name=f"div_r{k}")
            m.d.comb += r2.eq(Cat(nsh[-1], rem[: self.db]))
            ge = r2 >= d
            rem = Mux(ge, r2 - d, r2)[: self.db + 1]
            quo = Cat(ge, quo[:-1])
            nsh = Cat(Const(0, 1), nsh[:-1])
        return nsh, rem, quo

    def _sqrt_steps(self, m: Module, nsh: Value, rem: Value, res: Value) -> tuple[Value, ...]:
        """``steps`` digit-by-digit root steps: two radicand bits in, one root bit out."""
        width = self.rw
        for k in range(self.steps):
            r2 = Signal(width, name=f"sqrt_r{k}")
            m.d.comb += r2.eq(Cat(nsh[-2:], rem[: width - 2]))
            trial = Cat(Const(1, 2), res[: width - 2])
            ge = r2 >= trial
            rem = Mux(ge, r2 - trial, r2)[:width]
            res = Cat(ge, res[:-1])
            nsh = Cat(Const(0, 2), nsh[:-2])
        return nsh, rem, res
