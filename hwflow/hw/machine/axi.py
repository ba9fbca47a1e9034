"""AXI4 read and write channels of the machine's HBM ports (manager side), the signal names of
Arm IHI0022 (AMBA AXI) so a cocotb ``cocotbext.axi`` subordinate binds to them by prefix.

Only INCR bursts of full data-width beats are issued (``arsize``/``awsize`` = log2 of the beat
bytes); byte enables (``wstrb``) carry partial beats of a store. ``araddr``/``awaddr`` is the
exact first byte the burst is for (an unaligned start, IHI0022 A3.4.1 "Unaligned transfers":
the first beat's lower byte lanes are not part of it) and the user sideband (``aruser`` /
``awuser``, IHI0022 "User-defined signaling", :func:`user_bits`) says
where the burst's bytes end in its last beat and whether it opens a hop row, so the simulated
HBM (:mod:`hwflow.hw.machine.hbm_sim`) charges the channels for exactly the atoms a burst needs,
as :func:`hwflow.costs.hbm_pieces` does; a real HBM port leaves the sideband unconnected.
"""

from __future__ import annotations

from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["AXI_INCR", "AxiRead", "AxiWrite", "user_bits"]

AXI_INCR = 1  #: AxBURST encoding of an incrementing burst (IHI0022, A3.4.1)


def user_bits(data_bits: int) -> int:
    """Width of AxUSER: the offset of the burst's last byte in its last beat (log2 of the beat
    bytes, the low bits), then the hop flag (the burst is the first in its channel of a
    run of a strided transfer whose rows are shorter than an interleave granule: a new DRAM
    row there), then the start flag
    (the first burst of a transfer: the port stands for one port per channel, and the
    simulated HBM charges every burst of a transfer from its first one's arrival)."""
    return (data_bits // 8 - 1).bit_length() + 2


class AxiRead(wiring.Signature):
    """AR and R channels of an AXI4 manager: ``addr_bits`` address, ``data_bits`` data."""

    def __init__(self, addr_bits: int, data_bits: int) -> None:
        super().__init__(
            {
                "arid": Out(1),
                "aruser": Out(user_bits(data_bits)),
                "araddr": Out(addr_bits),
                "arlen": Out(8),
                "arsize": Out(3),
                "arburst": Out(2),
                "arvalid": Out(1),
                "arready": In(1),
                "rid": In(1),
                "rdata": In(data_bits),
                "rresp": In(2),
                "rlast": In(1),
                "rvalid": In(1),
                "rready": Out(1),
            }
        )


class AxiWrite(wiring.Signature):
    """AW, W and B channels of an AXI4 manager."""

    def __init__(self, addr_bits: int, data_bits: int) -> None:
        super().__init__(
            {
                "awid": Out(1),
                "awuser": Out(user_bits(data_bits)),
                "awaddr": Out(addr_bits),
                "awlen": Out(8),
                "awsize": Out(3),
                "awburst": Out(2),
                "awvalid": Out(1),
                "awready": In(1),
                "wdata": Out(data_bits),
                "wstrb": Out(data_bits // 8),
                "wlast": Out(1),
                "wvalid": Out(1),
                "wready": In(1),
                "bid": In(1),
                "bresp": In(2),
                "bvalid": In(1),
                "bready": Out(1),
            }
        )
