"""The on-chip buffers of a preset as device memories: UltraRAM or block RAM tiles.

The RTL machine (:class:`hwflow.hw.machine.top.Accelerator`) builds each buffer as one memory
of ``MachineParams.words[buf]`` words of ``MachineParams.word_bytes[buf]`` bytes (one
:class:`~hwflow.hw.machine.bus.BufferBank`, one read and one write port: simple dual-port).
A memory that wide and shallow uses few of a tile's rows, so its cost is the tile count of
its shape, not its bytes:

* URAM288 (AMD UG573, *UltraRAM*): 4,096 x 72 bits; deeper memories cascade.
* RAMB36E2 (UG573, *Block RAM*, simple dual-port): 32K x 1, 16K x 2, 8K x 4, 4K x 9,
  2K x 18, 1K x 36 or 512 x 72; the cheapest aspect ratio is taken.

:func:`place_buffers` puts each memory in URAM or block RAM so that both fit what the rest of
the design leaves (the assignment with the lowest peak utilization, exhaustively: a preset
has six memories).

The instruction memory is shaped by the instructions, not by the buffer word
(:func:`instr_memory`): instructions are 32-bit words, at most
:data:`~hwflow.hw.machine.decode.MAX_INSTR_BITS` long (10 words), so a fetch reads two
consecutive rows of ``INSTR_ROW_WORDS`` = 16 words (the smallest power of two that holds
every instruction but its first word: any instruction starting in the first row ends in
the second) from two banks (even and odd rows), ``buffers.instr_kib`` deep in all (the
largest template the compiler produces must fit it: ``hwflow compile`` refuses one that
does not; LLaMA-2-7B's largest on u280 is 71,116 B of the 256 KiB). u280: two banks of
2,048 x 512 bits, 16 URAM288 or 58 RAMB36E2, where two banks of the 2,048-byte AXI beat's
width (two beats per bank word, the shape the RTL built before) took 912 RAMB36E2 for the
same 256 KiB. :class:`~hwflow.hw.machine.fetch.InstrMem` builds this shape (it calls
:func:`instr_memory`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

__all__ = [
    "INSTR_ROW_WORDS",
    "Memory",
    "bram36_tiles",
    "buffer_memories",
    "instr_memory",
    "place_buffers",
    "uram_tiles",
]

#: URAM288 geometry (UG573): rows, bits per row.
URAM_DEPTH, URAM_WIDTH = 4096, 72
#: RAMB36E2 simple dual-port aspect ratios (UG573): (rows, bits per row).
BRAM36_SHAPES = ((32768, 1), (16384, 2), (8192, 4), (4096, 9), (2048, 18), (1024, 36), (512, 72))


def _tiles(depth: int, width: int, rows: int, bits: int) -> int:
    return -(-depth // rows) * -(-width // bits)


def uram_tiles(depth: int, width: int) -> int:
    """URAM288s of a ``depth`` x ``width``-bit memory (4K x 72 tiles, cascaded in depth)."""
    return _tiles(depth, width, URAM_DEPTH, URAM_WIDTH)


def bram36_tiles(depth: int, width: int) -> int:
    """RAMB36E2s of a ``depth`` x ``width``-bit memory at its cheapest aspect ratio."""
    return min(_tiles(depth, width, r, b) for r, b in BRAM36_SHAPES)


@dataclass(frozen=True)
class Memory:
    """One RAM of the machine: ``copies`` memories of ``depth`` x ``width`` bits."""

    name: str
    depth: int
    width: int
    copies: int = 1

    @property
    def uram(self) -> int:
        return self.copies * uram_tiles(self.depth, self.width)

    @property
    def bram36(self) -> int:
        return self.copies * bram36_tiles(self.depth, self.width)


def buffer_memories(hw: Any) -> list[Memory]:
    """The machine's buffer memories at the preset's real sizes, shaped as the RTL builds
    them (:meth:`hwflow.hw.machine.params.MachineParams.from_preset`: every buffer word and
    the AXI beat are ``buffers.word_bytes`` wide). Computed from the preset itself, so a
    preset the RTL machine refuses (e.g. a word wider than an HBM burst) still gets the
    memories its buffers section describes."""
    from hwflow.isa import Buf

    word = hw.buffers.word_bytes
    mems = [
        Memory(b.name.lower(), -(-hw.buffers.bytes(b.name.lower()) // word), 8 * word) for b in Buf
    ]
    mems.append(instr_memory(hw.buffers.bytes("instr")))
    return mems


def _instr_row_words() -> int:
    """32-bit words of an instruction-memory row: the smallest power of two >= the longest
    instruction's words less one (module doc)."""
    from hwflow.hw.machine.decode import MAX_INSTR_BITS

    return 1 << (MAX_INSTR_BITS // 32 - 1 - 1).bit_length()


#: 32-bit words of one instruction-memory row (module doc): 16 for 10-word instructions.
INSTR_ROW_WORDS = _instr_row_words()


def instr_memory(nbytes: int) -> Memory:
    """The instruction memory of ``nbytes``: two banks (even, odd rows) of
    :data:`INSTR_ROW_WORDS`-word rows (module doc)."""
    row_bytes = 4 * INSTR_ROW_WORDS
    return Memory("instr", max(1, -(-nbytes // (2 * row_bytes))), 8 * row_bytes, copies=2)


def place_buffers(mems: list[Memory], uram_free: int, bram36_free: float) -> dict[str, Any]:
    """Each memory in URAM or block RAM: the assignment whose larger utilization of the two
    budgets left (``uram_free``, ``bram36_free``) is lowest; it may exceed them (the caller
    compares). Per memory its kind and tiles, and the totals."""
    best: tuple[float, tuple[str, ...]] | None = None
    for kinds in itertools.product(("uram", "bram36"), repeat=len(mems)):
        u = sum(m.uram for m, k in zip(mems, kinds, strict=True) if k == "uram")
        b = sum(m.bram36 for m, k in zip(mems, kinds, strict=True) if k == "bram36")
        peak = max(u / max(uram_free, 1e-9), b / max(bram36_free, 1e-9))
        if best is None or peak < best[0]:
            best = (peak, kinds)
    assert best is not None
    kinds = best[1]
    per = {
        m.name: {
            "kind": k,
            "tiles": getattr(m, k),
            "shape": f"{m.copies} x {m.depth} x {m.width} b"
            if m.copies > 1
            else f"{m.depth} x {m.width} b",
        }
        for m, k in zip(mems, kinds, strict=True)
    }
    return {
        "memories": per,
        "uram": sum(v["tiles"] for v in per.values() if v["kind"] == "uram"),
        "bram36": sum(v["tiles"] for v in per.values() if v["kind"] == "bram36"),
    }
