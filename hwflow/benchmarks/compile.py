"""``hwflow bench compile``: compile time and instruction-storage ratio of a large model.

Default: LLaMA-2-7B, FlightLLM-style plan, U280 preset, every prefill length and decode context
up to 2048. Targets: under 60 s on a 2-core machine, storage ratio above FlightLLM's ~500x.
"""

from __future__ import annotations

import argparse
import time

from hwflow.commands._common import print_json
from hwflow.compiler import compile_model, storage_report
from hwflow.config import load_hw, load_model, load_plan

HELP = "compile time and storage ratio (one template per bucket vs one program per length)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="llama2-7b")
    p.add_argument("--hw", default="u280")
    p.add_argument("--plan", default="flightllm")
    p.add_argument("--max-len", type=int, default=2048)
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    cfg, hw, plan = load_model(args.model), load_hw(args.hw), load_plan(args.plan)
    t0 = time.perf_counter()
    comp = compile_model(cfg, plan, hw, args.max_len)
    t1 = time.perf_counter()
    data = comp.program.to_bytes()
    t2 = time.perf_counter()
    st = storage_report(comp)
    t3 = time.perf_counter()
    out = {
        "model": cfg.name,
        "plan": plan.name,
        "preset": hw.name,
        "max_len": args.max_len,
        "compile_seconds": t1 - t0,
        "serialize_seconds": t2 - t1,
        "storage_report_seconds": t3 - t2,
        "file_bytes": len(data),
        **st,
    }
    if args.json:
        print_json(out)
        return 0
    print(
        f"{cfg.name} / {plan.name} on {hw.name}, lengths 1..{args.max_len}: compiled "
        f"{st['templates']} templates in {out['compile_seconds']:.1f} s "
        f"(+{out['serialize_seconds']:.2f} s to serialise, {len(data):,} B file)"
    )
    print(
        f"instruction storage: {st['template_bytes']:,} B of templates vs "
        f"{st['per_length_bytes']:,} B for {st['per_length_programs']} per-length programs: "
        f"{st['ratio']:,.0f}x (FlightLLM reports ~500x)"
    )
    print(
        f"one unrolled program per bucket (FlightLLM's scheme without loops): "
        f"{st['bucketed_unrolled_bytes']:,} B, ratio {st['ratio_bucketed_unrolled']:,.0f}x"
    )
    return 0
