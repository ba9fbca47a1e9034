"""Helpers shared by the CLI command modules."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.progress import Progress as RichProgress

from hwflow.files import atomic_write, check_output_dir, check_output_file

__all__ = [
    "Progress",
    "atomic_write",
    "check_output_dir",
    "check_output_file",
    "positive",
    "print_json",
    "seed",
]


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def seed(text: str) -> int:
    """argparse type of a random seed: a whole number >= 0 (what numpy's generators take)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid seed {text!r} (allowed: a whole number >= 0)")
    return value


def positive(text: str) -> int:
    """argparse type of a count (workers, chains): a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid count {text!r} (allowed: a whole number >= 1)")
    return value


class Progress:
    """Progress of a long step on stderr (stdout stays clean for ``--json``): on a terminal
    (or with ``FORCE_COLOR`` set) a rich spinner and bar under each note; otherwise nothing,
    so logs, pipes and error output stay as they were.

    ``note(text)`` says what is happening ("compiled program from the cache ..."); ``step(done,
    total)`` advances the bar of the current note."""

    def __init__(self) -> None:
        self.console = Console(stderr=True)
        self.live = self.console.is_terminal
        self._bar: RichProgress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> Progress:
        if self.live:
            self._bar = RichProgress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)

    def note(self, text: str) -> None:
        if self._bar is None:
            return
        if self._task is not None:
            self._bar.stop_task(self._task)
            self._bar.update(self._task, visible=False)
        self.console.print(f"[dim]{text}[/dim]")
        self._task = self._bar.add_task(text, total=None)

    def step(self, done: int, total: int) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=done, total=total)
