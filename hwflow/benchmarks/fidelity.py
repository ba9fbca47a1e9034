"""``hwflow bench fidelity``: FlightLLM's published results (``mappings/measurements/
flightllm.yaml``) next to the replicas' figures for the same cases, with the ratio and the
source of each. Profiler figures are FlightLLM's simulation, which divides every instruction
time by 3.2; the replica's figure with that divisor applied explicitly is printed beside it
(:func:`hwflow.analysis.flightllm.with_profiler_divisor`). Nothing is fitted to these figures."""

from __future__ import annotations

import argparse

HELP = "FlightLLM's published U280/VHK158 results next to the replicas' (ratio, source)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--decode",
        type=int,
        default=None,
        help="decode steps per case (default: each figure's own; fewer runs faster)",
    )
    p.add_argument("--workers", type=int, default=1)


def run(args: argparse.Namespace) -> int:
    from hwflow.analysis.measurements import flightllm_figures
    from hwflow.analysis.validate import replica_figure
    from hwflow.config import load_hw, load_model, load_plan
    from hwflow.perf.sim import compile_cached, simulate

    cfg = load_model("llama2-7b")
    cache: dict[tuple, object] = {}
    print(f"{'published':>10} {'model':>9} {'model/pub':>9} {'x3.2/pub':>9}  figure")
    for f in flightllm_figures():
        decode = args.decode or f.decode
        if f.context is not None and f.context > f.prefill + decode:
            print(f"{'':>41}skipped: {f.name} (context {f.context} beyond --decode {decode})")
            continue
        key = (f.hw, f.plan, f.prefill, decode)
        if key not in cache:
            hw, plan = load_hw(f.hw), load_plan(f.plan)
            prog = compile_cached(cfg, plan, hw, 2048)
            cache[key] = simulate(
                cfg, plan, hw, f.prefill, decode, program=prog, workers=args.workers
            )
        _, model, scaled = replica_figure(f, cache[key])
        div = f"{scaled / f.value:>9.3f}" if f.kind == "profiler" else f"{'-':>9}"
        print(
            f"{f.value:>10.1f} {model:>9.1f} {model / f.value:>9.3f} {div}  {f.name} ({f.metric}, {f.kind})"
        )
        print(f"{'':>41}case: --hw {f.hw} --plan {f.plan} --prefill {f.prefill} --decode {decode}")
        print(f"{'':>41}source: {f.source}")
    return 0
