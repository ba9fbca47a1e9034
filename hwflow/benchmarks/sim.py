"""``hwflow bench sim``: wall time of the LLaMA-2-7B prefill-512 + decode-1536 case and the
SimPy event rate. The program is compiled (or loaded from the cache) before the clock starts;
its compile time is printed apart."""

from __future__ import annotations

import argparse
import os
import resource
import time

HELP = "wall time of a long simulated case (default LLaMA-2-7B, 512 + 1536) and SimPy events/s"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="llama2-7b")
    p.add_argument("--hw", default="u280")
    p.add_argument("--plan", default="flightllm")
    p.add_argument("--prefill", type=int, default=512)
    p.add_argument("--decode", type=int, default=1536)
    p.add_argument("--mode", choices=("fast", "exact"), default="fast")
    p.add_argument("--workers", type=int, default=2)


def run(args: argparse.Namespace) -> int:
    from hwflow.config import load_hw, load_model, load_plan
    from hwflow.perf.sim import compile_cached, simulate

    cfg, hw, plan = load_model(args.model), load_hw(args.hw), load_plan(args.plan)
    max_len = min(cfg.max_positions, 2048)
    t0 = time.perf_counter()
    prog = compile_cached(cfg, plan, hw, max_len)
    t1 = time.perf_counter()
    cpu0 = _cpu()
    res = simulate(
        cfg, plan, hw, args.prefill, args.decode, mode=args.mode, program=prog, workers=args.workers
    )
    wall = time.perf_counter() - t1
    cpu = _cpu() - cpu0
    print(
        f"case: {cfg.name} on {hw.name}, plan {plan.name}, prefill {args.prefill} + decode "
        f"{args.decode}, mode {args.mode}, {args.workers} worker(s)"
    )
    print(f"compile or cache load: {t1 - t0:.2f} s (not in the figure below)")
    print(
        f"simulation wall time: {wall:.2f} s (target < 10 s); CPU time {cpu:.2f} s "
        f"(this process + workers); load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} CPUs"
    )
    print(
        f"steps simulated: {res.simulated_steps} (decode buckets {res.decode_buckets}, steps "
        f"simulated apart {res.fallback_steps})"
    )
    run = res.events - res.replayed_events
    print(
        f"SimPy events: {res.events:,} ({run:,} run, {res.replayed_events:,} in replayed "
        f"segments); events/s: {res.events / wall:,.0f} ({run / wall:,.0f} run)"
    )
    print(
        f"result: TTFT {res.ttft_s * 1e3:.1f} ms, decode {res.token_ms()[1]:.3f} ms/token avg, "
        f"roofline fraction {res.roofline_fraction:.3f}"
    )
    return 0


def _cpu() -> float:
    """User + system CPU seconds of this process and its finished children."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + ch.ru_utime + ch.ru_stime
