"""Energy model: action counts from the cycle model x energy per action from a board table.

The cycle model (:mod:`hwflow.perf`) counts *actions* while it runs a program: multiply-
accumulates by weight precision, on-chip buffer bits read and written, HBM bytes read and
written, special-function element operations, instruction words fetched and idle unit-cycles.
A per-board table (``mappings/energy/<part>.yaml``, named by a preset's ``energy_table``)
gives the energy of one action and the board's static power, each with its source or
derivation. Energy = sum(count x energy per action) + static power x time (Accelergy's
method: counts and reference tables kept apart).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from pydantic import Field

from hwflow.config import MAPPINGS, HardwarePreset, Sourced, read_data, validate_data
from hwflow.errors import ConfigError

__all__ = ["Actions", "Energy", "EnergyTable", "energy", "load_energy_table"]

PJ = 1e-12


@dataclass
class Actions:
    """Counts of the actions that cost energy (the cycle model fills these)."""

    macs: dict[int, int] = field(default_factory=dict)  #: useful MACs by weight bits
    buffer_read_bits: int = 0
    buffer_write_bits: int = 0
    hbm_read_bytes: int = 0
    hbm_write_bytes: int = 0
    sfu_ops: int = 0  #: special-function element operations (elements x passes)
    instr_words: int = 0  #: 32-bit instruction words fetched
    idle_unit_cycles: int = 0  #: sum over units of the cycles each spent idle

    def add(self, other: Actions, times: int = 1) -> None:
        """Accumulate ``times`` copies of ``other`` into this count."""
        for f in fields(self):
            if f.name == "macs":
                for b, v in other.macs.items():
                    self.macs[b] = self.macs.get(b, 0) + v * times
            else:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name) * times)

    @property
    def total_macs(self) -> int:
        return sum(self.macs.values())


class EnergyTable(Sourced):
    """Energy per action of one board; every number cites its source in ``sources``."""

    name: str
    description: str = ""
    mac_pj: float = Field(ge=0)
    sram_pj_per_bit: float = Field(ge=0)
    hbm_pj_per_bit: float = Field(ge=0)
    sfu_op_pj: float = Field(ge=0)
    instr_pj_per_bit: float = Field(ge=0)
    idle_unit_cycle_pj: float = Field(ge=0)
    static_w: float = Field(ge=0)


def load_energy_table(ref: str | Path) -> EnergyTable:
    """A table by name (``xcu280`` under ``mappings/energy``) or by path."""
    p = Path(ref)
    if not p.is_file():
        cand = MAPPINGS / "energy" / f"{ref}.yaml"
        if not cand.is_file():
            shipped = sorted(q.stem for q in (MAPPINGS / "energy").glob("*.yaml"))
            raise ConfigError(
                f"energy table {str(ref)!r} not found (shipped: {', '.join(shipped)})"
            )
        p = cand
    return validate_data(EnergyTable, read_data(p), p)


@dataclass(frozen=True)
class Energy:
    """Joules by component over a run of ``seconds``."""

    joules: dict[str, float]
    seconds: float

    @property
    def total(self) -> float:
        return sum(self.joules.values())

    @property
    def dynamic(self) -> float:
        return self.total - self.joules["static"]

    @property
    def average_w(self) -> float:
        return self.total / self.seconds if self.seconds > 0 else 0.0


def energy(hw: HardwarePreset, actions: Actions, cycles: int) -> Energy:
    """Energy of a run of ``cycles`` on ``hw`` that performed ``actions``."""
    if hw.energy_table is None:
        raise ConfigError(f"preset {hw.name} names no energy_table (add 'energy_table: <part>')")
    t = load_energy_table(hw.energy_table)
    seconds = cycles / hw.clock_hz
    j = {
        "mac": actions.total_macs * t.mac_pj * PJ,
        "buffers": (actions.buffer_read_bits + actions.buffer_write_bits) * t.sram_pj_per_bit * PJ,
        "hbm": (actions.hbm_read_bytes + actions.hbm_write_bytes) * 8 * t.hbm_pj_per_bit * PJ,
        "sfu": actions.sfu_ops * t.sfu_op_pj * PJ,
        "instr": actions.instr_words * 32 * t.instr_pj_per_bit * PJ,
        "idle": actions.idle_unit_cycles * t.idle_unit_cycle_pj * PJ,
        "static": t.static_w * seconds,
    }
    return Energy(joules=j, seconds=seconds)
