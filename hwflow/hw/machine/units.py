"""The compute units the machine's slots get (MM, MV, SFU), from the modules that implement
them; a slot whose unit is not implemented stays an
:class:`~hwflow.hw.machine.top.AbsentUnit` (and no run through it is bit-exact)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import partial
from typing import Any

from hwflow.config import HardwarePreset
from hwflow.hw.machine.params import MachineParams
from hwflow.isa import Buf, Unit

__all__ = ["available_units"]


def _matmul(hw: HardwarePreset, kind: str, mp: MachineParams) -> Any:
    from hwflow.hw.machine.mmu import MatmulUnit

    return MatmulUnit(hw, kind, mp.word_bytes[Buf.ACT])  # type: ignore[arg-type]


def _sfu(hw: HardwarePreset, mp: MachineParams) -> Any:
    sfu = importlib.import_module("hwflow.hw.machine.sfu")
    return sfu.Sfu(hw, mp.word_bytes[Buf.ACT])


def _exists(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def available_units(
    hw: HardwarePreset,
) -> tuple[dict[Unit, Callable[[MachineParams], Any]], list[str]]:
    """Factories of the implemented compute units of ``hw`` and the names of every unit the
    machine has (LD and ST always)."""
    units: dict[Unit, Callable[[MachineParams], Any]] = {}
    if _exists("hwflow.hw.machine.mmu"):
        units[Unit.MM] = partial(_matmul, hw, "mpe")
        units[Unit.MV] = partial(_matmul, hw, "mv")
    if _exists("hwflow.hw.machine.sfu"):
        units[Unit.SFU] = partial(_sfu, hw)
    return units, ["LD", "ST", *(u.name for u in sorted(units))]
