"""``hwflow demo``: the main job on the shipped defaults (the README's ``make run``).

It runs, in order, the commands a user would type (each printed first, so the demo doubles as
a walk-through), writing everything under one output directory:

1. compile LLaMA-2-7B with the FlightLLM-style plan for hwflow's U280 design point (2048 tokens);
2. check the tiny model on the tiny preset bit for bit against the numeric reference, per plan;
3. generate the RTL (Verilog + manifest, Verilator lint) of the tiny preset's engines and of
   the default preset's whole engines (hierarchical Verilog: the 128-chain U280 engines take
   about 17 s of CPU to generate and 60 s to lint; ``--rtl-chains N`` writes slices of N
   chains instead);
4. run the tiny model's compiled program (prefill 8, decode 2) on the whole RTL accelerator in
   Verilator, compared bit for bit with the functional simulator, RTL cycles against the
   SimPy model's (one line; the first run builds the simulator, later runs reuse it);
5. simulate the default case (prompt 128, 512 generated tokens) cycle by cycle, with a timeline;
6. sweep two U280 design points x INT4/INT8 x three N:M levels and draw the energy-efficiency plots.

It stops at the first command that fails and returns its exit code.
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

from hwflow.commands._common import check_output_dir
from hwflow.config import MAPPINGS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job on the shipped defaults: compile, check, RTL, simulate, sweep, plot",
        description="\n\n".join(__doc__.split("\n\n")[1:]) if __doc__ else None,
    )
    p.add_argument("-o", "--output", type=Path, default=Path("out"), help="output directory")
    p.add_argument("--model", default="llama2-7b", help="model of the compile/simulate steps")
    p.add_argument("--hw", default="u280", help="hardware preset of the compile/simulate/RTL steps")
    p.add_argument(
        "--plan", default="flightllm", help="compression plan of the compile/simulate steps"
    )
    p.add_argument(
        "--rtl-chains",
        type=int,
        default=0,
        help="chains of the default preset's RTL slices (default 0: the whole engines)",
    )
    p.add_argument("--prefill", type=int, default=128, help="prompt tokens of the simulated case")
    p.add_argument("--decode", type=int, default=512, help="generated tokens of the simulated case")
    p.add_argument(
        "--grid", type=Path, default=MAPPINGS / "sweeps" / "demo.yaml", help="sweep grid"
    )
    p.set_defaults(func=run)


def steps(args: argparse.Namespace) -> list[list[str]]:
    """The commands of the demo, as argument lists for :func:`hwflow.cli.main`."""
    out = args.output
    case = ["--model", args.model, "--hw", args.hw, "--plan", args.plan]
    return [
        ["compile", *case, "-o", str(out / "program")],
        *(
            ["check", "--model", "tiny-llama", "--hw", "tiny", "--plan", p]
            for p in ("w8a8", "w4a8", "flightllm")
        ),
        ["rtl", "--hw", "tiny", "-o", str(out / "rtl" / "tiny")],
        ["rtl", "--hw", args.hw, "-o", str(out / "rtl" / args.hw)]
        + (["--chains", str(args.rtl_chains)] if _slice(args) else []),
        [
            *("cosim", "--model", "tiny-llama", "--hw", "tiny", "--plan", "w8a8"),
            *("--prefill", "8", "--decode", "2"),
        ],
        [
            "sim",
            *case,
            "--prefill",
            str(args.prefill),
            "--decode",
            str(args.decode),
            "--trace",
            str(out / "trace.json"),
        ],
        ["sweep", str(args.grid), "-o", str(out / "sweep" / "results.csv")],
        ["plot", str(out / "sweep" / "results.csv"), "-o", str(out / "plots")],
    ]


def _slice(args: argparse.Namespace) -> bool:
    """Whether the default preset's RTL is written as a slice (smaller than its engines)."""
    from hwflow.config import load_hw

    hw = load_hw(args.hw)
    return 0 < args.rtl_chains < max(hw.mv.chains, hw.mpe.chains)


def run(args: argparse.Namespace) -> int:
    from hwflow.cli import main

    check_output_dir(args.output, "-o")
    (args.output / "sweep").mkdir(parents=True, exist_ok=True)  # sweep -o names a file in it
    t0 = time.perf_counter()
    for argv in steps(args):
        print(f"\n$ hwflow {shlex.join(argv)}", flush=True)
        code = main(argv)
        if code:
            print(f"demo: 'hwflow {argv[0]}' failed with exit code {code}")
            return code
    print(f"\ndemo: done in {time.perf_counter() - t0:.0f} s; results under {args.output}/")
    return 0
