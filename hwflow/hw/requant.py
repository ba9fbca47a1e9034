"""The requantization unit: the numerics contract in register stages.

``out = saturate_int8(round_shift((acc + bias) * mult, shift))`` exactly as
:func:`hwflow.numerics.requantize` (round half up: add ``2**(shift-1)``, arithmetic shift),
with ``mult`` 15-bit unsigned and ``shift`` 0..47. With ``raw`` the accumulator passes through
unchanged (the LM head's logits): bias, multiplier and shift are ignored.

Stages (:data:`hwflow.costs.REQUANT_STAGES` = 3): bias add; multiply; round, shift, saturate
(combinational into the engine's output FIFO).

``per_token`` (an option for the per-token activation-scale contract under discussion) adds
a second multiply by a per-row (token) ``mult_t``/``shift_t``:
``out = saturate_int8(round_shift(sat32(round_shift((acc + bias) * mult, shift)) * mult_t,
shift_t))``, two more stages (:data:`PER_TOKEN_EXTRA_STAGES`): the first rounding saturates
to INT32 into a register, then the second multiply; the final rounding stays combinational.
``mult_t``/``shift_t`` are presented with ``acc`` and carried along inside.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hwflow.numerics import ACT_MIN, REQ_MULT_BITS, REQ_SHIFT_MAX

__all__ = ["PER_TOKEN_EXTRA_STAGES", "Requantizer"]

_SHIFT_BITS = REQ_SHIFT_MAX.bit_length()
#: Register stages the per-token multiply adds (INT32 saturation register, second product).
PER_TOKEN_EXTRA_STAGES = 2


def _round_shift(m: Module, x: Value, shift: Value, width: int) -> Signal:
    """``(x + 2**(shift-1)) >> shift`` (round half up; shift 0 leaves x), combinational."""
    half = Signal(unsigned(REQ_SHIFT_MAX))
    one = Const(1, unsigned(REQ_SHIFT_MAX))
    m.d.comb += half.eq(Mux(shift.any(), one << (shift - 1)[:_SHIFT_BITS], 0))
    out = Signal(signed(width + 1))
    m.d.comb += out.eq((x + half) >> shift)
    return out


def _saturate(x: Value, bits: int) -> Value:
    """:func:`hwflow.numerics.saturate` (INT8: the symmetric -127..127)."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if bits == 8:
        lo = ACT_MIN
    return Mux(x > hi, hi, Mux(x < lo, lo, x))


class Requantizer(wiring.Component):
    """One lane: ``acc`` (``acc_bits`` signed) -> ``out`` (``acc_bits`` signed; INT8 range
    unless ``raw``), valid two cycles later (four with ``per_token``) and combinational from
    there: the last stage's register is the user's (the engine's output FIFO)."""

    def __init__(self, *, acc_bits: int, per_token: bool = False) -> None:
        self.acc_bits, self.per_token = acc_bits, per_token
        members = {
            "acc": In(signed(acc_bits)),
            "bias": In(signed(32)),
            "mult": In(unsigned(REQ_MULT_BITS)),
            "shift": In(unsigned(_SHIFT_BITS)),
            "raw": In(1),
            "out": Out(signed(acc_bits)),
        }
        if per_token:
            members["mult_t"] = In(unsigned(REQ_MULT_BITS))
            members["shift_t"] = In(unsigned(_SHIFT_BITS))
        super().__init__(members)

    def _delay(self, m: Module, sig: Value, n: int, name: str) -> Value:
        for i in range(n):
            nxt = Signal.like(sig, name=f"{name}{i + 1}", reset_less=True)
            m.d.sync += nxt.eq(sig)
            sig = nxt
        return sig

    def elaborate(self, platform: object) -> Module:
        m = Module()
        w = self.acc_bits + 1
        # stage 1: bias
        x = Signal(signed(w), reset_less=True)
        m.d.sync += x.eq(self.acc + Mux(self.raw, 0, self.bias))
        mult1 = self._delay(m, self.mult, 1, "mult")
        shift2 = self._delay(m, self.shift, 2, "shift")
        raw1 = self._delay(m, self.raw, 1, "raw")
        # stage 2: multiply (raw: pass through)
        pw = w + REQ_MULT_BITS + 1
        prod = Signal(signed(pw), reset_less=True)
        m.d.sync += prod.eq(Mux(raw1, x, x * mult1))
        raw2 = self._delay(m, raw1, 1, "raw_b")
        # round half up, arithmetic shift, saturate
        shifted = _round_shift(m, prod, shift2, pw)
        if not self.per_token:
            m.d.comb += self.out.eq(Mux(raw2, prod, _saturate(shifted, 8)))
            return m
        # per token: saturate to INT32 (stage 3), multiply by mult_t (stage 4), round/saturate
        mult_t3 = self._delay(m, self.mult_t, 3, "mult_t")
        shift_t4 = self._delay(m, self.shift_t, 4, "shift_t")
        y = Signal(signed(33), reset_less=True)
        m.d.sync += y.eq(Mux(raw2, prod, _saturate(shifted, 32)))
        raw3 = self._delay(m, raw2, 1, "raw_c")
        raw_acc = self._delay(m, prod, 2, "prod")  # raw: the accumulator, unsaturated
        prod_t = Signal(signed(33 + REQ_MULT_BITS + 1), reset_less=True)
        m.d.sync += prod_t.eq(y * mult_t3)
        raw4 = self._delay(m, raw3, 1, "raw_d")
        shifted_t = _round_shift(m, prod_t, shift_t4, len(prod_t))
        m.d.comb += self.out.eq(Mux(raw4, raw_acc, _saturate(shifted_t, 8)))
        return m
