"""``--boards N --parallel tensor|pipeline`` of ``hwflow compile``, ``check`` and ``sim``:
the multi-board paths of those commands (:mod:`hwflow.compiler.partition`,
:mod:`hwflow.multiboard`, :mod:`hwflow.perf.system`). Thin: parse, call, print."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from hwflow.commands._common import Progress, atomic_write, check_output_dir, print_json
from hwflow.compiler.partition import check_system, compile_system
from hwflow.config import HardwarePreset, load_hw, load_model, load_plan
from hwflow.errors import ConfigError
from hwflow.isa import LINK_OPS

__all__ = ["add_args", "run_check", "run_compile", "run_sim", "wants_system"]


def add_args(p: argparse.ArgumentParser) -> None:
    """The multi-board options of a command."""
    p.add_argument(
        "--boards", type=int, default=1, help="boards in the system (a ring; preset's system:)"
    )
    p.add_argument(
        "--parallel",
        default="tensor",
        help="how the model splits over the boards: tensor (heads and FFN columns, an "
        "all-reduce after attention and the FFN) or pipeline (layers)",
    )


def wants_system(args: argparse.Namespace, hw: HardwarePreset) -> bool:
    """Check ``--boards``/``--parallel`` (ConfigError, exit 2); whether it is more than one."""
    check_system(args.boards, args.parallel, hw)
    if args.boards > 1 and getattr(args, "batch", 1) != 1:
        raise ConfigError(
            f"--batch {args.batch} with --boards {args.boards}: batched decode runs on one board"
        )
    return args.boards > 1


def _board_rows(sysc: Any, hw: HardwarePreset) -> list[dict[str, Any]]:
    rows = []
    for comp, cfg, par in zip(sysc.boards, sysc.cfgs, sysc.pars, strict=True):
        rows.append({
            "board": par.index,
            "layers": list(par.layers),
            "heads": cfg.heads,
            "kv_heads": cfg.kv_heads,
            "ffn_columns": cfg.intermediate,
            "hbm_bytes": comp.layout.total,
            "hbm_capacity_bytes": hw.hbm.capacity_bytes,
            "template_bytes": comp.program.instr_bytes,
            "largest_template_bytes": max(t.nbytes for t in comp.program.templates),
            "instr_capacity_bytes": hw.buffers.bytes("instr"),
            "link_instructions": sum(
                1 for t in comp.program.templates for i in t.instrs
                if i.op in LINK_OPS
            ),
        })  # fmt: skip
    return rows


def run_compile(args: argparse.Namespace) -> int:
    """``hwflow compile --boards N``: one program per board (``board<i>.hwp`` under ``-o``)."""
    cfg, hw, plan = load_model(args.model), load_hw(args.hw), load_plan(args.plan)
    if args.output is not None:
        check_output_dir(args.output, "-o")
    with Progress() as prog:
        prog.note(f"compiling {cfg.name} for {args.boards} x {hw.name} ({args.parallel} parallel)")
        sysc = compile_system(cfg, plan, hw, args.max_len, args.boards, args.parallel)
    info = {
        "model": cfg.name,
        "plan": plan.name,
        "preset": hw.name,
        "boards": args.boards,
        "parallel": args.parallel,
        "compile_seconds": sysc.seconds,
        "per_board": _board_rows(sysc, hw),
    }
    if args.output is not None:
        args.output.mkdir(parents=True, exist_ok=True)
        written = []
        for b, comp in enumerate(sysc.boards):
            atomic_write(args.output / f"board{b}.hwp", comp.program.to_bytes())
            written.append(str(args.output / f"board{b}.hwp"))
        atomic_write(args.output / "summary.json", json.dumps(info, indent=2))
        info["written"] = written
    if args.json:
        print_json(info)
        return 0
    t = Table(title=f"{cfg.name} / {plan.name} on {args.boards} x {hw.name} ({args.parallel} "
              f"parallel), compiled in {sysc.seconds:.1f} s")  # fmt: skip
    for col in ("board", "layers", "heads / KV", "FFN cols", "HBM used / capacity",
                "largest template / instr mem", "link instrs"):  # fmt: skip
        t.add_column(col, justify="right")
    for r in info["per_board"]:
        t.add_row(
            str(r["board"]), f"{r['layers'][0]}..{r['layers'][1] - 1}",
            f"{r['heads']} / {r['kv_heads']}", str(r["ffn_columns"]),
            f"{r['hbm_bytes'] / 2**20:,.1f} / {r['hbm_capacity_bytes'] / 2**20:,.0f} MiB",
            f"{r['largest_template_bytes']:,} / {r['instr_capacity_bytes']:,} B",
            str(r["link_instructions"]),
        )  # fmt: skip
    Console().print(t)
    for w in info.get("written", []):
        print(f"written: {w}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    """``hwflow check --boards N``: the system on the functional simulators vs the reference."""
    from hwflow.checkpoint import is_checkpoint
    from hwflow.multiboard import check_system_against_reference

    if is_checkpoint(args.model):
        raise ConfigError("--boards > 1 checks seeded weights only (give a model config)")
    cfg, hw, plan = load_model(args.model), load_hw(args.hw), load_plan(args.plan)
    with Progress() as prog:
        prog.note(f"checking {cfg.name} on {args.boards} x {hw.name} ({args.parallel} parallel)")
        res = check_system_against_reference(
            cfg, plan, hw, args.boards, args.parallel, args.max_len, args.decode, args.seed
        )
    if args.json:
        print_json(res)
    else:
        bad = [s for s in res["steps"] if not s["equal"]]
        pre = sorted({s["tokens"] for s in res["steps"] if s["phase"] == "prefill"})
        verdict = "[green]bit-exact with the single-board reference[/green]"
        if bad:
            verdict = f"[red]{len(bad)} steps differ[/red]"
        Console().print(
            f"{cfg.name} / {plan.name} on {args.boards} x {hw.name} ({args.parallel} parallel): "
            f"{len(res['steps'])} steps (prefill lengths {pre}, {args.decode} decode steps), "
            f"{res['instructions']:,} instructions on all boards: {verdict}"
        )
        for s in bad:
            print(f"  differs: {s}")
    return 0 if res["bit_exact"] else 1


def run_sim(args: argparse.Namespace, prefill: int, decode: int, max_len: int) -> int:
    """``hwflow sim --boards N``: the system's cycle model."""
    from hwflow.perf.system import simulate_system

    if args.trace is not None:
        raise ConfigError("--trace records one board's timeline: run it without --boards")
    cfg, hw, plan = load_model(args.model), load_hw(args.hw), load_plan(args.plan)
    with Progress() as prog:
        res = simulate_system(cfg, plan, hw, prefill, decode, args.boards, args.parallel,
                              max_len=max_len, note=prog.note)  # fmt: skip
    out = res.summary()
    if args.json:
        print_json(out)
        return 0
    t = Table(title=f"{cfg.name} / {plan.name} on {args.boards} x {hw.name} ({args.parallel} "
              f"parallel): prefill {prefill} + {decode} decode steps")  # fmt: skip
    t.add_column("figure")
    t.add_column("value", justify="right")
    per = ", ".join(f"{v:.1f}" for v in out["board_decode_tokens_per_s"])
    for k, v in (
        ("time to first token", f"{out['ttft_ms']:.3f} ms"),
        ("decode ms/token (mean)", f"{out['ms_per_token_avg']:.3f} ms"),
        ("system decode tokens/s", f"{out['decode_tokens_per_s']:.1f}"),
        ("per-board decode tokens/s (own steps)", per),
        ("tokens/s (prefill + decode)", f"{out['tokens_per_s']:.2f}"),
        ("link time per decode token", f"{out['link_ms_per_token']:.3f} ms"),
        ("energy (all boards)", f"{out['energy_j']:.3f} J"),
        ("  of which idle static (pipeline waits)", f"{out['idle_static_j']:.3f} J"),
        ("per-board energy (own steps)", ", ".join(f"{v:.3f} J" for v in out["board_energy_j"])),
        ("tokens/J", f"{out['tokens_per_j']:.4f}"),
        ("average power", f"{out['average_w']:.1f} W"),
        ("link energy", "not modelled"),
    ):
        t.add_row(k, v)
    Console().print(t)
    return 0
