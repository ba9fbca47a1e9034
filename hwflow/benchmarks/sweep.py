"""``hwflow bench sweep``: a 100-point sweep (mappings/sweeps/bench100.yaml) on a local Dask
cluster of 2 worker processes (or on the cluster of ``--scheduler``) from an empty cache, then
the same sweep again (all points cached). Prints points/s.

On more machines: start ``dask scheduler`` on one host, ``dask worker tcp://HOST:8786
--nworkers N --nthreads 1`` on every machine (each with hwflow installed), and run
``hwflow bench sweep --scheduler tcp://HOST:8786``: the points spread over all workers, so the
cold time divides by the worker count as long as points outnumber workers."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from hwflow.config import MAPPINGS

HELP = "time a 100-point sweep on a Dask cluster (target < 2 min on 2 workers), cold and cached"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grid", type=Path, default=MAPPINGS / "sweeps" / "bench100.yaml")
    p.add_argument("--workers", type=int, default=2, help="local cluster processes")
    p.add_argument("--scheduler", metavar="ADDRESS", help="a running Dask scheduler instead")


def run(args: argparse.Namespace) -> int:
    from hwflow.analysis.sweep import load_grid, run_sweep

    grid = load_grid(args.grid)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        rows = run_sweep(grid, Path(d), workers=args.workers, scheduler=args.scheduler)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_sweep(grid, Path(d), workers=args.workers, scheduler=args.scheduler)
        warm = time.perf_counter() - t0
    bad = sum(r.get("status") != "ok" for r in rows)
    where = args.scheduler or (
        f"a local cluster of {args.workers} workers" if args.workers > 1 else "this process"
    )
    n = len(grid.points)
    print(f"grid: {args.grid} ({n} points, {bad} invalid), on {where}")
    print(f"cold: {cold:.1f} s = {n / cold:.2f} points/s (target < 120 s)")
    print(f"repeated (cached): {warm:.2f} s")
    return 0
