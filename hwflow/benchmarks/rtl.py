"""RTL simulation speed: Verilator build time and simulated cycles per second of the
matrix-vector engine, for the tiny preset and a u280-sized engine (``hwflow bench rtl``).
The Verilog is hierarchical (one module per distinct leaf, instantiated per chain), which
Verilator compiles once per module.

The build is the cocotb runner's (Verilog from Amaranth, ``verilator -O3``, C++ compile);
the cycles per second are measured inside the simulator by the bench's ``throughput`` test (a
stream of beats, one per cycle, results collected through cocotb), so they include cocotb's
per-cycle cost, which is what the benches pay. A build is cached under rtl/build keyed by the
Verilog's hash: ``--rebuild`` measures a cold build again.
"""

from __future__ import annotations

import argparse
import json
import shutil

HELP = "Verilator build time and simulated cycles/s of the tiny and u280 MV engines (or slices)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--hw",
        nargs="+",
        default=["tiny", "u280"],
        help="presets whose MV engine to measure (tiny u280)",
    )
    p.add_argument(
        "--max-chains",
        type=int,
        default=16,
        help="measure engines with more chains as a slice of this many (16; 0: whole engine; "
        "the whole u280 MV engine is ~21k lines of hierarchical Verilog, a Verilator build of "
        "tens of minutes on 2 busy cores)",
    )
    p.add_argument("--cycles", type=int, default=2000, help="cycles of the throughput run")
    p.add_argument(
        "--hierarchical",
        action="store_true",
        help="Verilator --hierarchical, the chain slice as a hier_block compiled once "
        "(Verilator 5 otherwise emits scheduling code per instance of a module)",
    )
    p.add_argument("--rebuild", action="store_true", help="discard a cached build first")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")


def run(args: argparse.Namespace) -> int:
    from hwflow.config import load_hw
    from hwflow.errors import HwflowError
    from hwflow.hw.cosim import BUILD_ROOT, run_bench
    from hwflow.hw.generate import module_name
    from hwflow.hw.params import EngineParams

    rows = []
    for name in args.hw:
        hw = load_hw(name)
        slice_ = args.max_chains if 0 < args.max_chains < hw.mv.chains else None
        p = EngineParams.from_preset(hw, "mv", slice_)
        mod = module_name(p) if p.chains == hw.mv.chains else f"{module_name(p)}_c{p.chains}"
        if args.rebuild:
            for d in BUILD_ROOT.glob(f"{mod}-*"):
                shutil.rmtree(d)
        run_ = run_bench(
            p,
            testcase="throughput",
            env={"HWFLOW_THROUGHPUT_CYCLES": str(args.cycles)},
            preset_chains=hw.mv.chains,
            hierarchical=args.hierarchical,
        )
        if run_.failed or "throughput_wall_s" not in run_.stats:
            raise HwflowError(f"{mod}: throughput bench failed ({run_})")
        cyc = run_.stats["throughput_cycles"]
        rows.append(
            {
                "preset": hw.name,
                "module": mod,
                "chains": p.chains,
                "dsps": p.dsps,
                "verilog_lines": run_.verilog_lines,
                "amaranth_to_verilog_s": round(run_.gen_s, 2),
                "verilator_build_s": round(run_.build_s, 1),
                "cached_build": not run_.built,
                "sim_cycles": cyc,
                "cycles_per_s": round(cyc / run_.stats["throughput_wall_s"]),
                "macs_per_s": round(p.macs_per_cycle * cyc / run_.stats["throughput_wall_s"]),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"{'engine':<24} {'chains':>6} {'Verilog lines':>13} {'gen s':>6} {'build s':>8} "
        f"{'cycles/s':>9} {'sim MAC/s':>10}"
    )
    for r in rows:
        build = f"{r['verilator_build_s']:.1f}" + ("*" if r["cached_build"] else "")
        print(
            f"{r['module']:<24} {r['chains']:>6} {r['verilog_lines']:>13} "
            f"{r['amaranth_to_verilog_s']:>6.1f} {build:>8} {r['cycles_per_s']:>9} "
            f"{r['macs_per_s']:>10.3g}"
        )
    if any(r["cached_build"] for r in rows):
        print("* build time recorded when the cached build was made (--rebuild to redo)")
    return 0
