"""``hwflow bench NAME``: run one benchmark of :mod:`hwflow.benchmarks` and print its figures."""

from __future__ import annotations

import argparse
import importlib
import pkgutil

import hwflow.benchmarks as benchmarks


def _modules() -> dict[str, object]:
    return {
        info.name: importlib.import_module(f"hwflow.benchmarks.{info.name}")
        for info in pkgutil.iter_modules(benchmarks.__path__)
        if not info.name.startswith("_")
    }


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run a benchmark and print its figures")
    names = p.add_subparsers(dest="bench", metavar="NAME", required=True)
    for name, mod in sorted(_modules().items()):
        q = names.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(q)
        q.set_defaults(func=mod.run)
