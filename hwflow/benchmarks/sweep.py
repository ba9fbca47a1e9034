"""``hwflow bench sweep``: a 100-point sweep (mappings/sweeps/bench100.yaml) on 2 worker
processes from an empty cache, then the same sweep again (all points cached)."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from hwflow.config import MAPPINGS

HELP = "time a 100-point sweep on 2 processes (target < 2 min), cold and cached"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grid", type=Path, default=MAPPINGS / "sweeps" / "bench100.yaml")
    p.add_argument("--workers", type=int, default=2)


def run(args: argparse.Namespace) -> int:
    from hwflow.analysis.sweep import load_grid, run_sweep

    grid = load_grid(args.grid)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        rows = run_sweep(grid, Path(d), workers=args.workers)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_sweep(grid, Path(d), workers=args.workers)
        warm = time.perf_counter() - t0
    bad = sum(r.get("status") != "ok" for r in rows)
    print(f"grid: {args.grid} ({len(grid.points)} points, {bad} invalid), {args.workers} workers")
    print(f"cold: {cold:.1f} s (target < 120 s); repeated (cached): {warm:.2f} s")
    return 0
