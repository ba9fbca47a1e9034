"""Timeline export in the Chrome trace-event format (Perfetto, chrome://tracing).

One process (the accelerator), one thread per unit, one complete event (``ph: X``) per
instruction from its start to the end of its issue (LD/ST: of its streaming). Times are
microseconds at the preset's clock.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from hwflow.files import atomic_write
from hwflow.perf.machine import UNITS

__all__ = ["chrome_trace", "write_trace"]


def chrome_trace(
    events: Sequence[tuple[str, str, int, int]], clock_hz: float, name: str = "hwflow"
) -> dict:
    """The trace-event JSON object of ``(unit, op, start_cycle, end_cycle)`` events."""
    us = 1e6 / clock_hz
    tid = {u: i for i, u in enumerate(UNITS)}
    out: list[dict] = [
        {"name": "process_name", "ph": "M", "pid": 1, "tid": 0, "args": {"name": name}}
    ]
    out += [
        {"name": "thread_name", "ph": "M", "pid": 1, "tid": i, "args": {"name": u.upper()}}
        for u, i in tid.items()
    ]
    for u, op, s, e in events:
        out.append(
            {
                "name": op,
                "cat": u,
                "ph": "X",
                "pid": 1,
                "tid": tid[u],
                "ts": s * us,
                "dur": (e - s) * us,
                "args": {"start_cycle": s, "end_cycle": e},
            }
        )
    return {"traceEvents": out, "displayTimeUnit": "ns"}


def write_trace(
    path: Path, events: Sequence[tuple[str, str, int, int]], clock_hz: float, name: str
) -> None:
    """Write the timeline to ``path`` (JSON, atomically)."""
    atomic_write(Path(path), json.dumps(chrome_trace(events, clock_hz, name)))
