"""``hwflow compile``, ``hwflow disasm`` and ``hwflow check``: the compiler's command line.

Thin: parse, call :mod:`hwflow.compiler` / :mod:`hwflow.funcsim`, print. Every user error is a
:class:`~hwflow.errors.HwflowError` (one line, exit code 2 from :func:`hwflow.cli.main`), raised
before any output file is written; files are written atomically.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from hwflow import cache
from hwflow.analysis.compiled import compile_with_summary
from hwflow.checkpoint import is_checkpoint, load_checkpoint
from hwflow.commands import _system
from hwflow.commands._common import Progress, atomic_write, check_output_dir, print_json, seed
from hwflow.compiler.batch import check_batch
from hwflow.config import load_hw, load_model, load_plan
from hwflow.errors import ConfigError
from hwflow.isa import disasm, load_program
from hwflow.reference import check_quality_size

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compile",
        help="compile a model + plan for a hardware preset into a length-adaptive program",
        description="Compile every prefill length and decode context 1..max-len into bucket "
        "templates (loops over runs of identical layers, run-time LEN/POS registers), prove "
        "them deadlock-free, and print a summary.",
    )
    _common_args(p)
    _system.add_args(p)
    p.add_argument(
        "--max-len", type=int, help="longest prompt + context (default: min(2048, model max))"
    )
    _batch_arg(p)
    p.add_argument("-o", "--output", type=Path, help="directory for program.hwp and summary.json")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run_compile)

    d = sub.add_parser("disasm", help="print a compiled program as text")
    d.add_argument("file", type=Path, help="a program.hwp written by hwflow compile")
    d.add_argument("--hw", help="refuse the program unless it was compiled for this preset")
    d.add_argument("--template", type=int, help="print only template number N (0-based)")
    d.set_defaults(func=run_disasm)

    c = sub.add_parser(
        "check",
        help="compile, run the functional simulator and compare with the numeric reference",
        description="Prefill at lengths on both sides of every bucket boundary and decode across "
        "a decode bucket boundary on the functional simulator, compare logits and KV cache bit "
        "for bit with the integer reference, and print the quality figures vs float64.",
    )
    _common_args(c)
    _system.add_args(c)
    c.add_argument("--max-len", type=int, default=256, help="longest length checked (default 256)")
    c.add_argument("--decode", type=int, default=8, help="decode steps (default 8)")
    _batch_arg(c)
    c.add_argument("--seed", type=seed, default=0, help="weight seed (default 0)")
    c.add_argument("--json", action="store_true", help="print JSON")
    c.set_defaults(func=run_check)


def _common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="shipped model name or HF config.json path")
    p.add_argument("--hw", required=True, help="shipped hardware preset name or YAML path")
    p.add_argument("--plan", required=True, help="shipped compression plan name or YAML path")


def _batch_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--batch",
        type=int,
        default=1,
        help="sequences per decode step (default 1): B KV caches, decode templates for up to B "
        "sequences with their own positions, the linears as thin matrix products",
    )


def _write_outputs(out: Path, program: bytes, info: dict[str, Any]) -> None:
    """Write program.hwp and summary.json, each atomically; on any failure (or an interrupt)
    leave neither, nor the folders made for them."""
    made = [p for p in (out, *out.parents) if not p.exists()]  # deepest first
    done: list[Path] = []
    try:
        for name, data in (
            ("program.hwp", program),
            ("summary.json", json.dumps(info, indent=2, default=str)),
        ):
            atomic_write(out / name, data)
            done.append(out / name)
    except BaseException as e:
        for f in done:
            f.unlink(missing_ok=True)
        for d in made:
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        if isinstance(e, OSError):
            raise ConfigError(f"-o {out}: cannot write ({e.strerror or e})") from None
        raise


def run_compile(args: argparse.Namespace) -> int:
    cfg, hw, plan = load_model(args.model), load_hw(args.hw), load_plan(args.plan)
    if _system.wants_system(args, hw):
        return _system.run_compile(args)
    if args.output is not None:
        check_output_dir(args.output, "-o")
    with Progress() as prog:
        program, info, cached = compile_with_summary(
            cfg, plan, hw, args.max_len, note=prog.note, batch=check_batch(args.batch)
        )
    info["cached"] = cached
    if args.output is not None:
        _write_outputs(args.output, program, info)
        info["written"] = str(args.output / "program.hwp")
    if args.json:
        print_json(info)
        return 0
    con = Console()
    t = Table(title=f"{cfg.name} / {plan.name} on {hw.name}: {info['templates']} templates")
    t.add_column("figure")
    t.add_column("value", justify="right")
    rows = [
        ("max length (prefill and decode context)", str(info["max_len"])),
        ("prefill bucket / decode bucket", f"{info['prefill_bucket']} / 16"),
        ("layer runs (first, layers, stride B)", str(info["layer_runs"])),
        *((f"instructions {u}", f"{n:,}") for u, n in info["instructions_per_unit"].items() if n),
        ("instruction bytes (templates)", f"{info['template_bytes']:,}"),
        (
            "largest template / instruction memory",
            f"{info['largest_template_bytes']:,} / {hw.buffers.bytes('instr'):,}",
        ),
        ("instruction bytes (one program per length)", f"{info['per_length_bytes']:,}"),
        ("storage ratio", f"{info['ratio']:,.0f}x"),
        (
            "ratio of unrolled bucket programs (no loops)",
            f"{info['ratio_bucketed_unrolled']:,.0f}x",
        ),
        *_batch_rows(info),
        ("HBM allocated", f"{info['hbm_total_bytes']:,}"),
        (
            "compile time",
            f"{info['compile_seconds']:.2f} s" + (" (program from the cache)" if cached else ""),
        ),
    ]
    if info.get("written"):
        rows.append(("written", info["written"]))
    for r in rows:
        t.add_row(*r)
    con.print(t)
    _print_quality(con, info["quality"])
    return 0


def _batch_rows(info: dict[str, Any]) -> list[tuple[str, str]]:
    """The decode rows of the compile table: per token, and per step of a batch."""
    b, total = info.get("batch", 1), info["decode_hbm_bytes_per_token"]["total"]
    ctx = info["max_len"]
    if b == 1:
        return [(f"decode HBM bytes per token at context {ctx}", f"{total:,}")]
    step = info["decode_hbm_bytes_per_step"]["total"]
    return [
        ("batch (sequences per decode step; KV caches)", str(b)),
        ("decode linears and head on", f"{info['decode_engine']} engine (thin matrix product)"),
        (f"decode HBM bytes per step of {b} at context {ctx}", f"{step:,}"),
        (f"decode HBM bytes per token at context {ctx}", f"{total:,}"),
    ]


def _print_quality(
    con: Console, rows: list[dict[str, Any]] | None, weights: str = "seeded weights"
) -> None:
    if rows is None:
        con.print(
            "quality: not computed (model too large for the float64 reference; see hwflow quality)"
        )
        return
    t = Table(title=f"quality vs float64 ({weights})")
    t.add_column("tensor")
    t.add_column("SQNR dB", justify="right")
    t.add_column("max abs err", justify="right")
    for r in rows:
        s = r["sqnr_db"]
        t.add_row(r["tensor"], "inf" if math.isinf(s) else f"{s:.1f}", f"{r['max_abs_error']:.3g}")
    con.print(t)


def run_disasm(args: argparse.Namespace) -> int:
    prog = load_program(args.file, load_hw(args.hw) if args.hw else None)
    h = prog.header
    if args.template is not None and not 0 <= args.template < len(prog.templates):
        raise ConfigError(f"--template {args.template} out of range (0..{len(prog.templates) - 1})")
    print(f"; hwflow program ISA v{h['isa_version']}: {h['model']} / {h['plan']} for preset "
          f"{h['preset']} ({h['preset_digest'][:12]}), max_len {h['max_len']}")  # fmt: skip
    for r in prog.regions:
        print(f"; region {r.name:<8} {r.kind:<8} base {r.base:#012x} size {r.size:,}")
    for i, t in enumerate(prog.templates):
        if args.template is not None and i != args.template:
            continue
        print(f"\n; template {i}: {t.phase} {t.lo}..{t.hi}, {len(t.instrs)} instructions, "
              f"{t.nbytes} bytes, {dict(t.info)}")  # fmt: skip
        depth = 0
        for pc, ins in enumerate(t.instrs):
            if ins.op == "ENDLOOP":
                depth -= 1
            print(f"{pc:6d}  {'  ' * depth}{disasm(ins)}")
            if ins.op == "LOOP":
                depth += 1
    return 0


def run_check(args: argparse.Namespace) -> int:
    from hwflow.funcsim import check_against_reference

    cfg, hw, plan = load_model(args.model), load_hw(args.hw), load_plan(args.plan)
    if _system.wants_system(args, hw):
        return _system.run_check(args)
    check_quality_size(cfg, "check")
    if check_batch(args.batch) > 1:
        return _run_check_batch(args, cfg, hw, plan)
    real: dict[str, Any] = {}
    parts: list[Any] = [cfg, plan, hw.digest, args.max_len, args.decode, args.seed]
    if is_checkpoint(args.model):  # trained weights, prompts and calibration from real text
        from hwflow.perplexity import DEFAULT_TEXT, calibration_ids, read_text, text_ids

        ck = load_checkpoint(args.model)
        cfg = ck.cfg.model_copy(update={"max_positions": args.max_len})
        text = read_text(DEFAULT_TEXT)
        prompt = text_ids(ck.tokenizer(), text, args.max_len, DEFAULT_TEXT)
        calib = calibration_ids(ck.tokenizer(), text, args.max_len, DEFAULT_TEXT)[: args.max_len]
        real = {"weights": ck.weights, "prompt": prompt, "calib_ids": calib}
        parts += [cache.files_digest(ck.files()), prompt.tolist(), calib.tolist()]
    with Progress() as prog:
        prog.note(f"checking {cfg.name} / {plan.name} on {hw.name} against the reference")
        res, _ = cache.memo(
            "checks",
            parts,
            lambda: check_against_reference(
                cfg, plan, hw, args.max_len, args.decode, args.seed, **real
            ),
            note=prog.note,
            what="check result",
        )
    if args.json:
        print_json(res)
    else:
        con = Console()
        n = len(res["steps"])
        bad = [s for s in res["steps"] if not s["equal"]]
        pre = sorted({s["tokens"] for s in res["steps"] if s["phase"] == "prefill"})
        con.print(
            f"{cfg.name} / {plan.name} on {hw.name}: {n} steps (prefill lengths {pre}, "
            f"{args.decode} decode steps), {res['instructions']:,} instructions at "
            f"{res['instructions_per_second']:,.0f}/s: "
            + ("[green]bit-exact[/green]" if not bad else f"[red]{len(bad)} steps differ[/red]")
        )
        for s in bad:
            con.print(f"  differs: {s}")
        _print_quality(
            con, res["quality"], "checkpoint weights, real text" if real else "seeded weights"
        )
    return 0 if res["bit_exact"] else 1


def _run_check_batch(args: argparse.Namespace, cfg: Any, hw: Any, plan: Any) -> int:
    """``check --batch B``: :func:`hwflow.batchcheck.check_batch_against_reference`."""
    from hwflow.batchcheck import check_batch_against_reference

    if is_checkpoint(args.model):
        raise ConfigError(
            f"--batch {args.batch}: the batched check runs seeded weights (a model config, not "
            f"the checkpoint {args.model})"
        )
    parts = ["batch", cfg, plan, hw.digest, args.max_len, args.batch, args.decode, args.seed]
    with Progress() as prog:
        prog.note(f"checking {cfg.name} / {plan.name} on {hw.name}, batch {args.batch}")
        res, _ = cache.memo(
            "checks",
            parts,
            lambda: check_batch_against_reference(
                cfg, plan, hw, args.max_len, args.batch, args.decode, args.seed
            ),
            note=prog.note,
            what="check result",
        )
    if args.json:
        print_json(res)
    else:
        bad = [s for s in res["steps"] if not s["equal"]]
        kv_bad = [s for s, ok in enumerate(res["kv_equal"]) if not ok]
        verdict = "[green]bit-exact[/green]" if res["bit_exact"] else "[red]differs[/red]"
        Console().print(
            f"{cfg.name} / {plan.name} on {hw.name}, batch {args.batch} ({res['engine']} "
            f"engine): prompts {res['prompt_lengths']}, {args.decode} decode steps of "
            f"{args.batch} and one of {args.batch - 1}, {len(res['steps'])} sequence-steps, "
            f"{res['instructions']:,} instructions: every sequence against its batch-1 "
            f"reference {verdict}"
        )
        for s in bad:
            Console().print(f"  differs: {s}")
        for s in kv_bad:
            Console().print(f"  KV cache of sequence {s} differs")
    return 0 if res["bit_exact"] else 1
