"""The requantization unit: the numerics contract in register stages.

``out = saturate_int8(round_shift((acc + bias) * mult, shift))`` exactly as
:func:`hwflow.numerics.requantize` (round half up: add ``2**(shift-1)``, arithmetic shift),
with ``mult`` 15-bit unsigned and ``shift`` 0..47. With ``raw`` the accumulator passes through
unchanged (the LM head's logits): bias, multiplier and shift are ignored.

Stages (:data:`hwflow.costs.REQUANT_STAGES` = 5): bias add; multiply; add the rounding
constant ``2**(shift-1)``; arithmetic shift; saturate (combinational into the engine's output
FIFO, whose register is the fifth stage). Rounding, shifting and saturating are separate
stages so that no register-to-register path holds more than a few LUT levels (``hwflow synth``
reports each module's critical path): a 50-bit rounding add is one LUT level and a carry
chain, a shift by 0..47 three levels of 4:1 multiplexers, the saturation a wide sign compare
and a multiplexer.

``per_token`` (the row stage of :func:`hwflow.numerics.linear_out`) adds a second multiply by a
per-row (token) ``mult_t``/``shift_t``:
``out = saturate_int8(round_shift(sat32(round_shift((acc + bias) * mult, shift)) * mult_t,
shift_t))``, :data:`PER_TOKEN_EXTRA_STAGES` more stages: the first result saturates to INT32
into a register, then the second multiply, rounding add and shift; the final saturation stays
combinational. ``mult_t``/``shift_t`` are presented with ``acc`` and carried along inside.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hwflow.costs import REQUANT_STAGES
from hwflow.numerics import ACT_MIN, REQ_MULT_BITS, REQ_SHIFT_MAX

__all__ = ["PER_TOKEN_EXTRA_STAGES", "Requantizer"]

_SHIFT_BITS = REQ_SHIFT_MAX.bit_length()
#: Register stages the per-token multiply adds (INT32 saturation register, second product,
#: its rounding add and its shift).
PER_TOKEN_EXTRA_STAGES = 4
#: Registers a rounding (round half up, then shift) takes: the add, then the shift.
_ROUND_STAGES = 2


def _round_shift(m: Module, x: Value, shift: Value, name: str) -> tuple[Signal, Value]:
    """``(x + 2**(shift-1)) >> shift`` (round half up; shift 0 leaves x) in two register
    stages: the rounding add, then the shift. Returns the result (registered) and ``shift``
    delayed to the first stage's output (for callers that carry more along)."""
    half = Signal(unsigned(REQ_SHIFT_MAX), name=f"{name}_half")
    one = Const(1, unsigned(REQ_SHIFT_MAX))
    m.d.comb += half.eq(Mux(shift.any(), one << (shift - 1)[:_SHIFT_BITS], 0))
    rounded = Signal(signed(len(x) + 1), name=f"{name}_rounded", reset_less=True)
    sh = Signal.like(shift, name=f"{name}_shift", reset_less=True)
    m.d.sync += [rounded.eq(x + half), sh.eq(shift)]
    out = Signal(signed(len(x) + 1), name=f"{name}_shifted", reset_less=True)
    m.d.sync += out.eq(rounded >> sh)
    return out, sh


def _saturate(x: Value, bits: int) -> Value:
    """:func:`hwflow.numerics.saturate` (INT8: the symmetric -127..127)."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if bits == 8:
        lo = ACT_MIN
    return Mux(x > hi, hi, Mux(x < lo, lo, x))


class Requantizer(wiring.Component):
    """One lane: ``acc`` (``acc_bits`` signed) -> ``out`` (``acc_bits`` signed; INT8 range
    unless ``raw``), valid :meth:`registers` cycles later and combinational from there: the
    last stage's register is the user's (the engine's output FIFO)."""

    @staticmethod
    def registers(per_token: bool) -> int:
        """Cycles from ``acc`` to ``out``: every stage but the last (the user's register)."""
        return REQUANT_STAGES - 1 + (PER_TOKEN_EXTRA_STAGES if per_token else 0)

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
        # stages 3, 4: rounding add, shift; raw keeps the product
        shifted, _ = _round_shift(m, prod, shift2, "r1")
        raw4 = self._delay(m, raw1, 1 + _ROUND_STAGES, "raw_b")
        prod4 = self._delay(m, prod, _ROUND_STAGES, "prod")
        if not self.per_token:
            m.d.comb += self.out.eq(Mux(raw4, prod4, _saturate(shifted, 8)))
            return m
        # per token: saturate to INT32, multiply by mult_t, rounding add, shift, saturate
        lead = REQUANT_STAGES - 1  # mult_t meets y one stage after y's register
        mult_t = self._delay(m, self.mult_t, lead + 1, "mult_t")
        shift_t = self._delay(m, self.shift_t, lead + 2, "shift_t")
        y = Signal(signed(33), reset_less=True)
        m.d.sync += y.eq(Mux(raw4, prod4, _saturate(shifted, 32)))
        prod_t = Signal(signed(33 + REQ_MULT_BITS + 1), reset_less=True)
        m.d.sync += prod_t.eq(y * mult_t)
        shifted_t, _ = _round_shift(m, prod_t, shift_t, "r2")
        raw_out = self._delay(m, raw4, PER_TOKEN_EXTRA_STAGES, "raw_c")
        raw_acc = self._delay(m, prod4, PER_TOKEN_EXTRA_STAGES, "acc_raw")  # unsaturated
        m.d.comb += self.out.eq(Mux(raw_out, raw_acc, _saturate(shifted_t, 8)))
        return m
