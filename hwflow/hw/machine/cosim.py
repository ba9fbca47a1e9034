"""Co-simulation of a compiled model on the machine's Verilog against the functional simulator.

:func:`cosim_model` compiles the model (seeded random weights, quantized by the plan), runs
prefill of ``prefill`` tokens then ``decode`` greedy decode steps on
:class:`~hwflow.funcsim.FuncSim` (the executable reference) and, with the same step inputs,
on the RTL machine (:func:`hwflow.hw.machine.run.run_steps`), and compares the HBM bytes
every step writes (its ST rows: KV cache rows, logits) after it, bit for bit. A mismatch
names the first diverging instruction: the first ST of the step (dispatch order) that wrote
a differing byte. Cycles are
compared with the SimPy model of the same program (:mod:`hwflow.hw.machine.cycles`).

A unit slot without an implementation (:class:`~hwflow.hw.machine.top.AbsentUnit`) makes the
run not bit-exact, whatever the bytes say.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from hwflow.config import CompressionPlan, HardwarePreset, ModelConfig
from hwflow.errors import ConfigError, UnsupportedError
from hwflow.hw.machine.cycles import class_table, model_times
from hwflow.hw.machine.run import Step, run_steps
from hwflow.hw.machine.units import available_units
from hwflow.isa import LINK_OPS, TOKEN_UNITS, Concrete, Program, Runtime, disasm, expand

__all__ = ["cosim_model", "first_writer", "written"]


def first_writer(
    program: Program, phase: str, runtime: Runtime, addr: int
) -> tuple[Concrete, str] | None:
    """The first ST of the step (dispatch order) whose rows cover HBM byte ``addr``."""
    tmpl = program.select(phase, runtime)
    for c in expand(tmpl, runtime):
        if c.op != "ST":
            continue
        for i in range(c["rows"]):
            lo = c["hbm"] + i * c["hbm_stride"]
            if lo <= addr < lo + c["row_bytes"]:
                return c, f"{tmpl.phase} {tmpl.lo}..{tmpl.hi}"
    return None


def written(program: Program, phase: str, runtime: Runtime, size: int) -> np.ndarray:
    """Mask of the HBM bytes the step's ST instructions write (what a step produces)."""
    mask = np.zeros(size, bool)
    for c in expand(program.select(phase, runtime), runtime):
        if c.op == "ST":
            for i in range(c["rows"]):
                lo = c["hbm"] + i * c["hbm_stride"]
                mask[lo : lo + c["row_bytes"]] = True
    return mask


def _reference(cfg: ModelConfig, plan: CompressionPlan, hw: HardwarePreset, prefill: int,
               decode: int, seed: int) -> dict[str, Any]:  # fmt: skip
    """Compile, quantize and run the steps on FuncSim: inputs and HBM after each step."""
    from hwflow.compiler import compile_model
    from hwflow.compiler.layout import build_hbm_image
    from hwflow.compress import quantize_model, random_weights
    from hwflow.funcsim import FuncSim

    comp = compile_model(cfg, plan, hw, prefill + decode)
    qm = quantize_model(cfg, plan, random_weights(cfg, seed))
    image = build_hbm_image(comp.layout, qm)
    fs = FuncSim(comp.program, hw, cfg, comp.layout, image.copy())
    rng = np.random.default_rng(seed + 11)
    inp = comp.layout.region("input").base
    xs = [qm.embed(rng.integers(cfg.vocab, size=prefill), 0)]
    steps, after, instrs = [], [], 0
    logits = fs.step("prefill", xs[0], 0)
    steps.append(Step("prefill", Runtime(prefill, 0), inp, _raw(xs[0])))
    after.append(fs.hbm.copy())
    instrs += fs.last_stats.instructions
    for pos in range(prefill, prefill + decode):
        x = qm.embed(np.array([int(np.argmax(logits))]), pos)
        logits = fs.step("decode", x, pos)
        steps.append(Step("decode", Runtime(1, pos), inp, _raw(x)))
        after.append(fs.hbm.copy())
        instrs += fs.last_stats.instructions
    return {"comp": comp, "image": image, "steps": steps, "after": after, "instrs": instrs}


def _raw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x).astype("<i4")).view(np.uint8).ravel()


def check_single_board(program: Program) -> None:
    """UnsupportedError for a multi-board program: the RTL machine has no link ports."""
    links = sorted({i.op for t in program.templates for i in t.instrs if i.op in LINK_OPS})
    if links or "board" in program.header:
        raise UnsupportedError(
            f"a multi-board program ({', '.join(links) or 'board header'}): the RTL machine "
            "runs one board, without board-to-board link ports"
        )


def _first_mismatch(prog: Any, ref: dict[str, Any], run: Any) -> dict[str, Any] | None:
    """The first step whose HBM bytes written by the program differ from the functional
    simulator's: its first differing byte, how many differ, and the instruction that wrote it."""
    for i, (step, want, got) in enumerate(zip(ref["steps"], ref["after"], run.hbm, strict=True)):
        mask = written(prog, step.phase, step.runtime, want.size)
        diff = np.nonzero((got != want) & mask)[0]
        if not diff.size:
            continue
        mismatch: dict[str, Any] = {
            "step": i,
            "phase": step.phase,
            "byte": int(diff[0]),
            "bytes": int(diff.size),
        }
        w = first_writer(prog, step.phase, step.runtime, int(diff[0]))
        if w is not None:
            c, tmpl = w
            mismatch.update(pc=c.pc, unit=c.unit.name, template=tmpl,
                            disasm=disasm(prog.select(step.phase, step.runtime).instrs[c.pc]))  # fmt: skip
        return mismatch
    return None


def _cycle_figures(hw: HardwarePreset, prog: Any, ref: dict[str, Any], run: Any) -> dict[str, Any]:
    """RTL cycles (after each step's fetch) against the cycle model's, per program, per step and
    per instruction class (mean busy cycles)."""
    rtl = sum(s["cycles"] - s["fetch_cycles"] for s in run.steps)
    model, table, per_step = 0, {}, []
    for step, s in zip(ref["steps"], run.steps, strict=True):
        cyc, per = model_times(hw, prog, step.phase, step.runtime)
        model += cyc
        per_step.append({"phase": step.phase, "rtl": s["cycles"] - s["fetch_cycles"], "model": cyc})
        for row in class_table(s["records"], per):
            acc = table.setdefault(row.name, [0, 0.0, 0.0])
            acc[0] += row.count
            acc[1] += row.rtl * row.count
            acc[2] += row.model * row.count
    return dict(
        rtl_cycles=rtl,
        fetch_cycles=sum(s["fetch_cycles"] for s in run.steps),
        model_cycles=model,
        cycle_error=(rtl - model) / model if model else 0.0,
        step_cycles=per_step,  # per step: the RTL's cycles after the fetch, the model's
        classes={
            k: {
                "n": v[0],
                "rtl": v[1] / v[0],
                "model": v[2] / v[0],
                "error": (v[1] - v[2]) / v[2] if v[2] else 0.0,
            }
            for k, v in table.items()
        },
    )


def cosim_model(cfg: ModelConfig, plan: CompressionPlan, hw: HardwarePreset, prefill: int,
                decode: int, *, seed: int = 0, flip_weight_bit: bool = False,
                timeout: int = 5_000_000, waves: Path | None = None) -> dict[str, Any]:  # fmt: skip
    """Run and compare (module doc); returns the figures (``bit_exact`` and the rest).
    ``flip_weight_bit`` flips one bit of the first weight tile in the RTL's HBM image only
    (a must-fail check: the run must then differ). ``waves``: write the run's VCD there."""
    if prefill < 1 or decode < 0:
        raise ConfigError(f"--prefill {prefill} must be >= 1 and --decode {decode} >= 0")
    ref = _reference(cfg, plan, hw, prefill, decode, seed)
    prog = ref["comp"].program
    check_single_board(prog)
    units, names = available_units(hw)
    t0 = time.perf_counter()
    image = ref["image"].copy()
    if flip_weight_bit:
        tile = ref["comp"].layout.tiles[0][0]
        image[ref["comp"].layout.region("L0").base + tile.offset] ^= 0x80  # an INT8 sign bit
    run = run_steps(hw, prog, image, ref["steps"], units=units, timeout=timeout, waves=waves)
    wall = time.perf_counter() - t0
    out: dict[str, Any] = {
        "model": cfg.name,
        "plan": plan.name,
        "preset": hw.name,
        "units": names,
        "missing_units": [u.name for u in TOKEN_UNITS if u.name not in names and u.value > 1],
        "gen_s": run.gen_s,
        "build_s": run.build_s,
        "built": run.built,
        "instructions": ref["instrs"],
    }
    if run.failed or len(run.hbm) != len(ref["steps"]):
        out.update(bit_exact=False, mismatch={"reason": "the RTL run did not finish every step"})
        return out
    mismatch = _first_mismatch(prog, ref, run)
    absent = any(s["absent_used"] for s in run.steps)
    cpu = run.extra.get("sim_cpu_seconds", 0.0)
    out.update(
        bit_exact=mismatch is None and not absent,
        absent_unit_used=absent,
        mismatch=mismatch,
        **_cycle_figures(hw, prog, ref, run),
        sim_cycles=run.sim_cycles,
        sim_cycles_per_s=run.sim_cycles / run.sim_seconds if run.sim_seconds else 0.0,
        # per CPU second of the simulator process: the rate on a machine not shared with others
        sim_cycles_per_cpu_s=run.sim_cycles / cpu if cpu else 0.0,
        # of the simulation's wall time, the host's image reads and input writes between steps
        host_io_s=run.extra.get("host_seconds", 0.0),
        wall_s=wall,
        records=[
            {
                "step": i,
                "unit": TOKEN_UNITS[r[0]].name,
                "pc": r[1],
                "start": r[2],
                "end": r[3],
                "wait": r[4] if len(r) > 4 else 0,
            }
            for i, s in enumerate(run.steps)
            for r in s["records"]
        ],
    )
    return out
