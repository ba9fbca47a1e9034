"""Co-simulation speed of the whole accelerator (``hwflow bench cosim``): Verilog generation
and Verilator build of the tiny machine (cached by its RTL sources: ``--rebuild`` measures a
cold build), simulated cycles per second of the cocotb bench (HBM models, monitor and all),
and the end-to-end time of a model's prefill + decode steps (compile, functional simulator,
RTL run, comparison). The run is :func:`hwflow.hw.machine.cosim.cosim_model`."""

from __future__ import annotations

import argparse
import shutil
import time

HELP = "Verilator build time, simulated cycles/s and end-to-end time of hwflow cosim"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny-llama", help="model to co-simulate")
    p.add_argument("--plan", default="w8a8", help="compression plan")
    p.add_argument("--hw", default="tiny", help="hardware preset")
    p.add_argument("--prefill", type=int, default=16, help="prompt tokens")
    p.add_argument("--decode", type=int, default=8, help="decode steps")
    p.add_argument("--rebuild", action="store_true", help="discard a cached build first")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")


def run(args: argparse.Namespace) -> int:
    from hwflow.commands._common import print_json
    from hwflow.config import load_hw, load_model, load_plan
    from hwflow.hw.cosim import BUILD_ROOT, SIM_TOP
    from hwflow.hw.machine.cosim import cosim_model

    if args.rebuild:
        for d in BUILD_ROOT.glob(f"{SIM_TOP}-*"):
            if d.is_dir():
                shutil.rmtree(d)
    cfg, plan, hw = load_model(args.model), load_plan(args.plan), load_hw(args.hw)
    t0 = time.perf_counter()
    res = cosim_model(cfg, plan, hw, args.prefill, args.decode)
    row = {
        "model": cfg.name,
        "plan": plan.name,
        "preset": hw.name,
        "built_now": res["built"],
        "verilog_gen_s": res.get("gen_s", 0.0),
        "verilator_build_s": res["build_s"],
        "rtl_cycles": res.get("rtl_cycles", 0),
        "model_cycles": res.get("model_cycles", 0),
        "cycle_error": res.get("cycle_error", 0.0),
        "sim_cycles": res.get("sim_cycles", 0),
        "sim_cycles_per_s": res.get("sim_cycles_per_s", 0.0),
        "sim_cycles_per_cpu_s": res.get("sim_cycles_per_cpu_s", 0.0),
        "host_io_s": res.get("host_io_s", 0.0),
        "end_to_end_s": time.perf_counter() - t0,
        "bit_exact": res["bit_exact"],
        "missing_units": res.get("missing_units", []),
    }
    if args.json:
        print_json(row)
    else:
        for k, v in row.items():
            print(f"{k:<18} {v}")
    return 0
