"""AXI4 read and write channels of the machine's HBM ports (manager side), the signal names of
Arm IHI0022 (AMBA AXI) so a cocotb ``cocotbext.axi`` subordinate binds to them by prefix.

Only INCR bursts of full data-width beats are issued (``arsize``/``awsize`` = log2 of the beat
bytes); byte enables (``wstrb``) carry partial beats of a store.
"""

from __future__ import annotations

from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["AXI_INCR", "AxiRead", "AxiWrite"]

AXI_INCR = 1  #: AxBURST encoding of an incrementing burst (IHI0022, A3.4.1)


class AxiRead(wiring.Signature):
    """AR and R channels of an AXI4 manager: ``addr_bits`` address, ``data_bits`` data."""

    def __init__(self, addr_bits: int, data_bits: int) -> None:
        super().__init__(
            {
                "arid": Out(1),
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
