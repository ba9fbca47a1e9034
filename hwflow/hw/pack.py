"""Python values <-> the integer words of :mod:`amaranth.lib.data` layouts.

Benches and drivers talk to the engines' flattened Verilog ports (``i__payload`` ...) as
integers; these two functions are the single translation, read from the same layout objects
the hardware is built from (field offsets are never repeated by hand).
"""

from __future__ import annotations

from typing import Any

from amaranth.hdl import Shape
from amaranth.lib import data

__all__ = ["decode", "encode"]


def encode(layout: Any, value: Any) -> int:
    """Pack ``value`` (int, list for arrays, dict for structs; missing fields 0) into an int."""
    if isinstance(layout, data.StructLayout):
        word = 0
        for name, field in layout:
            if name in value:
                word |= encode(field.shape, value[name]) << field.offset
        return word
    if isinstance(layout, data.ArrayLayout):
        ew = Shape.cast(layout.elem_shape).width
        word = 0
        for i, v in enumerate(value):
            word |= encode(layout.elem_shape, v) << (i * ew)
        return word
    width = Shape.cast(layout).width
    return int(value) & ((1 << width) - 1)


def decode(layout: Any, word: int) -> Any:
    """Unpack an int into the nested Python form :func:`encode` takes (signed leaves signed)."""
    if isinstance(layout, data.StructLayout):
        out = {}
        for name, field in layout:
            w = Shape.cast(field.shape).width
            out[name] = decode(field.shape, (word >> field.offset) & ((1 << w) - 1))
        return out
    if isinstance(layout, data.ArrayLayout):
        ew = Shape.cast(layout.elem_shape).width
        mask = (1 << ew) - 1
        return [decode(layout.elem_shape, (word >> (i * ew)) & mask) for i in range(layout.length)]
    shape = Shape.cast(layout)
    word &= (1 << shape.width) - 1
    if shape.signed and word >> (shape.width - 1):
        word -= 1 << shape.width
    return word
