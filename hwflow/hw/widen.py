"""Weight widening: packed INT2/3/4/8 fields (:func:`hwflow.numerics.pack_bits`) to INT8.

The packed word of one chain holds ``slots`` two's-complement fields of the op's width,
little-endian: field i is bits ``[i*b, (i+1)*b)``. Each field is sign-extended to 8 bits; a
mux picks the width the op selected (``sel`` indexes ``bits``). Combinational: the engine
registers the result together with the activation mux (its first operand stage).
"""

from __future__ import annotations

from collections.abc import Sequence

from amaranth.hdl import Module, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["WeightWidener"]


class WeightWidener(wiring.Component):
    """``packed`` (``slots * 8`` bits) -> ``values[slots]`` INT8, width ``bits[sel]``."""

    def __init__(self, *, slots: int, bits: Sequence[int]) -> None:
        bits = tuple(bits)
        if not bits or any(b not in range(1, 9) for b in bits):
            raise ValueError(f"weight widths {bits!r} must lie in 1..8")
        self.slots, self.bits = slots, bits
        super().__init__(
            {
                "packed": In(unsigned(slots * 8)),
                "sel": In(unsigned(max(1, (len(bits) - 1).bit_length()))),
                "values": Out(signed(8)).array(slots),
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        with m.Switch(self.sel):
            for k, b in enumerate(self.bits):
                with m.Case(k):
                    for i in range(self.slots):
                        field = self.packed[i * b : (i + 1) * b].as_signed()
                        m.d.comb += self.values[i].eq(field)
            with m.Default():
                for i in range(self.slots):
                    m.d.comb += self.values[i].eq(0)
        return m
