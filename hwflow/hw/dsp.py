"""The DSP stage (a DSP48E2/DSP58 model) and the systolic chain built from it.

A :class:`DspStage` is written in the coding style that makes Yosys map it onto one DSP slice
with its cascade: input registers (A/B, and D for the pre-adder), the M (product) register and
the P register fed by ``pcin + m`` (PCOUT -> PCIN). Stage ``j`` of a chain delays its operands
by ``j`` extra cycles (the systolic skew) so that the cascade sum of the previous stage meets
them. The cascade is never broken: stage j's P is the *prefix* sum of products 0..j, and the
engine's reduction points are taps on it (a segment's sum is the difference of two prefix
sums, taken after accumulation, see :mod:`hwflow.hw.engine`). So the chain maps onto an
unbroken DSP column whatever N the op uses, without a dynamic OPMODE.

With ``dual`` (Xilinx WP486) a stage multiplies ``(a << F) + d`` by ``b`` through the
pre-adder, computing two INT8 products that share the weight ``b``; the packed sums are split
again by :func:`unpack_dual`. The pre-adder result is ``8 + F`` bits (27 for a 16-stage
chain, the DSP48E2's AD width), exact only for ``a >= -127``: the engine clamps activations
(:data:`hwflow.hw.params.DUAL_ACT_MIN`).

Data registers have no reset (the DSP's registers need none, and shift registers then map to
SRLs) and no clock enable: the engine never stalls its pipeline (bubbles carry valid = 0).
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Signal, Value, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["DspChain", "DspStage", "unpack_dual"]


class DspStage(wiring.Component):
    """One DSP slice: ``p = pcin + a*b`` (or ``pcin + ((a << F) + d) * b`` when dual).

    Timing: operands presented in cycle t reach ``p`` in cycle ``t + skew + 3`` (skew
    registers, A/B/D register, M register, P register); ``pcin`` must be the previous stage's
    ``p`` (one cycle less skew).
    """

    def __init__(
        self, *, skew: int, acc_bits: int, dual: bool = False, field: int = 0, a_bits: int = 8
    ) -> None:
        if skew < 0:
            raise ValueError(f"skew must be >= 0, got {skew!r}")
        if dual and not 0 < field < acc_bits - 16:
            raise ValueError(f"dual packing field {field!r} does not fit {acc_bits} bits")
        self.skew, self.acc_bits, self.dual, self.field = skew, acc_bits, dual, field
        self.a_bits = a_bits
        members = {
            "a": In(signed(a_bits)),
            "b": In(signed(8)),
            "pcin": In(signed(acc_bits)),
            "p": Out(signed(acc_bits)),
        }
        if dual:
            members["d"] = In(signed(8))
        super().__init__(members)

    def elaborate(self, platform: object) -> Module:
        m = Module()
        a, b = self.a, self.b
        d = self.d if self.dual else None
        # systolic skew, then the A/B(/D) input registers: skew + 1 register levels
        for level in range(self.skew + 1):
            na = Signal(signed(self.a_bits), name=f"a_r{level}", reset_less=True)
            nb = Signal(signed(8), name=f"b_r{level}", reset_less=True)
            m.d.sync += [na.eq(a), nb.eq(b)]
            a, b = na, nb
            if d is not None:
                nd = Signal(signed(8), name=f"d_r{level}", reset_less=True)
                m.d.sync += nd.eq(d)
                d = nd
        if d is not None:
            # the DSP's pre-adder (A + D), 8 + F bits: exact when a >= -127 (DUAL_ACT_MIN)
            pre = Signal(signed(8 + self.field))
            m.d.comb += pre.eq((a << self.field) + d)
            prod = pre * b
        else:
            prod = a * b
        mreg = Signal(signed(len(prod)), name="m", reset_less=True)
        preg = Signal(signed(self.acc_bits), name="preg", reset_less=True)
        m.d.sync += [mreg.eq(prod), preg.eq(self.pcin + mreg)]
        m.d.comb += self.p.eq(preg)
        return m


class DspChain(wiring.Component):
    """``length`` cascaded :class:`DspStage` s; ``p[j]`` is stage j's P register.

    Operands of all stages are presented in the same cycle t (one beat); ``p[j]`` holds the
    beat's prefix sum of products 0..j in cycle ``t + 3 + j``.
    """

    def __init__(
        self, *, length: int, acc_bits: int, dual: bool = False, field: int = 0, a_bits: int = 8
    ) -> None:
        self.length, self.acc_bits, self.dual, self.field = length, acc_bits, dual, field
        self.a_bits = a_bits
        members = {
            "a": In(signed(a_bits)).array(length),
            "b": In(signed(8)).array(length),
            "p": Out(signed(acc_bits)).array(length),
        }
        if dual:
            members["d"] = In(signed(8)).array(length)
        super().__init__(members)

    def elaborate(self, platform: object) -> Module:
        m = Module()
        prev: Value = Const(0, signed(self.acc_bits))
        for j in range(self.length):
            st = DspStage(
                skew=j, acc_bits=self.acc_bits, dual=self.dual, field=self.field, a_bits=self.a_bits
            )
            m.submodules[f"dsp{j}"] = st
            m.d.comb += [st.a.eq(self.a[j]), st.b.eq(self.b[j]), st.pcin.eq(prev)]
            if self.dual:
                m.d.comb += st.d.eq(self.d[j])
            m.d.comb += self.p[j].eq(st.p)
            prev = st.p
        return m


def unpack_dual(p: Value, field: int) -> tuple[Value, Value]:
    """Split a dual-INT8 packed sum ``2**field * hi + lo`` into ``(hi, lo)`` (signed)."""
    lo = p[:field].as_signed()
    hi = p[field:].as_signed() + p[field - 1]
    return hi, lo
