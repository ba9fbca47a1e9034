"""``hwflow sim``, ``hwflow sweep`` and ``hwflow plot``: the cycle model's command line.

Thin: parse, call :mod:`hwflow.perf.sim` / :mod:`hwflow.analysis`, print. Errors are
:class:`~hwflow.errors.HwflowError` (one line, exit code 2); files are written atomically.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hwflow.commands import _system
from hwflow.commands._common import (
    Progress,
    atomic_write,
    check_output_dir,
    check_output_file,
    positive,
    print_json,
)
from hwflow.compiler.batch import check_batch
from hwflow.config import load_hw, load_model, load_plan
from hwflow.errors import ConfigError
from hwflow.perf.machine import UNITS

#: The default case of ``hwflow sim``: prompt and generated tokens (shortened to fit a
#: model's shorter context, see :func:`case_lengths`).
PREFILL, DECODE = 128, 512

__all__ = ["register", "sim_table"]


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "sim",
        help="simulate a (prefill, decode) case cycle by cycle",
        description="Compile (or reuse the cached program), then run the prefill and every "
        "decode step on the SimPy model of the accelerator; print latency, throughput, "
        "energy, HBM roofline fraction and per-unit utilisation.",
    )
    s.add_argument("--model", default="llama2-7b", help="model name or HF config.json path")
    s.add_argument("--hw", default="u280", help="hardware preset name or path")
    s.add_argument("--plan", default="flightllm", help="compression plan name or path")
    s.add_argument(
        "--prefill",
        type=int,
        help=f"prompt tokens (default: {PREFILL}, at most a quarter of the program's max length)",
    )
    s.add_argument(
        "--decode",
        type=int,
        help=f"generated tokens after the first (default: {DECODE}, at most what fits the "
        "program's max length after the prompt)",
    )
    s.add_argument(
        "--mode",
        choices=("fast", "exact"),
        default="fast",
        help="exact: expand and simulate every decode step in full; fast (same cycles): one "
        "simulation per distinct step, normally one per length bucket (see hwflow.perf.sim)",
    )
    s.add_argument(
        "--max-len", type=int, help="program's longest context (default: the model's, at most 2048)"
    )
    s.add_argument(
        "--batch",
        type=int,
        default=1,
        help="sequences decoded together (default 1): B prefills, then decode steps of all B "
        "(hwflow.perf.batch); reports tokens/s of all sequences and ms/token",
    )
    s.add_argument("--workers", type=positive, default=2, help="processes for the steps")
    s.add_argument("--json", action="store_true", help="print the figures as JSON")
    s.add_argument("--trace", type=Path, help="write a Perfetto / chrome://tracing timeline")
    _system.add_args(s)
    s.set_defaults(func=run_sim)

    w = sub.add_parser(
        "sweep",
        help="simulate the cross product of a grid file, in parallel, cached",
        description="Grid format: see hwflow.analysis.sweep. Finished points are cached under "
        "--cache, so an interrupted or repeated sweep recomputes nothing it has.",
    )
    w.add_argument("grid", type=Path, help="grid YAML")
    w.add_argument("-o", "--output", type=Path, required=True, help="results CSV")
    w.add_argument(
        "--workers",
        type=positive,
        default=2,
        help="processes of the local Dask cluster (ignored with --scheduler; 1: in this process)",
    )
    w.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run on the Dask cluster of this scheduler (tcp://host:8786; start it with "
        "`dask scheduler` and `dask worker ADDRESS` on each machine) instead of a local one",
    )
    w.add_argument("--cache", type=Path, help="cache directory (default: next to the output)")
    w.set_defaults(func=run_sweep)

    p = sub.add_parser("plot", help="energy-efficiency plots from a sweep's results CSV")
    p.add_argument("results", type=Path, help="results CSV of hwflow sweep")
    p.add_argument("-o", "--output", type=Path, required=True, help="output directory")
    p.set_defaults(func=run_plot)


def _si(v: float, unit: str) -> str:
    """``v`` with an SI prefix: 0.0123 J -> '12.3 mJ'."""
    for f, pre in ((1e9, "G"), (1e6, "M"), (1e3, "k"), (1, ""), (1e-3, "m"), (1e-6, "u")):
        if abs(v) >= f:
            return f"{v / f:.3g} {pre}{unit}"
    return f"{v:.3g} {unit}"


def _mode(res) -> str:
    if res.mode == "fast":
        return "fast: exact cycles, identical steps simulated once"
    return "exact: every step simulated"


def sim_table(res) -> Table:
    """The readable table of one simulated case."""
    lo, avg, hi = res.token_ms()
    t = Table(
        title=f"{res.model} on {res.hw}, plan {res.plan}: prefill {res.prefill}, "
        f"decode {res.decode} ({_mode(res)})"
    )
    t.add_column("figure")
    t.add_column("value", justify="right")
    rows = [
        ("time to first token", f"{res.ttft_s * 1e3:.2f} ms"),
        ("decode ms/token min / avg / max", f"{lo:.3f} / {avg:.3f} / {hi:.3f}"),
        ("tokens/s (whole case, incl. prefill)", f"{res.tokens_per_s:.1f}"),
        ("tokens/s (decode only)", f"{res.decode_tokens_per_s:.1f}"),
        ("average power", f"{res.average_w:.1f} W"),
        ("tokens/J", f"{res.tokens_per_j:.3f}"),
        ("energy per token", _si(res.j_per_token, "J")),
        ("decode HBM roofline ms/token (avg)", f"{res.roofline_ms_per_token:.3f}"),
        (
            f"decode HBM roofline fraction (of {res.hbm_achievable_gbps:.0f} GB/s achievable)",
            f"{res.roofline_fraction:.3f}",
        ),
        (
            f"decode HBM roofline fraction (of {res.hbm_peak_gbps:.0f} GB/s raw peak)",
            f"{res.roofline_fraction_raw:.3f}",
        ),
        ("HBM bandwidth achieved (decode)", f"{res.decode_hbm_gbps:.1f} GB/s"),
        ("decode bytes per token", _si(res.decode_hbm_bytes / max(res.decode, 1), "B")),
        ("total cycles", f"{res.total_cycles:,}"),
    ]
    for u in UNITS:
        rows.append(
            (
                f"{u.upper()} busy / stall",
                f"{res.busy[u] / res.total_cycles:6.1%} / {res.stall[u] / res.total_cycles:6.1%}",
            )
        )
    for k, v in res.energy.joules.items():
        rows.append((f"energy: {k}", f"{_si(v, 'J')} ({v / res.energy.total:.1%})"))
    run = res.events - res.replayed_events
    rows.append(
        (
            "simulated steps / SimPy events run + replayed",
            f"{res.simulated_steps} / {run:,} + {res.replayed_events:,}",
        )
    )
    if res.mode == "fast":
        rows.append(
            (
                "decode buckets / steps simulated apart",
                f"{res.decode_buckets} / {res.fallback_steps}",
            )
        )
    rows.append(("wall time", f"{res.wall_s:.2f} s"))
    for a, b in rows:
        t.add_row(a, b)
    return t


def case_lengths(prefill: int | None, decode: int | None, max_len: int) -> tuple[int, int]:
    """The (prefill, decode) of a case: the given ones, else the defaults shortened to fit
    ``max_len`` (a prompt of at most a quarter of it, the decode steps in the rest)."""
    if prefill is None:
        prefill = max(1, min(PREFILL, max_len // 4))
    if decode is None:
        decode = max(0, min(DECODE, max_len - prefill))
    return prefill, decode


def run_sim(args: argparse.Namespace) -> int:
    from hwflow.perf.sim import default_max_len, simulate_cached
    from hwflow.perf.trace import write_trace

    if args.trace is not None:
        check_output_file(args.trace, "--trace")
    cfg, hw, plan = load_model(args.model), load_hw(args.hw), load_plan(args.plan)
    max_len = args.max_len if args.max_len is not None else default_max_len(cfg)
    if max_len < 1:
        raise ConfigError(f"--max-len {max_len} (allowed: a whole number >= 1)")
    prefill, decode = case_lengths(args.prefill, args.decode, max_len)
    if _system.wants_system(args, hw):
        return _system.run_sim(args, prefill, decode, max_len)
    if check_batch(args.batch) > 1:
        if args.trace is not None:
            raise ConfigError(f"--trace with --batch {args.batch}: tracing runs at batch 1")
        return _run_sim_batch(args, cfg, hw, plan, prefill, decode, max_len)
    with Progress() as prog:
        res, _ = simulate_cached(
            cfg,
            plan,
            hw,
            prefill,
            decode,
            mode=args.mode,
            max_len=max_len,
            trace=args.trace is not None,
            workers=args.workers,
            note=prog.note,
            progress=prog.step,
        )
    if args.trace:
        write_trace(args.trace, res.trace, res.clock_hz, f"{res.model} on {res.hw}")
    if args.json:
        out = res.summary()
        curve = res.decode_curve()
        out["decode_ms_by_context"] = [[c, round(ms, 6)] for c, ms in curve[::16] + curve[-1:]]
        print_json(out)
    else:
        Console().print(sim_table(res))
        if args.trace:
            print(f"timeline: {args.trace} (prefill + first decode step; open in ui.perfetto.dev)")
    return 0


def batch_table(res) -> Table:
    """The readable table of one simulated batched case (:mod:`hwflow.perf.batch`)."""
    s = res.summary()
    t = Table(
        title=f"{res.model} on {res.hw}, plan {res.plan}: batch {res.batch}, prefill "
        f"{res.prefill} each, {res.decode} decode step{'s' * (res.decode != 1)} ({_mode(res)})"
    )
    t.add_column("figure")
    t.add_column("value", justify="right")
    bound = "compute (engines)" if res.compute_bound else "HBM"
    rows = [
        ("decode linears and head on", f"{res.engine} engine"),
        ("decode ms/token (one step: a token of every sequence)", f"{res.ms_per_token:.3f}"),
        (f"decode tokens/s (all {res.batch} sequences)", f"{res.decode_tokens_per_s:.1f}"),
        ("tokens/s (whole case, all sequences, incl. prefills)", f"{res.tokens_per_s:.1f}"),
        (
            f"time to first token of all {res.batch} (prefills in turn)",
            f"{res.ttft_s * 1e3:.2f} ms",
        ),
        ("decode engine (MM + MV busy) ms per step", f"{s['decode_engine_ms_per_step']:.3f}"),
        ("decode HBM (channel streaming) ms per step", f"{s['decode_hbm_ms_per_step']:.3f}"),
        ("decode HBM roofline ms per step", f"{s['roofline_ms_per_step']:.3f}"),
        ("decode bound by", bound),
        ("decode HBM bytes per token", _si(s["decode_bytes_per_token"], "B")),
        (
            "tokens/J (decode steps; whole case incl. prefills)",
            f"{res.decode_tokens_per_j:.3f}; {res.tokens_per_j:.3f}",
        ),
        ("average power", f"{res.energy.average_w:.1f} W"),
        ("simulated steps", str(res.simulated_steps)),
        ("wall time", f"{res.wall_s:.2f} s"),
    ]
    for a, b in rows:
        t.add_row(a, b)
    return t


def _run_sim_batch(args, cfg, hw, plan, prefill: int, decode: int, max_len: int) -> int:
    """``sim --batch B``: :func:`hwflow.perf.batch.simulate_batch_cached`, printed."""
    from hwflow.perf.batch import simulate_batch_cached

    with Progress() as prog:
        res, _ = simulate_batch_cached(
            cfg, plan, hw, args.batch, prefill, decode, mode=args.mode, max_len=max_len,
            workers=args.workers, note=prog.note, progress=prog.step,
        )  # fmt: skip
    if args.json:
        print_json(res.summary())
    else:
        Console().print(batch_table(res))
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    from hwflow.analysis.sweep import load_grid, run_sweep, write_csv

    check_output_file(args.output, "-o")
    if args.cache is not None:
        check_output_dir(args.cache, "--cache")
    grid = load_grid(args.grid)
    cache = args.cache or args.output.parent / f".{args.output.stem}.cache"
    with Progress() as prog:
        rows = run_sweep(
            grid,
            cache,
            workers=args.workers,
            scheduler=args.scheduler,
            progress=prog.step,
            note=prog.note,
        )
    bad = [r for r in rows if r.get("status") != "ok"]
    for r in bad:
        print(f"{r.get('status')} point {_point_name(r)}: {r.get('reason')}", file=sys.stderr)
    if len(bad) == len(rows):
        print(
            f"hwflow sweep: error: all {len(rows)} points of {args.grid} are invalid or failed "
            "(no results CSV written)",
            file=sys.stderr,
        )
        return 2
    atomic_write(args.output, write_csv(rows))
    failed = sum(r.get("status") == "failed" for r in rows)
    print(f"{len(rows)} points ({len(bad) - failed} invalid, {failed} failed) -> {args.output}")
    if failed:
        print(
            f"hwflow sweep: error: {failed} points failed (their workers died or they raised); "
            "finished points are cached, rerun the same command to retry only those",
            file=sys.stderr,
        )
        return 2
    return 0


def _point_name(row: dict) -> str:
    """A sweep row's point in one phrase: preset, plan, lengths and swept parameters."""
    extra = [f"{k}={v}" for k, v in row.items() if k.startswith(("hw.", "plan."))]
    name = f"{row.get('point_preset')} / {row.get('point_plan')} {row.get('point_model')}"
    lengths = f"prefill {row.get('prefill')}, decode {row.get('decode')}"
    return f"{name} ({', '.join([lengths, *extra])})"


def run_plot(args: argparse.Namespace) -> int:
    from hwflow.analysis.plots import plot_results, read_results

    check_output_dir(args.output, "-o")
    files = plot_results(read_results(args.results), args.output)
    for f in files:
        print(f)
    return 0
