"""Run programs on the machine's Verilog (Verilator + ``sim/machine_bench.py``) from Python.

:func:`run_steps` builds the machine once (cached, :func:`hwflow.hw.cosim.build_machine`),
writes the case (HBM image with the ``program`` region, the steps), runs the bench and returns
the HBM after every step, the dumped buffers and the per-instruction cycle records.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hwflow.compiler.batch import RTL_NO_BATCH
from hwflow.compiler.layout import place_program, program_image
from hwflow.config import HardwarePreset
from hwflow.errors import ProgramError, UnsupportedError
from hwflow.hw.machine.params import MachineParams
from hwflow.isa import TOKEN_UNITS, Buf, Program, Runtime, Template, Unit

__all__ = ["MachineRun", "Step", "program_hbm", "run_steps"]


@dataclass(frozen=True)
class Step:
    """One step: the template to run, its runtime registers, and the bytes the host writes
    at HBM byte ``input_addr`` before it (the step's input rows)."""

    phase: str
    runtime: Runtime
    input_addr: int = 0
    input: np.ndarray | None = None


@dataclass
class MachineRun:
    """What the machine did: HBM after each step, the dumped buffers, per-step stats."""

    hbm: list[np.ndarray]
    buffers: dict[Buf, np.ndarray]
    steps: list[dict[str, Any]]
    sim_cycles: int
    sim_seconds: float
    build_s: float
    built: bool
    gen_s: float
    tests: int = 0
    failed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def program_hbm(hbm: np.ndarray, program: Program, hw: HardwarePreset) -> tuple[np.ndarray, int]:
    """``hbm`` with the program region appended (at the program's ``program`` region when it
    has one, else right after ``hbm``); returns the image and the region's base."""
    try:
        base = program.region("program").base
    except ProgramError:
        base = place_program(hbm.size, program.templates, hw).base
    code, _ = program_image(program.templates)
    img = np.zeros(max(hbm.size, base + code.size), np.uint8)
    img[: hbm.size] = hbm
    img[base : base + code.size] = code
    return img, base


def _template_addr(program: Program, base: int, t: Template) -> int:
    _, offs = program_image(program.templates)
    return base + offs[program.templates.index(t)]


def refuse_batched(program: Program, steps: Sequence[Step] = ()) -> None:
    """UnsupportedError for a batched program or a step that needs the context table."""
    batch = int(program.header.get("batch", 1))
    if batch > 1 or any(s.runtime.positions or s.runtime.seq for s in steps):
        raise UnsupportedError(f"program for a batch of {batch}: {RTL_NO_BATCH}")


def run_steps(
    hw: HardwarePreset,
    program: Program,
    hbm: np.ndarray,
    steps: Sequence[Step],
    *,
    units: Mapping[Unit, Any] | None = None,
    dump: Sequence[Buf] = (),
    timeout: int = 2_000_000,
    waves: Path | None = None,
) -> MachineRun:
    """Run ``steps`` of ``program`` on the machine from HBM image ``hbm`` (data regions);
    ``waves``: write the run's VCD there (a traced build, :func:`~hwflow.hw.cosim.build_machine`)."""
    from hwflow.hw.cosim import SIM_TOP, build_machine, run_machine_bench
    from hwflow.hw.machine.hbm_sim import SIM_HBM_BYTES

    refuse_batched(program, steps)
    mp = MachineParams.from_preset(hw)
    units = dict(units or {})
    bdir, built, build_s, facts = build_machine(hw, mp, units, waves=waves is not None)
    img, base = program_hbm(hbm, program, hw)
    if img.size > SIM_HBM_BYTES:
        raise UnsupportedError(
            f"the HBM image with its program ({img.size:,} bytes) exceeds the simulated HBM's "
            f"{SIM_HBM_BYTES:,} bytes (hwflow.hw.machine.hbm_sim.SIM_HBM_BYTES)"
        )
    rows = []
    for s in steps:
        t = program.select(s.phase, s.runtime)
        addr = _template_addr(program, base, t)
        rt = s.runtime
        rows.append([addr, len(t.words), rt.length, rt.pos, timeout, s.input_addr])
    inputs = {f"in{i}": s.input for i, s in enumerate(steps) if s.input is not None}
    with tempfile.TemporaryDirectory(prefix="hwflow-machine-") as tmp:
        case, out = Path(tmp) / "case.npz", Path(tmp) / "out.npz"
        np.savez(
            case,
            hbm=img,
            steps=np.asarray(rows, np.int64),
            dump=np.asarray([[b.value, mp.words[b]] for b in dump], np.int64).reshape(-1, 2),
            **inputs,
        )
        env = {
            "HWFLOW_PRESET": hw.name,
            "HWFLOW_CASE": str(case),
            "HWFLOW_OUT": str(out),
            "HWFLOW_UNITS": ",".join(u.name for u in TOKEN_UNITS),  # the monitor's bit order
        }
        env.update({k: v for k, v in os.environ.items() if k.startswith("HWFLOW_CORRUPT")})
        tests, failed, _ = run_machine_bench(bdir, SIM_TOP, env, waves=waves)
        if not out.is_file():
            return MachineRun([], {}, [], 0, 0.0, build_s, built, facts["gen_s"], tests, failed)
        res = np.load(out)
        stats = json.loads(res["stats"].tobytes())
        return MachineRun(
            hbm=[res[f"hbm{i}"][: hbm.size].copy() for i in range(len(steps))],
            buffers={b: res[f"buf{b.value}"].copy() for b in dump},
            steps=stats["steps"],
            sim_cycles=stats["sim_cycles"],
            sim_seconds=stats["sim_seconds"],
            build_s=build_s,
            built=built,
            gen_s=facts["gen_s"],
            tests=tests,
            failed=failed,
            extra={k: stats.get(k, 0.0) for k in ("sim_cpu_seconds", "host_seconds")},
        )
