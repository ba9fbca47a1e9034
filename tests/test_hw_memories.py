"""Buffer memories as device tiles (hwflow.hw.memories): URAM288 and RAMB36E2 geometry of
AMD UG573, and the URAM / block RAM placement."""

from __future__ import annotations

from hwflow.config import load_hw
from hwflow.hw.memories import Memory, bram36_tiles, buffer_memories, place_buffers, uram_tiles


def test_tile_counts_follow_the_primitive_shapes() -> None:
    # URAM288 is 4,096 x 72: one exactly, a 73rd bit or a 4,097th row doubles it
    assert uram_tiles(4096, 72) == 1
    assert uram_tiles(4096, 73) == uram_tiles(4097, 72) == 2
    # a 2 KiB word is 16,384 bits = 227.6 columns of 72: 228 URAMs however shallow
    assert uram_tiles(1, 16384) == uram_tiles(1024, 16384) == 228
    # RAMB36E2 SDP: 512 x 72 is one; 1,024 x 72 two (1K x 36 twice); 32K x 1 one
    assert bram36_tiles(512, 72) == 1 and bram36_tiles(1024, 72) == 2
    assert bram36_tiles(32768, 1) == 1 and bram36_tiles(4096, 9) == 1
    assert bram36_tiles(256, 16384) == 228  # 512 x 72 tiles, half their rows unused


def test_u280_buffers_are_shaped_as_the_rtl_builds_them() -> None:
    """u280: 2,048-byte words (buffers.word_bytes), so the 2,048 KiB weight buffer is 1,024
    words of 16,384 bits. The instruction memory is shaped by the ISA, not the buffer word:
    rows of 16 32-bit words (instructions are at most 10 words), two banks of 256 KiB /
    (2 x 64 B) = 2,048 rows: 2 x 8 URAM288 (512 / 72 bits per row) or 2 x 29 RAMB36E2
    (2K x 18), not 2 x 456 RAMB36E2 as two banks of 2 x 2,048-byte beats took."""
    mems = {m.name: m for m in buffer_memories(load_hw("u280"))}
    assert (mems["weight"].depth, mems["weight"].width) == (1024, 16384)
    assert (mems["act"].depth, mems["param"].depth) == (2048, 256)
    assert (mems["instr"].copies, mems["instr"].depth, mems["instr"].width) == (2, 2048, 512)
    assert (mems["instr"].uram, mems["instr"].bram36) == (16, 58)


def test_placement_moves_memories_to_block_ram_when_uram_runs_out() -> None:
    a = Memory("a", 4096, 72)  # 1 URAM or 8 BRAM36 (512 x 72 each)
    b = Memory("b", 512, 72)  # 1 URAM or 1 BRAM36
    both_uram = place_buffers([a, b], uram_free=2, bram36_free=0)
    assert both_uram["uram"] == 2 and both_uram["bram36"] == 0
    one = place_buffers([a, b], uram_free=1, bram36_free=8)
    # the deep one stays in URAM (8 BRAM36 otherwise), the shallow one goes to block RAM
    assert one["memories"]["a"]["kind"] == "uram" and one["memories"]["b"]["kind"] == "bram36"
    assert (one["uram"], one["bram36"]) == (1, 1)
