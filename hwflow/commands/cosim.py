"""``hwflow cosim``: a compiled model on the machine's Verilog (Verilator), step by step against
the functional simulator."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

from hwflow.commands._common import Progress, atomic_write, positive, print_json, seed
from hwflow.compiler.batch import RTL_NO_BATCH, check_batch
from hwflow.config import load_hw, load_model, load_plan
from hwflow.errors import UnsupportedError

__all__ = ["register"]


def _count(text: str) -> int:
    """argparse type of a step count: a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid count {text!r} (allowed: a whole number >= 0)")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cosim",
        help="run a compiled model on the accelerator's Verilog and compare with funcsim",
        description="Compile the model (seeded random weights), build the whole accelerator "
        "with Verilator (cached by content), run prefill then greedy decode steps on it and on "
        "the functional simulator with the same inputs, and compare what every step writes to "
        "HBM (KV rows, logits) bit for bit. A mismatch names the first diverging instruction and exits 1; "
        "a unit slot without an implementation is never bit-exact. Cycles are compared with "
        "the SimPy model of the same program.",
    )
    p.add_argument("--model", required=True, help="shipped model name or HF config.json path")
    p.add_argument("--hw", default="tiny", help="hardware preset name or YAML path")
    p.add_argument("--plan", required=True, help="shipped plan name or YAML path")
    p.add_argument("--prefill", type=positive, default=16, help="prompt tokens")
    p.add_argument("--decode", type=_count, default=8, help="decode steps after the prompt")
    p.add_argument("--seed", type=seed, default=0, help="weight seed")
    p.add_argument(
        "--batch", type=int, default=1, help="sequences per decode step (the RTL runs 1 only)"
    )
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--trace", type=Path, help="write the per-instruction records (JSON) here")
    p.add_argument("--boards", type=int, default=1, help="boards (the RTL machine runs 1)")
    p.add_argument(
        "--waves",
        type=Path,
        help="write the run's waveform (VCD) here; a traced Verilator build of its own, slower "
        "and large: use short runs",
    )
    p.set_defaults(func=run_cosim)


def run_cosim(args: argparse.Namespace) -> int:
    from hwflow.hw.machine.cosim import cosim_model
    from hwflow.hw.machine.sfu_hadamard import HADAMARD_MAX_DIM

    cfg, hw, plan = load_model(args.model), load_hw(args.hw), load_plan(args.plan)
    if args.boards != 1:
        raise UnsupportedError(
            f"--boards {args.boards}: hwflow cosim runs one board (the RTL machine has no "
            "board-to-board link ports for SEND/RECV/ALLRED); check a multi-board system on the "
            "functional simulator with hwflow check --boards N"
        )
    if check_batch(args.batch) > 1:
        raise UnsupportedError(f"--batch {args.batch}: {RTL_NO_BATCH}")
    if plan.method.keys == "rotated" and cfg.head_dim > HADAMARD_MAX_DIM:
        raise UnsupportedError(
            f"plan {plan.name}: rotated keys of head_dim {cfg.head_dim}: the RTL SFU's Hadamard "
            f"row buffer holds heads of up to {HADAMARD_MAX_DIM} elements; check it on the "
            "functional simulator (hwflow check)"
        )
    with Progress() as prog:
        prog.note(f"co-simulating {cfg.name} / {plan.name} on {hw.name} (Verilator)")
        res = cosim_model(
            cfg, plan, hw, args.prefill, args.decode, seed=args.seed, waves=args.waves
        )
    records = res.pop("records", None)
    if args.trace is not None:
        atomic_write(args.trace, json.dumps(records or [], indent=1))
    if args.json:
        print_json(res)
    else:
        _print(res)
    return 0 if res["bit_exact"] else 1


def _print(res: dict) -> None:
    con = Console()
    verdict = "[green]bit-exact[/green]" if res["bit_exact"] else "[red]NOT bit-exact[/red]"
    con.print(
        f"{res['model']} / {res['plan']} on {res['preset']}: {verdict}; "
        f"RTL {res.get('rtl_cycles', 0):,} cycles vs model {res.get('model_cycles', 0):,} "
        f"({res.get('cycle_error', 0.0):+.1%}); units {', '.join(res['units'])}"
    )
    if res.get("missing_units"):
        con.print(f"missing units (absent slots): {', '.join(res['missing_units'])}")
    if res.get("mismatch"):
        con.print(f"first mismatch: {res['mismatch']}")
    for name, c in res.get("classes", {}).items():
        con.print(
            f"  {name:<5} n={c['n']:>6} rtl {c['rtl']:>9.1f}  model {c['model']:>9.1f}"
            f"  {c['error']:+.1%}"
        )
