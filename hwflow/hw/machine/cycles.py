"""Per-instruction cycles of the RTL machine against the SimPy model (:mod:`hwflow.perf`).

The RTL's monitor records, per unit instruction, the cycle its unit accepted it and the cycle
its ``done`` came (a SYNC: the cycle the front end retired it); its time is the difference
plus one (the results are there after the ``done`` cycle, the model's completion). The model's trace gives each
op's issue span and completion; an op's *time* there is start to completion: LD/ST from the
request stage (``costs.LDST_REQUEST_STAGES``) before its first channel start to its completion
(:mod:`hwflow.perf.machine`: the data on chip, ``ldst_done_stages`` and an LD's flush; an
empty one ``LDST_REQUEST_STAGES + 1``), every other op its priced ``latency``. Both sides
run each unit in order, so the n-th instruction of a unit on one side is the n-th on the
other. :func:`class_table` averages per instruction class (LD, ST, MM, MV, SFU, SYNC).

What an LD/ST's *busy* time is. The HBM channels are shared: a transfer whose channels are
still streaming the other unit's transfers queues until the first of its pieces holds a
channel. Neither side counts that queueing as the unit's busy time: the model's trace span
starts at that first channel start (:mod:`hwflow.perf.machine`: "Busy cycles ... LD/ST: the
times its transfers stream"), and the RTL record carries the cycles the
transfer's first burst queued at the simulated HBM before its first piece held a channel
(:mod:`hwflow.hw.machine.hbm_sim`, ``chan_*_wait``), which :func:`class_table` subtracts. So the
per-class figure holds each unit to its cost function (``costs.hbm_pieces`` for LD/ST), while
the contention itself is in both sides' program cycles, which ``cycle_error`` compares.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hwflow.config import HardwarePreset
from hwflow.costs import LDST_REQUEST_STAGES
from hwflow.isa import TOKEN_UNITS, Program, Runtime, expand
from hwflow.perf.lower import lower
from hwflow.perf.machine import UNITS, Machine

__all__ = ["ClassRow", "check_agreement", "class_table", "format_table", "model_times"]


@dataclass(frozen=True)
class ClassRow:
    """One instruction class: count, mean RTL and model cycles (start to done), and the
    signed relative error of the means (RTL vs model)."""

    name: str
    count: int
    rtl: float
    model: float

    @property
    def error(self) -> float:
        return (self.rtl - self.model) / self.model if self.model else 0.0


def model_times(
    hw: HardwarePreset, program: Program, phase: str, runtime: Runtime
) -> tuple[int, dict[int, list[tuple[str, int]]]]:
    """The model's step cycles and, per token unit, its ops' (class, start-to-done cycles)."""
    template = program.select(phase, runtime)
    ops, _ = lower(hw, expand(template, runtime))
    stats = Machine(hw, trace=True).run(ops)
    per_unit: dict[int, list] = {u: [] for u in TOKEN_UNITS}
    spans: dict[str, list[tuple[int, int]]] = {}
    for (unit, _name, a, _b), done in zip(stats.trace, stats.ends, strict=True):
        spans.setdefault(unit, []).append((a, done))
    for u in TOKEN_UNITS:
        mine = [op for op in ops if op.unit == u]
        for op, (a, done) in zip(mine, spans.get(UNITS[u], []), strict=True):
            cls = "SYNC" if op.name.startswith("SYNC") else u.name
            if op.hbm:  # from the request before its first channel start to the completion
                t = LDST_REQUEST_STAGES + done - a
            elif op.hbm is not None:  # an empty transfer: the command register, then done
                t = LDST_REQUEST_STAGES + 1
            else:
                t = op.latency
            per_unit[u].append((cls, t))
    return stats.cycles, per_unit


def class_table(
    records: Sequence[Sequence[int]], model: dict[int, list[tuple[str, int]]]
) -> list[ClassRow]:
    """Per class means of the RTL records (unit, pc, start, end[, channel wait]) vs the
    model's times; a record's time is ``end - start + 1`` less its channel wait (module doc)."""
    rtl: dict[int, list[int]] = {u: [] for u in TOKEN_UNITS}
    for rec in sorted(records, key=lambda r: (r[2], r[0])):
        unit, _pc, start, end = rec[:4]
        wait = rec[4] if len(rec) > 4 else 0
        rtl[unit].append(end - start + 1 - wait)  # done in cycle ``end``: results visible after
    acc: dict[str, list[float]] = {}
    for u in TOKEN_UNITS:
        if len(rtl[u]) != len(model[u]):
            raise ValueError(
                f"{u.name}: the RTL ran {len(rtl[u])} instructions, the model {len(model[u])}"
            )
        for r, (cls, m) in zip(rtl[u], model[u], strict=True):
            a = acc.setdefault(cls, [0, 0.0, 0.0])
            a[0] += 1
            a[1] += r
            a[2] += m
    order = ["LD", "ST", "MM", "MV", "SFU", "SYNC"]
    return [
        ClassRow(c, int(acc[c][0]), acc[c][1] / acc[c][0], acc[c][2] / acc[c][0])
        for c in order
        if c in acc
    ]


def format_table(rows: Sequence[ClassRow]) -> str:
    """The table as text: class, count, mean RTL and model cycles, error."""
    lines = [f"{'class':<6} {'n':>6} {'rtl':>10} {'model':>10} {'error':>8}"]
    for r in rows:
        lines.append(f"{r.name:<6} {r.count:>6} {r.rtl:>10.1f} {r.model:>10.1f} {r.error:>+8.1%}")
    return "\n".join(lines)


def check_agreement(
    rows: Sequence[ClassRow], tolerance: float, classes: Sequence[str] | None = None
) -> None:
    """AssertionError naming every class (of ``classes``, default all) whose mean RTL busy
    cycles differ from the model's by more than ``tolerance`` (relative)."""
    bad = [
        f"{r.name}: rtl {r.rtl:.1f} vs model {r.model:.1f} ({r.error:+.1%})"
        for r in rows
        if (classes is None or r.name in classes) and abs(r.error) > tolerance
    ]
    if bad:
        raise AssertionError(f"cycles disagree beyond {tolerance:.0%}: " + "; ".join(bad))
