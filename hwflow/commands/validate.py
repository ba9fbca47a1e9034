"""``hwflow validate``: published figures next to the model's (:mod:`hwflow.analysis.validate`).

Thin: parse, call the analysis, print a table (default), JSON (``--json``) or the Markdown the
README quotes (``--markdown``). Exit 0 when every row is within 25 % or explained, 1 when a row
is UNEXPLAINED, 2 on bad input."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hwflow.commands._common import Progress, positive, print_json

__all__ = ["markdown", "register"]


def register(sub: argparse._SubParsersAction) -> None:
    from hwflow.analysis.validate import GROUPS

    p = sub.add_parser(
        "validate",
        help="every published figure (FlightLLM, HBM, GPUs) next to the model's, with sources",
        description="Run the model for the case of every published figure in "
        "mappings/measurements (FlightLLM's U280 board and VHK158 profiler results, their GPU "
        "comparisons and headline ratios, HBM bandwidth measurements) and print published, "
        "model, ratio, source and verdict: within 25 %, explained (the figure's own reason), "
        "or UNEXPLAINED. Also the replicas' modelled board power. Exit 1 if a row is "
        "UNEXPLAINED.",
    )
    p.add_argument(
        "--groups",
        nargs="+",
        choices=list(GROUPS),
        default=list(GROUPS),
        help="which groups of figures (default: all)",
    )
    p.add_argument(
        "--measurements",
        type=Path,
        help="folder of measurement files (default: the shipped mappings/measurements)",
    )
    p.add_argument("--workers", type=positive, default=2, help="processes per simulation")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print rows and board power as JSON")
    out.add_argument("--markdown", action="store_true", help="print the README's Markdown table")
    p.set_defaults(func=run)


def _num(v: float | None) -> str:
    """A figure in 4 significant digits ('-' for none)."""
    return "-" if v is None else f"{v:.4g}"


def _table(rows: list) -> Table:
    t = Table(
        title="hwflow validate: published figures against the model (ratio = model / published)"
    )
    for c, j in (
        ("#", "right"),
        ("group", "left"),
        ("figure", "left"),
        ("unit", "left"),
        ("published", "right"),
        ("model", "right"),
        ("ratio", "right"),
        ("x3.2 ratio", "right"),
        ("verdict", "left"),
    ):
        t.add_column(c, justify=j)
    for i, r in enumerate(rows, 1):
        t.add_row(
            str(i),
            r.group,
            r.name,
            r.unit,
            _num(r.published),
            _num(r.model),
            f"{r.ratio:.3f}",
            "-" if r.ratio_profiler is None else f"{r.ratio_profiler:.3f}",
            r.verdict,
        )
    return t


def _notes(rows: list) -> list[str]:
    """Per row: the case, the source, what is unsure, and the explanation when outside."""
    out = []
    for i, r in enumerate(rows, 1):
        out.append(f"[{i}] case: {r.case}")
        out.append(f"     source: {r.source}")
        if r.unsure:
            out.append(f"     unsure: {r.unsure}")
        if not r.within:
            out.append(f"     why: {r.why or 'UNEXPLAINED'}")
    return out


def _refs(texts: list[str]) -> tuple[list[str], list[int]]:
    """The distinct texts in order of first use, and each row's index into them (1-based)."""
    distinct = list(dict.fromkeys(texts))
    return distinct, [distinct.index(x) + 1 for x in texts]


def markdown(rows: list, power: list) -> str:
    """The Markdown the README quotes (generated, never hand-typed): the table, each distinct
    source and uncertainty once, and the replicas' board power."""
    sources, src = _refs([r.source for r in rows])
    doubts, _ = _refs([r.unsure for r in rows if r.unsure])
    first_why: dict[str, int] = {}
    lines = [
        "| # | figure | published | model | model / published | verdict | source |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows, 1):
        ratio = f"{r.ratio:.3f}"
        if r.ratio_profiler is not None:
            ratio += f" (x3.2: {r.ratio_profiler:.3f})"
        verdict = r.verdict
        if not r.within and r.why:
            seen = first_why.setdefault(r.why, i)
            verdict += f": {r.why}" if seen == i else f" (as #{seen})"
        flag = f" (unsure: U{doubts.index(r.unsure) + 1})" if r.unsure else ""
        lines.append(
            f"| {i} | {r.name}{flag} | {_num(r.published)} {r.unit} | {_num(r.model)} {r.unit} "
            f"| {ratio} | {verdict} | S{src[i - 1]} |"
        )
    lines += ["", "Sources:", ""]
    lines += [f"- S{k}: {s}" for k, s in enumerate(sources, 1)]
    if doubts:
        lines += ["", "What is unsure:", ""]
        lines += [f"- U{k}: {d}" for k, d in enumerate(doubts, 1)]
    if power:
        lines += ["", "| replica case | modelled board power | static | dynamic by component |"]
        lines.append("|---|---|---|---|")
        for p in power:
            dyn = ", ".join(f"{k} {w:.2f}" for k, w in p.dynamic_w.items())
            lines.append(f"| `{p.case}` | {p.average_w:.1f} W | {p.static_w:.1f} W | {dyn} W |")
        lines += ["", f"FlightLLM's reported board power: {power[0].reported}."]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from hwflow.analysis.validate import Sims, board_power, validate

    with Progress() as prog:
        sims = Sims(workers=args.workers, note=prog.note)
        rows = validate(args.groups, args.measurements, sims)
    power = board_power(sims)
    if args.json:
        print_json(
            {"rows": [r.as_dict() for r in rows], "board_power": [p.as_dict() for p in power]}
        )
    elif args.markdown:
        print(markdown(rows, power))
    else:
        Console(width=200).print(_table(rows))
        print("\n".join(_notes(rows)))
        if power:
            print("\nmodelled board power of the replicas (FlightLLM reports: see below):")
            for p in power:
                dyn = ", ".join(f"{k} {w:.2f}" for k, w in p.dynamic_w.items())
                print(f"  {p.average_w:5.1f} W = static {p.static_w:.1f} W + {dyn} W  ({p.case})")
            print(f"  FlightLLM's reported power: {power[0].reported}")
    within = sum(r.within for r in rows)
    explained = sum(not r.within and bool(r.why) for r in rows)
    unexplained = len(rows) - within - explained
    if not args.json and not args.markdown:
        print(
            f"\n{len(rows)} published figures: {within} within 25 %, {explained} outside and "
            f"explained, {unexplained} unexplained"
        )
    return 1 if unexplained else 0
