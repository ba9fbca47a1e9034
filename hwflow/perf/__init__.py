"""Cycle-level model of the accelerator (SimPy).

* :mod:`hwflow.perf.hbm`: HBM pseudo-channels (FIFO servers; peak x efficiency, latency).
* :mod:`hwflow.perf.machine`: the dispatcher, one process per unit, instruction queues,
  dependency tokens, exact reuse of barrier-delimited segments.
* :mod:`hwflow.perf.lower`: a program's expanded instructions priced with :mod:`hwflow.costs`;
  each distinct loop iteration priced once, and step signatures that tell identical steps.
* :mod:`hwflow.perf.sim`: whole (prefill, decode) cases: latency, throughput, energy, roofline;
  ``fast`` mode simulates one step per group of identical steps (exact, not an estimate).
* :mod:`hwflow.perf.trace`: Perfetto / chrome://tracing timelines.
"""

from hwflow.perf.machine import Machine, MOp, RunStats, SegmentMemo
from hwflow.perf.sim import SimResult, StepResult, run_step, simulate

__all__ = [
    "MOp",
    "Machine",
    "RunStats",
    "SegmentMemo",
    "SimResult",
    "StepResult",
    "run_step",
    "simulate",
]
