"""The ``hwflow`` command line: parses, calls the library, prints.

Each command group lives in its own module (``hwflow.commands.*``) exposing
``register(subparsers)``; every command function returns an exit code. A
:class:`~hwflow.errors.HwflowError` anywhere, or a usage error, ends in one line on stderr and
exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from typing import NoReturn

from hwflow.errors import HwflowError

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line too (subcommand parsers inherit the class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hwflow",
        description="Compile compressed LLMs for a sparse DSP-chain FPGA accelerator, generate and "
        "verify its RTL, and simulate it cycle by cycle.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    import hwflow.commands as commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"hwflow.commands.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already printed on one line
        return e.code if isinstance(e.code, int) else 2
    try:
        return int(args.func(args) or 0)
    except HwflowError as e:
        print(f"hwflow {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hwflow {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout went away (`hwflow disasm ... | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 141


if __name__ == "__main__":
    sys.exit(main())
