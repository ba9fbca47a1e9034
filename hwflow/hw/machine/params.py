"""Parameters of the RTL machine, derived once from a :class:`~hwflow.config.HardwarePreset`.

Every width and depth of the machine (buffers, queues, AXI ports, the instruction memory)
comes from here, so the Amaranth components, the Verilog and the cocotb benches agree.

Buffer words: every on-chip buffer word is ``buffers.word_bytes`` wide, the core-side ports of
every HBM channel side by side (:func:`hwflow.costs.core_port_bytes`: the HBM's AXI ports run
at ``hbm.port_mhz`` and a clock/width converter per channel brings ``word_bytes / channels``
bytes of it into the accelerator clock per cycle). The machine's HBM port (fetch, LD, ST) is
one AXI4 port of that width in front of the channel interleave: a beat lies in one
interleave granule, so it comes from one channel, and the HBM model paces each channel by
:func:`hwflow.costs.hbm_pieces` (which charges the core-side port), so a long transfer moves
one word per cycle over all channels, as the cycle model says.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from math import ceil, log2
from types import MappingProxyType

from hwflow.config import HardwarePreset
from hwflow.errors import UnsupportedError
from hwflow.isa import Buf

__all__ = ["MachineParams"]


def _bits(n: int) -> int:
    """Bits of an index into ``n`` things (at least 1)."""
    return max(1, ceil(log2(max(n, 2))))


@dataclass(frozen=True)
class MachineParams:
    """Widths and depths of the machine for one preset (:meth:`from_preset`)."""

    preset: str
    word_bytes: Mapping[Buf, int]  #: bytes per buffer word
    words: Mapping[Buf, int]  #: words per buffer
    queue_depth: int  #: per-unit instruction queue entries
    axi_data_bits: int  #: AXI data width of the HBM port (one beat = one buffer word)
    axi_addr_bits: int  #: AXI byte address width (the HBM capacity)
    max_burst_beats: int  #: beats of the longest AXI burst
    outstanding: int  #: AXI read bursts in flight per port
    channels: int  #: HBM pseudo-channels (address interleave, :func:`hwflow.isa.hbm_channel`)
    interleave_bytes: int
    instr_bytes: int  #: the instruction memory (one template is fetched into it)
    token_bits: int = 8  #: width of a token counter (asserted never to overflow)
    loop_depth: int = 8  #: LOOP nesting the dispatcher supports (the host checks programs)

    @classmethod
    def from_preset(cls, hw: HardwarePreset) -> MachineParams:
        """The machine of ``hw``; UnsupportedError when a width is not a power of two."""
        beat = hw.buffers.word_bytes
        g = hw.hbm.interleave_bytes
        if beat & (beat - 1) or beat < 32 or hw.hbm.max_burst_bytes % beat or g % beat:
            raise UnsupportedError(
                f"preset {hw.name}: buffers.word_bytes = {beat} must be a power of two >= 32 "
                f"dividing hbm.max_burst_bytes = {hw.hbm.max_burst_bytes} and "
                f"hbm.interleave_bytes = {g} (the RTL machine's one HBM port is a word wide)"
            )
        wb = {b: beat for b in Buf}
        words = {b: -(-hw.buffers.bytes(b.name.lower()) // beat) for b in Buf}
        return cls(
            preset=hw.name,
            word_bytes=MappingProxyType(wb),
            words=MappingProxyType(words),
            queue_depth=hw.buffers.queue_entries,
            axi_data_bits=8 * beat,
            axi_addr_bits=_bits(hw.hbm.capacity_bytes),
            max_burst_beats=hw.hbm.max_burst_bytes // beat,
            outstanding=hw.hbm.outstanding,
            channels=hw.hbm.channels,
            interleave_bytes=hw.hbm.interleave_bytes,
            instr_bytes=hw.buffers.bytes("instr"),
        )

    def addr_bits(self, buf: Buf) -> int:
        """Bits of a word index into ``buf``."""
        return _bits(self.words[buf])

    def byte_bits(self, buf: Buf) -> int:
        """Bits of a byte offset into ``buf`` (the instruction fields are wider)."""
        return _bits(self.words[buf] * self.word_bytes[buf])

    @property
    def beat_bytes(self) -> int:
        return self.axi_data_bits // 8
