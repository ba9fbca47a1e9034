"""Verilog generation (``hwflow rtl``): the engines of a preset, a manifest, and a lint check.

The Verilog is hierarchical (:mod:`hwflow.hw.hier`): each engine's file holds its distinct
leaf modules once (chain slice, output-buffer column, requantizer) and the top, which
instantiates them; the manifest lists each module with its instance count.

Files are rewritten only when their text changes, so Verilator builds keyed by the Verilog's
hash (and make's timestamps) stay warm. The manifest (``manifest.json``) records, per engine,
the parameters (:meth:`EngineParams.describe`), every port with its direction and width, the
bit fields of the stream payloads, and the pipeline latency, so a driver written in any
language can talk to the Verilog without Amaranth.
"""

from __future__ import annotations

import gc
import hashlib
import json
import re
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any, Literal

from amaranth.back import verilog
from amaranth.hdl import Shape, UnusedElaboratable, Value
from amaranth.lib import data, wiring

from hwflow.config import HardwarePreset
from hwflow.errors import HwflowError, UnsupportedError
from hwflow.hw.engine import ChainEngine, MatrixMatrixEngine, MatrixVectorEngine
from hwflow.hw.hier import Hierarchy
from hwflow.hw.machine.verilog import fast_generation
from hwflow.hw.params import EngineParams
from hwflow.hw.tools import ROOT, ensure_verilator_on_path

__all__ = [
    "DEFAULT_OUT",
    "LINT_WAIVERS",
    "board_design",
    "board_units",
    "build_engine",
    "describe_layout",
    "engine_design",
    "engine_ports",
    "engine_verilog",
    "lint",
    "module_name",
    "write_accelerator",
    "write_if_changed",
    "write_rtl",
]

DEFAULT_OUT = ROOT / "rtl" / "generated"
#: Hand-written Verilator lint waivers (one comment per waiver).
LINT_WAIVERS = ROOT / "rtl" / "lint.vlt"


def module_name(p: EngineParams) -> str:
    """Verilog module name of an engine: ``hwflow_<preset>_<kind>`` (the preset name with
    every non-word character as ``_``); slices add their chain count where they are built."""
    base = re.sub(r"\W", "_", p.preset)
    return f"hwflow_{base}_{p.kind}"


def build_engine(
    p: EngineParams, hier: Hierarchy | None = None, prefix: str = "hwflow"
) -> ChainEngine:
    cls = MatrixVectorEngine if p.kind == "mv" else MatrixMatrixEngine
    return cls(p, hier, prefix)


def engine_design(p: EngineParams, name: str | None = None) -> tuple[str, ChainEngine, Hierarchy]:
    """The hierarchical Verilog of one engine (top module ``name``, default
    :func:`module_name`; leaves ``<name>_slice`` ...), the engine and its hierarchy."""
    name = name or module_name(p)
    hier = Hierarchy()
    eng = build_engine(p, hier, prefix=name)
    with fast_generation():
        top = verilog.convert(eng, name=name, emit_src=False)
    return hier.verilog() + top, eng, hier


def engine_verilog(p: EngineParams, name: str | None = None) -> str:
    """The Verilog text of one engine: its leaf modules, then the top module ``name``."""
    return engine_design(p, name)[0]


def engine_ports(eng: wiring.Component) -> list[dict[str, Any]]:
    """Every Verilog port of an engine: name, direction, width (``clk``/``rst`` first)."""
    ports = [
        {"name": "clk", "dir": "in", "width": 1},
        {"name": "rst", "dir": "in", "width": 1},
    ]
    for path, member, value in eng.signature.flatten(eng):
        ports.append(
            {
                "name": "__".join(str(x) for x in path),
                "dir": "in" if member.flow == wiring.In else "out",
                "width": len(Value.cast(value)),
            }
        )
    return ports


def describe_layout(layout: Any) -> Any:
    """A layout as plain data: structs -> {field: {offset, ...}}, arrays -> length + element."""
    if isinstance(layout, data.StructLayout):
        return {
            name: {"offset": f.offset, "width": Shape.cast(f.shape).width}
            | ({"layout": describe_layout(f.shape)} if isinstance(f.shape, data.Layout) else {})
            for name, f in layout
        }
    if isinstance(layout, data.ArrayLayout):
        elem = layout.elem_shape
        return {
            "length": layout.length,
            "elem_width": Shape.cast(elem).width,
            "elem_signed": Shape.cast(elem).signed,
        } | ({"elem": describe_layout(elem)} if isinstance(elem, data.Layout) else {})
    return {"width": Shape.cast(layout).width, "signed": Shape.cast(layout).signed}


def write_if_changed(path: Path, text: str) -> bool:
    """Write ``text`` unless the file already holds it; True if written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and path.read_text() == text:
        return False
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return True


def write_rtl(
    hw: HardwarePreset,
    out: Path | None = None,
    kinds: tuple[Literal["mv", "mpe"], ...] = ("mv", "mpe"),
    chains: int | None = None,
    accelerator: bool = True,
) -> dict[str, Any]:
    """Write the Verilog of the preset's engines (or slices of ``chains`` chains), with
    ``accelerator`` (and no ``chains``) the whole machine (:func:`write_accelerator`), and
    ``manifest.json`` into ``out``."""
    out = Path(out) if out is not None else DEFAULT_OUT / hw.name
    engines: dict[str, Any] = {}
    for kind in kinds:
        p = EngineParams.from_preset(hw, kind, chains)
        name = module_name(p)
        if p.chains != getattr(hw, kind).chains:
            name += f"_c{p.chains}"
        t0 = time.perf_counter()
        text, eng, hier = engine_design(p, name)
        seconds = time.perf_counter() - t0
        path = out / f"{name}.v"
        write_if_changed(path, text)
        engines[kind] = {
            "module": name,
            "file": path.name,
            "sha256": hashlib.sha256(text.encode()).hexdigest(),
            "verilog_lines": text.count("\n"),
            "generate_seconds": round(seconds, 2),
            "modules": {"top": name, "leaves": hier.counts()},
            "params": p.describe(),
            "ports": engine_ports(eng),
            "payloads": {
                "i": describe_layout(p.beat_layout),
                "gmult": describe_layout(p.gmult_layout),
                "p": describe_layout(p.params_layout),
                "o": describe_layout(p.result_layout),
            },
            "timing": {
                "latency": p.latency,
                "drain_cycles": {str(n): p.drain_cycles(n) for n in p.n_modes},
                "note": "a row group's first drain word leaves latency cycles after its last "
                "beat (inclusive), its D = drain_cycles[N] words on consecutive cycles; a "
                "result occupies the input for max(K/M, D) cycles (hwflow.costs.matmul_cost)",
            },
        }
    manifest = {"preset": hw.name, "preset_digest": hw.digest, "engines": engines}
    if accelerator and chains is None:
        manifest["accelerator"] = write_accelerator(hw, out)
    write_if_changed(out / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def board_units(hw: HardwarePreset, hier: Hierarchy | None) -> tuple[dict, list[str]]:
    """Factories of the machine's implemented compute units (as
    :func:`hwflow.hw.machine.units.available_units`), the MM/MV units' engines placed
    through ``hier`` (each distinct engine module once); the unit names."""
    from hwflow.hw.machine.units import available_units
    from hwflow.isa import Buf, Unit

    units, names = available_units(hw)
    if hier is not None and Unit.MM in units:
        from hwflow.hw.machine.mmu import MatmulUnit

        for u, kind in ((Unit.MM, "mpe"), (Unit.MV, "mv")):
            units[u] = lambda mp, kind=kind: MatmulUnit(hw, kind, mp.word_bytes[Buf.ACT], hier)
    return units, names


def board_design(hw: HardwarePreset, name: str | None = None) -> tuple[str, str, Hierarchy, Any]:
    """(module name, Verilog, hierarchy, machine parameters) of the whole accelerator on
    per-channel HBM ports (:class:`~hwflow.hw.machine.board.Board`) with every implemented
    unit, the engines' leaves as modules of their own. UnsupportedError when the RTL machine
    does not build for ``hw``."""
    from hwflow.hw.machine.board import Board
    from hwflow.hw.machine.params import MachineParams

    mp = MachineParams.from_preset(hw)
    name = name or "hwflow_" + re.sub(r"\W", "_", hw.name) + "_board"
    hier = Hierarchy()
    units, _names = board_units(hw, hier)
    refused = None
    with warnings.catch_warnings():
        try:
            with fast_generation():
                top = verilog.convert(Board(mp, units, hier), name=name, emit_src=False)
        except UnsupportedError as e:  # a unit refused the preset half-way through
            refused = str(e)
            # the parts built before it were never elaborated: not a design mistake to warn of
            warnings.simplefilter("ignore", UnusedElaboratable)
        if refused is not None:
            gc.collect()
    if refused is not None:
        raise UnsupportedError(refused)
    return name, hier.verilog() + top, hier, mp


def _board_cached(hw: HardwarePreset) -> tuple[str, dict[str, Any]]:
    """:func:`board_design`'s Verilog and facts (module, generation seconds, leaf counts,
    machine parameters), cached under the Verilator build root keyed by what they are made
    of (:func:`hwflow.hw.cosim.machine_key` of the machine's sources and parameters, the
    preset, and this module, the hierarchy and the memory shapes)."""
    from hwflow.hw.cosim import BUILD_ROOT, machine_key
    from hwflow.hw.machine.params import MachineParams

    mp = MachineParams.from_preset(hw)  # UnsupportedError: not buildable
    here = Path(__file__).parent
    own = b"".join((here / f).read_bytes() for f in ("generate.py", "hier.py", "memories.py"))
    key = machine_key(mp, f"board;{hw.digest};{hashlib.sha256(own).hexdigest()}")
    bdir = BUILD_ROOT / f"board-{key}"
    src, meta = bdir / "board.v", bdir / "board.json"
    if src.is_file() and meta.is_file():
        return src.read_text(), json.loads(meta.read_text())
    t0 = time.perf_counter()
    name, text, hier, _mp = board_design(hw)
    facts = {
        "module": name,
        "generate_seconds": round(time.perf_counter() - t0, 2),
        "leaves": hier.counts(),
        "word_bytes": mp.beat_bytes,
        "hbm_ports": {
            "channels": mp.channels,
            "data_bits": mp.port_bits,
            "max_burst_bytes": mp.port_burst_bytes,
        },
        "queue_depth": mp.queue_depth,
    }
    write_if_changed(src, text)
    write_if_changed(meta, json.dumps(facts))
    return text, facts


def write_accelerator(hw: HardwarePreset, out: Path) -> dict[str, Any]:
    """Write the whole machine on per-channel HBM ports (:func:`board_design`, cached by
    :func:`_board_cached`) as ``board.v`` into ``out``; its manifest entry. A preset the
    machine cannot be built for gets ``{"skipped": reason}``."""
    try:
        text, facts = _board_cached(hw)
    except UnsupportedError as e:
        return {"skipped": str(e)}
    _units, names = board_units(hw, None)
    path = out / "board.v"
    write_if_changed(path, text)
    return {
        **facts,
        "file": path.name,
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "verilog_lines": text.count("\n"),
        "units": names,
    }


def lint(files: list[Path], top: str) -> list[str]:
    """``verilator --lint-only -Wall`` with the documented waivers; the warnings left (empty
    when clean). Raises HwflowError if Verilator itself cannot run."""
    ensure_verilator_on_path()
    cmd = ["verilator", "--lint-only", "-Wall", "--top-module", top, str(LINT_WAIVERS)]
    cmd += [str(f) for f in files]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except OSError as e:
        raise HwflowError(f"cannot run verilator: {e}") from None
    msgs = [ln for ln in res.stderr.splitlines() if ln.startswith("%")]
    if res.returncode and not msgs:
        raise HwflowError(f"verilator failed: {res.stderr.strip()[:500]}")
    return msgs
