"""Yosys resource estimates (``hwflow bench synth``): the whole tiny design and slices of the
u280 engines module by module (:func:`hwflow.hw.synth.synth_design`), and the validation of
that method (:func:`hwflow.hw.synth.validate_method`): a flat synthesis of a small u280 MV
slice (one Yosys run of the whole slice) must agree with the per-module sum within 5% on LUT,
FF and DSP. Yosys runs take minutes per design; module results are cached under
rtl/build/synth."""

from __future__ import annotations

import argparse
import json

HELP = "Yosys DSP/LUT/FF/RAM estimates per module x instances, validated against a flat run"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--slice", type=int, default=8, help="chains of the u280 slices (8; 0: whole)")
    p.add_argument("--json", action="store_true", help="print the reports as JSON")


def run(args: argparse.Namespace) -> int:
    from hwflow.config import load_hw
    from hwflow.hw.synth import synth_design, validate_method

    tiny, u280 = load_hw("tiny"), load_hw("u280")
    designs = [synth_design(tiny), synth_design(u280, args.slice or None)]
    check = validate_method(u280)
    hier, flat_c, dev = check["per_module"], check["flat"], check["deviation"]
    if args.json:
        print(json.dumps({"designs": designs, "validation": check}, indent=2))
        return 0
    print(
        f"{'design':<22} {'DSP':>6} {'LUT':>8} {'FF':>8} {'BRAM36':>7} {'URAM':>5} {'cascade':>11} fits"
    )
    for d in designs:
        scope = d["preset"] + (f" c{d['chains']}" if d["chains"] else "")
        casc = f"{d['cascade_links']}/{d['cascade_expected']}"
        print(
            f"{scope:<22} {d['dsp']:>6g} {d['lut']:>8g} {d['ff']:>8g} {d['bram36']:>7g} "
            f"{d['uram']:>5g} {casc:>11} {d['fits']}"
        )
    print(f"{check['slice']}, flat synthesis vs per-module sum (the method's validation):")
    for k in hier:
        print(f"  {k:<4} flat {flat_c[k]:>7} per module {hier[k]:>9g}  {100 * dev[k]:+.1f}%")
    return 0
