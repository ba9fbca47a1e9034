"""``hwflow quality``: how much a compression plan costs in quality.

For a trained checkpoint (a Hugging Face safetensors folder or a GGUF file): the perplexity of
the float64 reference and of each plan's integer reference on real text, and the per-layer
SQNR on the same tokens. For a config alone (seeded random weights): the SQNR report only.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from hwflow.checkpoint import is_checkpoint, load_checkpoint
from hwflow.commands._common import print_json, seed
from hwflow.compress import check_keys, quantize_model, random_weights
from hwflow.config import CompressionPlan, ModelConfig, available, load_model, load_plan
from hwflow.errors import ConfigError, UnsupportedError
from hwflow.perplexity import (
    DEFAULT_TEXT,
    calibration_ids,
    float_perplexity,
    int_perplexity,
    kl_divergence,
    read_text,
    text_ids,
)
from hwflow.reference import check_quality_size, quality

REAL_TOKENS = 256  #: default text length for a checkpoint
RANDOM_TOKENS = 40  #: default prompt length for seeded random weights


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quality",
        help="measure compression plans: perplexity on real text, SQNR against float64",
        description="For a checkpoint (HF safetensors folder or .gguf): perplexity of the float64 "
        "model and of each plan's integer model on real text, and per-layer SQNR on the same "
        "tokens. For a config alone: quantize seeded random weights by each plan and report the "
        "SQNR (dB) and max abs error of every layer's output and of the logits against float64.",
    )
    p.add_argument(
        "--model",
        default="tiny-llama",
        help="shipped model name, config.json path, HF checkpoint folder or .gguf file",
    )
    p.add_argument(
        "--plan",
        action="append",
        help="plan name or path (repeatable; default: every shipped plan)",
    )
    p.add_argument(
        "--text",
        type=Path,
        help=f"UTF-8 text for the perplexity of a checkpoint (default: {DEFAULT_TEXT.name}, "
        "the GNU GPL v3 shipped in mappings/text)",
    )
    p.add_argument(
        "--tokens",
        type=int,
        help=f"tokens of text (checkpoint, default {REAL_TOKENS}) or prompt length (random "
        f"weights, default {RANDOM_TOKENS})",
    )
    p.add_argument("--decode", type=int, default=4, help="decode steps of the SQNR run (default 4)")
    p.add_argument("--seed", type=seed, default=0, help="weight seed (default 0)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=run)


def _check_lengths(cfg: ModelConfig, tokens: int, decode: int, least: int) -> None:
    if not 0 <= decode < cfg.max_positions:
        raise ConfigError(
            f"--decode {decode} must lie in 0..{cfg.max_positions - 1} for {cfg.name}"
        )
    if not least <= tokens <= cfg.max_positions - decode:
        raise ConfigError(
            f"--tokens {tokens} must lie in {least}..{cfg.max_positions - decode} for {cfg.name}"
        )


def run(args: argparse.Namespace) -> int:
    if is_checkpoint(args.model):
        return _run_checkpoint(args)
    folder = Path(args.model)
    if folder.is_dir() and any(folder.glob("*.bin")):
        raise UnsupportedError(
            f"{folder}: PyTorch *.bin weights unsupported (supported: *.safetensors; convert "
            "them, or give the config alone for seeded random weights)"
        )
    if args.text is not None:
        raise ConfigError(
            f"--text needs a checkpoint (HF safetensors folder or .gguf); {args.model!r} is a "
            "config alone, measured on seeded random weights"
        )
    cfg = load_model(args.model)
    check_quality_size(cfg, "quality")
    tokens = RANDOM_TOKENS if args.tokens is None else args.tokens
    _check_lengths(cfg, tokens, args.decode, 1)
    plans = _plans(cfg, args.plan)
    weights = random_weights(cfg, args.seed)
    ids = np.random.default_rng(args.seed + 7).integers(cfg.vocab, size=tokens)
    results = {
        p.name: quality(quantize_model(cfg, p, weights), weights, ids, args.decode) for p in plans
    }
    if args.json:
        print_json({"model": cfg.name, "seed": args.seed, "plans": results})
        return 0
    _print_sqnr(
        results,
        f"{cfg.name}: compressed vs float64 (seed {args.seed}, {tokens} tokens + {args.decode} decode)",
    )
    return 0


def _plans(cfg: ModelConfig, names: list[str] | None) -> list[CompressionPlan]:
    """The plans asked for (an unsupported one is refused), else every shipped plan the model
    can take (rotated keys need RoPE: skipped for OPT)."""
    if names:
        return [load_plan(name) for name in names]
    plans = []
    for plan in map(load_plan, available("plans")):
        try:
            check_keys(cfg, plan)
        except UnsupportedError:
            continue
        plans.append(plan)
    return plans


def _run_checkpoint(args: argparse.Namespace) -> int:
    """Perplexity and SQNR of a trained checkpoint on real text."""
    ck = load_checkpoint(args.model)
    check_quality_size(ck.cfg, "quality")
    tokens = REAL_TOKENS if args.tokens is None else args.tokens
    _check_lengths(ck.cfg, tokens, args.decode, 2)
    # the runs need tokens + decode positions: KV caches sized by the model's context (8192 for
    # SmolLM2, ~0.8 GB in float64) would be mostly unused
    cfg = ck.cfg.model_copy(update={"max_positions": tokens + args.decode})
    plans = _plans(cfg, args.plan)
    source = args.text or DEFAULT_TEXT
    text = read_text(source)
    ids = text_ids(ck.tokenizer(), text, tokens, source)
    calib = calibration_ids(ck.tokenizer(), text, tokens, source)
    weights = ck.weights.materialize()  # read (and dequantize) every tensor once
    float_ppl = float_perplexity(cfg, plans[0], weights, ids)
    ppl: dict[str, float] = {}
    kl: dict[str, float] = {}
    sqnr: dict[str, list[dict[str, Any]]] = {}
    for plan in plans:
        qm = quantize_model(cfg, plan, weights, calib_ids=calib[: cfg.max_positions])
        int_ppl = int_perplexity(qm, ids)
        ppl[plan.name], kl[plan.name] = int_ppl.ppl, kl_divergence(float_ppl, int_ppl)
        sqnr[plan.name] = quality(qm, weights, ids, args.decode)
    if args.json:
        print_json(
            {
                "model": cfg.name,
                "checkpoint": str(ck.path),
                "text": str(source),
                "tokens": tokens,
                "float_ppl": float_ppl.ppl,
                "ppl": ppl,
                "kl": kl,
                "plans": sqnr,
            }
        )
        return 0
    table = Table(title=f"{cfg.name}: perplexity on {tokens} tokens of {source.name}")
    table.add_column("model", no_wrap=True)
    table.add_column("perplexity", justify="right")
    table.add_column("x float", justify="right")
    table.add_column("KL to float\nnats/token", justify="right")
    table.add_row("float64", f"{float_ppl.ppl:.3f}", "1.00", "0")
    for name, value in ppl.items():
        table.add_row(name, f"{value:.3f}", f"{value / float_ppl.ppl:.3f}", f"{kl[name]:.4f}")
    _wide_console(table).print(table)
    _print_sqnr(sqnr, f"{cfg.name}: compressed vs float64 on the same {tokens} tokens")
    return 0


def _print_sqnr(results: dict[str, list[dict[str, Any]]], title: str) -> None:
    table = Table(title=title)
    table.add_column("tensor", no_wrap=True)
    for plan_name in results:
        table.add_column(f"{plan_name}\nSQNR dB / max err", justify="right", no_wrap=True)
    for i, row in enumerate(next(iter(results.values()))):
        cells = [f"{r[i]['sqnr_db']:.1f} / {r[i]['max_abs_error']:.3g}" for r in results.values()]
        table.add_row(row["tensor"], *cells)
    _wide_console(table).print(table)


def _wide_console(table: Table) -> Console:
    """A console as wide as the table needs (names are not cut at 80 columns off a terminal)."""
    width = Console(width=10_000).measure(table).maximum
    return Console(width=max(width, Console().width))
