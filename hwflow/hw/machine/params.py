"""Parameters of the RTL machine, derived once from a :class:`~hwflow.config.HardwarePreset`.

Every width and depth of the machine (buffers, queues, AXI ports, the instruction memory)
comes from here, so the Amaranth components, the Verilog and the cocotb benches agree.

Buffer words: every on-chip buffer word is ``buffers.word_bytes`` wide, the core-side ports of
every HBM channel side by side (:func:`hwflow.costs.core_port_bytes`: the HBM's AXI ports run
at ``hbm.port_mhz`` and a clock/width converter per channel brings ``word_bytes / channels``
bytes of it into the accelerator clock per cycle). Inside the machine, fetch, LD and ST each
have one AXI4 port a word wide in front of the channel interleave (a beat lies in one
interleave granule, so it comes from one channel); bursts on it are at most
``max(hbm.max_burst_bytes, word)`` long. On the board the wide ports go through
:mod:`hwflow.hw.machine.hbm_ports` to one AXI4 port per channel, ``hbm.port_bits`` wide with
bursts of at most ``hbm.max_burst_bytes``; in ``hwflow cosim`` the HBM model sits on the wide
ports and paces each channel by :func:`hwflow.costs.hbm_pieces` (which charges the core-side
port), so a long transfer moves one word per cycle over all channels, as the cycle model says.
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
    max_burst_beats: int  #: beats of the longest AXI burst on the wide ports
    outstanding: int  #: AXI read bursts in flight per port
    channels: int  #: HBM pseudo-channels (address interleave, :func:`hwflow.isa.hbm_channel`)
    interleave_bytes: int
    instr_bytes: int  #: the instruction memory (one template is fetched into it)
    port_bits: int = 256  #: AXI data width of one channel's port (``hbm.port_bits``)
    port_burst_bytes: int = 512  #: a channel burst's bytes at most (``hbm.max_burst_bytes``)
    token_bits: int = 8  #: width of a token counter (asserted never to overflow)
    loop_depth: int = 8  #: LOOP nesting the dispatcher supports (the host checks programs)

    @classmethod
    def from_preset(cls, hw: HardwarePreset) -> MachineParams:
        """The machine of ``hw``; UnsupportedError when a width is not a power of two."""
        beat = hw.buffers.word_bytes
        g, mb, pb = hw.hbm.interleave_bytes, hw.hbm.max_burst_bytes, hw.hbm.port_bits // 8
        pow2 = all(x & (x - 1) == 0 for x in (beat, mb, pb, g, hw.hbm.channels))
        if not pow2 or beat < 128 or g % beat or (mb % beat and beat % mb) or mb % pb:
            raise UnsupportedError(
                f"preset {hw.name}: the RTL machine needs buffers.word_bytes = {beat} a power "
                f"of two >= 128 (two instruction-memory rows) dividing hbm.interleave_bytes "
                f"= {g}, dividing or a multiple of hbm.max_burst_bytes = {mb}, which a whole "
                f"number of hbm.port_bits = {8 * pb} beats fills, and hbm.channels = "
                f"{hw.hbm.channels} a power of two"
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
            max_burst_beats=max(1, mb // beat),
            outstanding=hw.hbm.outstanding,
            channels=hw.hbm.channels,
            interleave_bytes=hw.hbm.interleave_bytes,
            instr_bytes=hw.buffers.bytes("instr"),
            port_bits=8 * pb,
            port_burst_bytes=mb,
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
