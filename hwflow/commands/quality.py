"""``hwflow quality``: SQNR and max abs error of a compressed model against float64."""

from __future__ import annotations

import argparse

import numpy as np
from rich.console import Console
from rich.table import Table

from hwflow.commands._common import print_json, seed
from hwflow.compress import quantize_model, random_weights
from hwflow.config import available, load_model, load_plan
from hwflow.errors import ConfigError
from hwflow.reference import check_quality_size, quality


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quality",
        help="measure a compression plan against float64 (seeded weights)",
        description="Quantize a model's seeded random weights by each plan and report the SQNR (dB) and "
        "max abs error of every layer's output and of the logits against a float64 run.",
    )
    p.add_argument("--model", default="tiny-llama", help="shipped model name or config.json path")
    p.add_argument(
        "--plan",
        action="append",
        help="plan name or path (repeatable; default: every shipped plan)",
    )
    p.add_argument("--tokens", type=int, default=40, help="prompt length (default 40)")
    p.add_argument("--decode", type=int, default=4, help="decode steps (default 4)")
    p.add_argument("--seed", type=seed, default=0, help="weight seed (default 0)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = load_model(args.model)
    check_quality_size(cfg, "quality")
    if not 0 <= args.decode < cfg.max_positions:
        raise ConfigError(
            f"--decode {args.decode} must lie in 0..{cfg.max_positions - 1} for {cfg.name}"
        )
    if not 1 <= args.tokens <= cfg.max_positions - args.decode:
        raise ConfigError(
            f"--tokens {args.tokens} must lie in 1..{cfg.max_positions - args.decode} for {cfg.name}"
        )
    weights = random_weights(cfg, args.seed)
    ids = np.random.default_rng(args.seed + 7).integers(cfg.vocab, size=args.tokens)
    results = {}
    for name in args.plan or available("plans"):
        plan = load_plan(name)
        results[plan.name] = quality(quantize_model(cfg, plan, weights), weights, ids, args.decode)
    if args.json:
        print_json({"model": cfg.name, "seed": args.seed, "plans": results})
        return 0
    table = Table(
        title=f"{cfg.name}: compressed vs float64 (seed {args.seed}, {args.tokens} tokens + {args.decode} decode)"
    )
    table.add_column("tensor")
    for plan_name in results:
        table.add_column(f"{plan_name}\nSQNR dB / max err", justify="right")
    for i, row in enumerate(next(iter(results.values()))):
        cells = [f"{r[i]['sqnr_db']:.1f} / {r[i]['max_abs_error']:.3g}" for r in results.values()]
        table.add_row(row["tensor"], *cells)
    Console().print(table)
    return 0
