"""The accelerator's Verilog (:class:`~hwflow.hw.machine.top.Accelerator`), generated fast.

Amaranth writes a memory's initial contents bit by bit into RTLIL (``$meminit_v2``), which
for the machine's buffers (hundreds of KiB of zeros) took most of the generation time and
gave Verilator tens of thousands of ``initial`` assignments. A memory whose contents are all
zero needs none of it: the machine's Verilator builds start every variable at zero
(``--x-initial 0``, :data:`hwflow.hw.cosim._BUILD_ARGS`), and FPGA block RAM powers up to zero
unless initialised (Xilinx UG573, "Block RAM initialization"). :func:`accelerator_verilog` leaves such memories uninitialised;
memories with contents (none in the machine today) keep them. Amaranth's check for
combinational cycles runs as :func:`hwflow.hw.machine.combcheck.check_comb_cycles` (the same
check without its quadratic walk over wide operators), and Amaranth's netlist builder
with the bookkeeping of :func:`hwflow.hw.fastnir.fast_nir`: :func:`fast_generation` is all
three, for every conversion of a machine or engine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from amaranth.back import rtlil, verilog

from hwflow.config import HardwarePreset
from hwflow.hw.fastnir import fast_nir
from hwflow.hw.machine.combcheck import fast_comb_check
from hwflow.hw.machine.params import MachineParams
from hwflow.isa import Unit

__all__ = ["accelerator_verilog", "fast_generation", "sim_verilog"]


@contextlib.contextmanager
def _zero_memories_uninitialised() -> Iterator[None]:
    """While active, Amaranth's RTLIL backend emits no ``$meminit`` for all-zero memories."""
    emitter = getattr(rtlil, "ModuleEmitter", None)
    plain = getattr(emitter, "emit_memory", None)
    if plain is None:  # another Amaranth version: generate as it does (slower, same design)
        yield
        return

    def emit_memory(self: Any, cell_idx: int, cell: Any) -> None:
        if any(cell.init):
            plain(self, cell_idx, cell)

    emitter.emit_memory = emit_memory
    try:
        yield
    finally:
        emitter.emit_memory = plain


@contextlib.contextmanager
def fast_generation() -> Iterator[None]:
    """While active, Verilog generation leaves all-zero memories uninitialised, checks for
    combinational cycles in linear time and builds the netlist with :func:`fast_nir`."""
    with _zero_memories_uninitialised(), fast_comb_check(), fast_nir():
        yield


def accelerator_verilog(
    mp: MachineParams, units: Mapping[Unit, Any] | None = None, name: str = "accel"
) -> str:
    """Verilog of the whole machine for ``mp`` with the unit factories ``units``."""
    from hwflow.hw.machine.top import Accelerator

    with fast_generation():
        return verilog.convert(Accelerator(mp, units), name=name)


def sim_verilog(
    hw: HardwarePreset, mp: MachineParams, units: Mapping[Unit, Any] | None, name: str
) -> str:
    """Verilog of the machine on its simulated HBM (:class:`~hwflow.hw.machine.hbm_sim.SimTop`),
    what ``hwflow cosim`` runs."""
    from hwflow.hw.machine.hbm_sim import SimTop

    with fast_generation():
        return verilog.convert(SimTop(hw, mp, dict(units or {})), name=name)
