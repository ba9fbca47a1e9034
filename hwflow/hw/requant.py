"""The requantization unit: the numerics contract in register stages.

``out = saturate_int8(round_shift((acc + bias) * mult, shift))`` exactly as
:func:`hwflow.numerics.requantize` (round half up: add ``2**(shift-1)``, arithmetic shift),
with ``mult`` 15-bit unsigned and ``shift`` 0..47. With ``raw`` the accumulator passes through
unchanged (the LM head's logits): bias, multiplier and shift are ignored.

Stages (:data:`hwflow.costs.REQUANT_STAGES` = 6): bias add; multiply, in two register stages
(:func:`_multiply`: the partial products of the operand's 24-bit pieces, each one DSP with
its M register, then their shifted sum in the P register); add the rounding constant
``2**(shift-1)``; arithmetic shift; saturate (combinational into the engine's output FIFO,
whose register is the sixth stage). Rounding, shifting and saturating are separate stages so
that no register-to-register path holds more than a few LUT levels (``hwflow synth`` reports
each module's critical path): a 50-bit rounding add is one LUT level and a carry chain, a
shift by 0..47 three levels of 4:1 multiplexers, the saturation a wide sign compare and a
multiplexer. A one-stage 49 x 15-bit multiply maps onto three DSPs chained combinationally
(PCOUT -> PCIN, no M or P register between them): 5.8 ns in the timing proxy, over the
4.44 ns of 225 MHz.

``raw`` (logits) multiplies by 1 and shifts by 0 instead of bypassing the stages, so no
multiplexer sits behind the multiply and no copy of the product is delayed alongside.

``per_token`` (the row stage of :func:`hwflow.numerics.linear_out`) adds a second multiply by a
per-row (token) ``mult_t``/``shift_t``:
``out = saturate_int8(round_shift(sat32(round_shift((acc + bias) * mult, shift)) * mult_t,
shift_t))``, :data:`PER_TOKEN_EXTRA_STAGES` more stages: the first result saturates to INT32
into a register, then the second multiply (two stages), rounding add and shift; the final
saturation stays combinational. ``mult_t``/``shift_t`` are presented with ``acc`` and carried along inside.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hwflow.costs import REQUANT_STAGES
from hwflow.numerics import ACT_MIN, REQ_MULT_BITS, REQ_SHIFT_MAX

__all__ = ["PER_TOKEN_EXTRA_STAGES", "Requantizer"]

_SHIFT_BITS = REQ_SHIFT_MAX.bit_length()
#: Register stages the per-token multiply adds (INT32 saturation register, second product in
#: two stages, its rounding add and its shift).
PER_TOKEN_EXTRA_STAGES = 5
#: Register stages of one multiply (:func:`_multiply`): partial products (M), their sum (P).
_MUL_STAGES = 2
#: Width of the unsigned low pieces the multiplicand is cut into: a piece and its sign bit
#: fit the 25-bit A port of the DSP48E1 the synthesis flow maps through (and the 27-bit one
#: of the DSP48E2), the 16-bit signed multiplier the 18-bit B port.
_PIECE_BITS = 24
#: The widest signed top piece that still fits one DSP's A port.
_TOP_BITS = 25
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


def _multiply(m: Module, x: Value, mult: Value, name: str) -> Signal:
    """``x * mult`` (``x`` signed, ``mult`` unsigned) registered in :data:`_MUL_STAGES` stages:
    the products of ``x``'s pieces (24-bit unsigned low pieces, a signed top piece of at most
    25 bits) by ``mult``, each registered (a DSP's M register), then their shifted sum
    (registered: the P register). Each piece's product fits one DSP multiplier, so no
    multiply chains DSPs without a register between them."""
    pieces: list[tuple[int, Value]] = []
    at = 0
    while len(x) - at > _TOP_BITS:
        pieces.append((at, x[at : at + _PIECE_BITS]))
        at += _PIECE_BITS
    pieces.append((at, x[at:].as_signed()))
    out = Signal(signed(len(x) + len(mult) + 1), name=f"{name}_prod", reset_less=True)
    total: Value | None = None
    for i, (off, piece) in enumerate(pieces):
        part = piece * mult
        reg = Signal(signed(len(part) + 1), name=f"{name}_pp{i}", reset_less=True)
        m.d.sync += reg.eq(part)
        term = reg << off if off else reg
        total = term if total is None else total + term
    m.d.sync += out.eq(total)
    return out


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
        # stage 1: bias; raw multiplies by 1 and shifts by 0 (the accumulator unchanged)
        x = Signal(signed(w), reset_less=True)
        mult1 = Signal.like(self.mult, name="mult1", reset_less=True)
        shift1 = Signal.like(self.shift, name="shift1", reset_less=True)
        m.d.sync += [
            x.eq(self.acc + Mux(self.raw, 0, self.bias)),
            mult1.eq(Mux(self.raw, 1, self.mult)),
            shift1.eq(Mux(self.raw, 0, self.shift)),
        ]
        # stages 2, 3: multiply; stages 4, 5: rounding add, shift
        prod = _multiply(m, x, mult1, "m1")
        shifted, _ = _round_shift(m, prod, self._delay(m, shift1, _MUL_STAGES, "shift"), "r1")
        raw_b = self._delay(m, self.raw, 1 + _MUL_STAGES + _ROUND_STAGES, "raw_b")
        if not self.per_token:
            m.d.comb += self.out.eq(Mux(raw_b, shifted, _saturate(shifted, 8)))
            return m
        # per token: saturate to INT32, multiply by mult_t, rounding add, shift, saturate
        lead = REQUANT_STAGES - 1  # mult_t meets y one stage after y's register
        mult_t = self._delay(m, self.mult_t, lead + 1, "mult_t")
        shift_t = self._delay(m, self.shift_t, lead + 1 + _MUL_STAGES, "shift_t")
        y = Signal(signed(33), reset_less=True)
        m.d.sync += y.eq(_saturate(shifted, 32))
        prod_t = _multiply(m, y, mult_t, "m2")
        shifted_t, _ = _round_shift(m, prod_t, shift_t, "r2")
        raw_out = self._delay(m, raw_b, PER_TOKEN_EXTRA_STAGES, "raw_c")
        raw_acc = self._delay(m, shifted, PER_TOKEN_EXTRA_STAGES, "acc_raw")  # unsaturated
        m.d.comb += self.out.eq(Mux(raw_out, raw_acc, _saturate(shifted_t, 8)))
        return m
