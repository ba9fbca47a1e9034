"""The ``hwflow`` command line: parses, calls the library, prints.

Each command group lives in its own module (``hwflow.commands.*``) exposing
``register(subparsers)``; every command function returns an exit code. A
:class:`~hwflow.errors.HwflowError` anywhere, a file that cannot be read or written
(:class:`OSError`, named by its path) or a usage error ends in one line on stderr and exit
code 2. ``--help`` of every command shows the defaults.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import textwrap
from importlib.metadata import PackageNotFoundError, version
from typing import Any, NoReturn

from hwflow.errors import HwflowError

__all__ = ["build_parser", "main"]


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows each option's default (unless it is None/False or the help already
    says it) and keeps a description's own line breaks (numbered step lists)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False) or "(default" in text or not action.option_strings:
            return text
        return super()._get_help_string(action)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        groups: list[list[str]] = []  # paragraphs and list items, each filled on its own
        for line in text.splitlines():
            body = line.strip()
            item = body[:1] == "-" or (body[:1].isdigit() and body[1:3] == ". ")
            if not body:
                groups.append([])
            elif item or not groups or not groups[-1]:
                groups.append([body])
            else:
                groups[-1].append(body)
        out = []
        for g in groups:
            if not g:
                out.append("")
                continue
            hang = indent + ("   " if g[0][:1].isdigit() else "  " if g[0][:1] == "-" else "")
            out.append(
                textwrap.fill(" ".join(g), width, initial_indent=indent, subsequent_indent=hang)
            )
        return "\n".join(out)


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line too (subcommand parsers inherit the class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hwflow",
        description="Compile compressed LLMs for a sparse DSP-chain FPGA accelerator, generate and "
        "verify its RTL, and simulate it cycle by cycle.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    import hwflow.commands as commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"hwflow.commands.{info.name}").register(sub)
    return parser


def _version() -> str:
    """The installed distribution's version (pyproject.toml)."""
    try:
        return version("hwflow")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _os_error(e: OSError) -> str:
    """One line for a file-system error: the path(s) and the system's reason."""
    paths = " -> ".join(str(p) for p in (e.filename, e.filename2) if p is not None)
    return f"{paths}: {e.strerror or e}" if paths else str(e.strerror or e)


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
    except BrokenPipeError:  # the reader of stdout went away (`hwflow disasm ... | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 141
    except OSError as e:  # a path that cannot be read or written, named by the system
        print(f"hwflow {args.command}: error: {_os_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hwflow {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
