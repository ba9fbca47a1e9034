"""``hwflow bench funcsim``: functional-simulator speed (instructions per second) on a tiny model.

Runs a prefill and decode steps, with and without the vector-clock hazard checks.
"""

from __future__ import annotations

import argparse

import numpy as np

from hwflow.commands._common import print_json
from hwflow.compiler import compile_model
from hwflow.compiler.layout import build_hbm_image
from hwflow.compress import quantize_model, random_weights
from hwflow.config import load_hw, load_model, load_plan
from hwflow.funcsim import FuncSim

HELP = "functional simulator speed in instructions per second (tiny model)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny-llama")
    p.add_argument("--hw", default="tiny")
    p.add_argument("--plan", default="flightllm")
    p.add_argument("--tokens", type=int, default=200, help="prompt length (default 200)")
    p.add_argument("--decode", type=int, default=16, help="decode steps (default 16)")
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    cfg, hw, plan = load_model(args.model), load_hw(args.hw), load_plan(args.plan)
    max_len = min(cfg.max_positions, args.tokens + args.decode)
    comp = compile_model(cfg, plan, hw, max_len)
    qm = quantize_model(cfg, plan, random_weights(cfg, 0))
    image = build_hbm_image(comp.layout, qm)
    ids = np.random.default_rng(0).integers(cfg.vocab, size=args.tokens)
    out: dict[str, dict[str, float]] = {}
    for hazards in (True, False):
        fs = FuncSim(comp.program, hw, cfg, comp.layout, image.copy(), check_hazards=hazards)
        n = {"prefill": 0, "decode": 0}
        s = {"prefill": 0.0, "decode": 0.0}
        logits = fs.step("prefill", qm.embed(ids, 0), 0)
        n["prefill"] += fs.last_stats.instructions
        s["prefill"] += fs.last_stats.seconds
        for i in range(args.decode):
            pos = args.tokens + i
            tok = np.array([int(np.argmax(logits))])
            logits = fs.step("decode", qm.embed(tok, pos), pos)
            n["decode"] += fs.last_stats.instructions
            s["decode"] += fs.last_stats.seconds
        key = "hazard_checks" if hazards else "no_checks"
        out[key] = {
            **{f"{p}_instr_per_s": n[p] / s[p] for p in n},
            "instructions": n["prefill"] + n["decode"],
            "seconds": s["prefill"] + s["decode"],
        }
    if args.json:
        print_json({"model": cfg.name, "plan": plan.name, "tokens": args.tokens, **out})
        return 0
    for key, r in out.items():
        print(
            f"{cfg.name} / {plan.name}, {key}: {r['instructions']:,} instructions in "
            f"{r['seconds']:.2f} s: prefill {r['prefill_instr_per_s']:,.0f}/s, "
            f"decode {r['decode_instr_per_s']:,.0f}/s"
        )
    return 0
