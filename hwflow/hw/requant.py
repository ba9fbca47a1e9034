"""The requantization unit: the numerics contract in three register stages.

``out = saturate_int8(round_shift((acc + bias) * mult, shift))`` exactly as
:func:`hwflow.numerics.requantize` (round half up: add ``2**(shift-1)``, arithmetic shift),
with ``mult`` 15-bit unsigned and ``shift`` 0..47. With ``raw`` the accumulator passes through
unchanged (the LM head's logits): bias, multiplier and shift are ignored.

Stages (:data:`hwflow.costs.REQUANT_STAGES` = 3): bias add; multiply; round, shift, saturate
into the output register (which :class:`Requantizer` leaves to its user).
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hwflow.numerics import REQ_MULT_BITS, REQ_SHIFT_MAX

__all__ = ["Requantizer"]

_SHIFT_BITS = REQ_SHIFT_MAX.bit_length()


class Requantizer(wiring.Component):
    """One lane: ``acc`` (``acc_bits`` signed) -> ``out`` (``acc_bits`` signed; INT8 range
    unless ``raw``), valid two cycles later and combinational from there: the third stage's
    register is the user's (the engine's output register, which has its own flow control)."""

    def __init__(self, *, acc_bits: int) -> None:
        self.acc_bits = acc_bits
        super().__init__(
            {
                "acc": In(signed(acc_bits)),
                "bias": In(signed(32)),
                "mult": In(unsigned(REQ_MULT_BITS)),
                "shift": In(unsigned(_SHIFT_BITS)),
                "raw": In(1),
                "out": Out(signed(acc_bits)),
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        w = self.acc_bits + 1
        # stage 1: bias
        x = Signal(signed(w), reset_less=True)
        mult1 = Signal(unsigned(REQ_MULT_BITS), reset_less=True)
        shift1 = Signal(unsigned(_SHIFT_BITS), reset_less=True)
        raw1 = Signal(reset_less=True)
        m.d.sync += [
            x.eq(self.acc + Mux(self.raw, 0, self.bias)),
            mult1.eq(self.mult),
            shift1.eq(self.shift),
            raw1.eq(self.raw),
        ]
        # stage 2: multiply (raw: pass through)
        pw = w + REQ_MULT_BITS + 1
        prod = Signal(signed(pw), reset_less=True)
        shift2 = Signal(unsigned(_SHIFT_BITS), reset_less=True)
        raw2 = Signal(reset_less=True)
        m.d.sync += [
            prod.eq(Mux(raw1, x, x * mult1)),
            shift2.eq(shift1),
            raw2.eq(raw1),
        ]
        # stage 3: round half up, arithmetic shift, saturate to INT8
        half = Signal(unsigned(REQ_SHIFT_MAX), reset_less=True)
        one = Const(1, unsigned(REQ_SHIFT_MAX))
        m.d.comb += half.eq(Mux(shift2.any(), one << (shift2 - 1)[:_SHIFT_BITS], 0))
        shifted = Signal(signed(pw + 1), reset_less=True)
        m.d.comb += shifted.eq((prod + half) >> shift2)
        sat = Mux(shifted > 127, 127, Mux(shifted < -128, -128, shifted))
        m.d.comb += self.out.eq(Mux(raw2, prod, sat))
        return m
