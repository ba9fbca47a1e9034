"""Yosys resource estimates of the engines (``hwflow bench synth``): the tiny preset's MV and
MPE engines whole, and a slice of the u280 MV engine (a whole 128-chain engine is too large
for a quick Yosys run; its counts scale with the chain count, as the slice's per-chain figures
show). Each run is ``synth_xilinx`` as in :mod:`hwflow.hw.synth` (minutes per design)."""

from __future__ import annotations

import argparse
import json

HELP = "Yosys LUT/FF/DSP/RAM counts and cascade check: tiny MV/MPE and a u280 MV slice"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--slice", type=int, default=8, help="chains of the u280 MV slice (8)")
    p.add_argument("--json", action="store_true", help="print the reports as JSON")


def run(args: argparse.Namespace) -> int:
    from hwflow.config import load_hw
    from hwflow.hw.params import EngineParams
    from hwflow.hw.synth import synthesize

    cases = [("tiny", "mv", None), ("tiny", "mpe", None), ("u280", "mv", args.slice)]
    reports = []
    for preset, kind, chains in cases:
        p = EngineParams.from_preset(load_hw(preset), kind, chains)  # type: ignore[arg-type]
        reports.append((preset, kind, synthesize(p)))
    if args.json:
        print(json.dumps([r.as_dict() | {"preset": pr, "engine": k} for pr, k, r in reports]))
        return 0
    print(
        f"{'design':<22} {'chains':>6} {'LUT':>7} {'FF':>7} {'SRL':>6} {'DSP48E2':>8} "
        f"{'chain DSP':>9} {'BRAM36':>7} {'URAM':>5} {'cascade':>12} {'yosys s':>8}"
    )
    for preset, kind, r in reports:
        casc = f"{r.cascade_links}/{r.cascade_expected}"
        print(
            f"{preset + ' ' + kind:<22} {r.chains:>6} {r.lut:>7} {r.ff:>7} {r.srl:>6} "
            f"{r.dsp:>8} {r.chain_dsps:>9} {r.bram36:>7g} {r.uram:>5} {casc:>12} "
            f"{r.seconds:>8.0f}"
        )
    return 0
