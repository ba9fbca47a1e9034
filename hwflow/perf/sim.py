"""Simulate a (prefill, decode) case: compile, expand, price, run, count energy.

A case is one prefill of ``prefill`` tokens (its last token's logits are the first generated
token: the time to first token) followed by ``decode`` decode steps at contexts
``prefill + 1 .. prefill + decode``. Every step is one run of its length bucket's template
(:meth:`hwflow.isa.Program.select`) from an idle machine, expanded by
:func:`hwflow.isa.expand` and priced by :mod:`hwflow.perf.lower`.

Modes (the same cycles for every step: ``fast`` only avoids repeating identical work)
-----------------------------------------------------------------------------------
``exact``   every decode step is expanded in full, priced and simulated. Inside a step the
            machine reuses barrier-delimited segments it has already simulated in the same
            relative state (:class:`~hwflow.perf.machine.SegmentMemo`: exact by construction).
``fast``    the decode steps of a length bucket are grouped by their *signature*
            (:func:`hwflow.perf.lower.step_signature`: the priced instructions that depend on
            POS); one step per group is simulated and stands for the others, whose priced
            programs are equal, so their timelines are too. The compiler makes a bucket's steps
            identical by construction (static attention extents, the new K/V rows on one HBM
            channel per bucket), so there is one group per bucket; where that does not hold
            (e.g. a head_dim whose 16 rows overflow a granule) the steps differ and are
            simulated apart: never approximated. A simulated step expands and prices each
            distinct layer iteration once (:func:`hwflow.perf.lower.lower_reused`).

The decode roofline of a step is the bytes it must move at its own context (weights and its
KV rows, :func:`hwflow.model.step_graph`) at the sustained HBM bandwidth. Those bytes are affine
in the context; they are computed at both ends of the case and checked at two inner points.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hwflow import cache
from hwflow.config import CompressionPlan, HardwarePreset, ModelConfig
from hwflow.costs import hbm_achievable_gbps
from hwflow.energy import Actions, Energy, energy
from hwflow.errors import ConfigError
from hwflow.isa import Program, Runtime, expand
from hwflow.model import step_graph
from hwflow.perf.lower import PerfContext, lower, lower_reused, step_signature
from hwflow.perf.machine import TOKEN_UNIT_NAMES, UNITS, Machine, RunStats, SegmentMemo

__all__ = [
    "SimResult",
    "StepResult",
    "compile_cached",
    "default_max_len",
    "program_key",
    "run_step",
    "simulate",
    "simulate_cached",
]

Mode = Literal["exact", "fast"]


@dataclass
class StepResult:
    """One step run from an idle machine."""

    phase: str
    length: int
    pos: int
    stats: RunStats
    actions: Actions

    @property
    def cycles(self) -> int:
        return self.stats.cycles


def run_step(
    hw: HardwarePreset,
    program: Program,
    phase: str,
    runtime: Runtime,
    *,
    memo: SegmentMemo | None = None,
    trace: bool = False,
    reuse: bool = False,
    ctx: PerfContext | None = None,
) -> StepResult:
    """Expand, price and simulate one step of ``program`` on ``hw`` (with ``reuse``, each
    distinct loop iteration is expanded and priced once: the same ops, faster). ``ctx`` keeps
    the priced ops between steps (see :class:`~hwflow.perf.lower.PerfContext`)."""
    program.check_preset(hw.digest, hw.name)
    template = program.select(phase, runtime)
    if reuse:
        ops, actions = lower_reused(hw, template, runtime, ctx)
    else:
        ops, actions = lower(hw, expand(template, runtime), ctx)
    stats = Machine(hw, trace=trace).run(ops, memo)
    actions.idle_unit_cycles = sum(
        stats.cycles - stats.busy[u] for u in TOKEN_UNIT_NAMES if stats.ops[u]
    )
    return StepResult(phase, runtime.length, runtime.pos, stats, actions)


_JOB: dict[str, Any] = {}


#: phase, LEN, positions (a batched program's prefill: KV-cache slots), trace, fast, and the
#: batch (decode: every sequence at the position; optional, 1)
Task = tuple  # (str, int, tuple[int, ...], bool, bool[, int])


def task_runtime(phase: str, length: int, p: int, batch: int = 1) -> Runtime:
    """The runtime of a task's step at ``p``: a decode step of ``batch`` sequences at POS
    ``p`` (batch 1: LEN ``length``), or a prefill of LEN ``length`` into KV-cache slot ``p``."""
    if phase == "prefill":
        return Runtime(length, 0, p)
    return Runtime.batch([p] * batch) if batch > 1 else Runtime(length, p)


def _job(task: Task) -> list[tuple[int, StepResult, bool]]:
    """A worker's steps (the program and preset are inherited through fork): (position,
    result, simulated) for each position of the task; with ``fast``, one simulation per
    distinct signature among the positions (one template's)."""
    phase, length, positions, trace, fast, *rest = task
    hw, prog = _JOB["hw"], _JOB["prog"]
    ctx = _JOB.setdefault("ctx", PerfContext(hw))
    out: list[tuple[int, StepResult, bool]] = []
    done: dict[tuple, StepResult] = {}
    for p in positions:
        rt = task_runtime(phase, length, p, *rest)
        sig: tuple | None = None
        if fast and len(positions) > 1:
            sig = step_signature(ctx, prog.select(phase, rt), rt)
            if sig in done:
                out.append((p, done[sig], False))
                continue
        r = run_step(
            hw, prog, phase, rt, memo=ctx.memo, trace=trace and not out, reuse=fast, ctx=ctx
        )
        if sig is not None:
            done[sig] = r
        out.append((p, r, True))
    return out


def _collect(
    results: Iterable[list[tuple[int, StepResult, bool]]],
    total: int,
    progress: Callable[[int, int], None] | None,
) -> list[tuple[int, StepResult, bool]]:
    """The tasks' results in one list, ``progress`` told after each task."""
    out: list[tuple[int, StepResult, bool]] = []
    for i, got in enumerate(results, 1):
        out += got
        if progress:
            progress(i, total)
    return out


def _run_steps(
    cfg: ModelConfig,
    plan: CompressionPlan,
    hw: HardwarePreset,
    prog: Program,
    tasks: list[Task],
    workers: int,
    progress: Callable[[int, int], None] | None = None,
) -> list[tuple[int, StepResult, bool]]:
    """Run the steps, in ``workers`` forked processes when > 1 (results are identical);
    ``progress(done, total)`` after each task."""
    import gc
    import multiprocessing as mp

    _JOB.clear()
    _JOB.update(hw=hw, prog=prog, cfg=cfg, plan=plan)
    gc.freeze()  # the program's objects live for the whole run: keep them out of collections
    try:
        if workers <= 1 or len(tasks) < 2 or mp.current_process().daemon:
            return _collect(map(_job, tasks), len(tasks), progress)
        with mp.get_context("fork").Pool(workers) as pool:
            return _collect(pool.imap_unordered(_job, tasks), len(tasks), progress)
    finally:
        _JOB.clear()
        gc.unfreeze()


def program_key(
    cfg: ModelConfig, plan: CompressionPlan, hw: HardwarePreset, max_len: int, batch: int = 1
) -> str:
    """Cache key of a compiled program: the model, plan and preset values, ``max_len``, the
    batch (when > 1) and the package source (:mod:`hwflow.cache`)."""
    return cache.key("program", cfg, plan, hw.digest, max_len, *([batch] if batch > 1 else []))


def program_path(key: str) -> Path:
    """Where the program of ``key`` is cached."""
    return cache.cache_dir() / "programs" / f"{key}.hwp"


#: The programs compiled or loaded most recently, by key: a few, so that a sweep in one
#: process does not keep every program it ever used.
_PROGRAMS: OrderedDict[str, Program] = OrderedDict()
_PROGRAMS_KEPT = 2


def compile_cached(
    cfg: ModelConfig,
    plan: CompressionPlan,
    hw: HardwarePreset,
    max_len: int,
    *,
    note: Callable[[str], None] | None = None,
    batch: int = 1,
) -> Program:
    """The compiled program (for ``batch`` sequences), from memory, the on-disk cache or
    :func:`compile_model`; ``note`` is told which (for progress output)."""
    from hwflow.compiler import compile_model

    key = program_key(cfg, plan, hw, max_len, batch)
    if key in _PROGRAMS:
        _PROGRAMS.move_to_end(key)
        return _PROGRAMS[key]
    path = program_path(key)
    prog = None
    if path.is_file():
        try:
            prog = Program.from_bytes(path.read_bytes(), str(path))
            if note:
                note(f"compiled program from the cache ({path})")
        except Exception:  # a damaged cache entry is recompiled, never trusted
            prog = None
    if prog is None:
        if note:
            b = f", batch {batch}" if batch > 1 else ""
            note(f"compiling {cfg.name} / {plan.name} for {hw.name} (max_len {max_len}{b})")
        prog = compile_model(cfg, plan, hw, max_len, batch).program
        cache.write_bytes(path, prog.to_bytes())
    _PROGRAMS[key] = prog
    while len(_PROGRAMS) > _PROGRAMS_KEPT:
        _PROGRAMS.popitem(last=False)
    return prog


@dataclass
class SimResult:
    """A simulated (prefill, decode) case and everything reported about it."""

    model: str
    hw: str
    plan: str
    prefill: int
    decode: int
    mode: str
    clock_hz: float
    prefill_step: StepResult
    decode_cycles: list[int]  #: per decode step, contexts prefill+1 .. prefill+decode
    decode_roofline_cycles: list[float]  #: HBM roofline of each decode step (of its stand-in)
    decode_hbm_bytes: int  #: bytes the decode steps moved (simulated program)
    busy: dict[str, int]
    stall: dict[str, int]
    hbm_bytes: int
    actions: Actions
    energy: Energy
    simulated_steps: int  #: the prefill plus the decode steps simulated (not reused)
    events: int  #: SimPy events of the simulated steps (replayed segments included)
    wall_s: float
    #: (unit, op, start, end) cycles of the prefill and the first decode step, when traced
    trace: list[tuple[str, str, int, int]] = field(default_factory=list)
    #: fast mode: decode buckets of the case and the steps simulated beyond one per bucket
    #: (their priced program differed from their bucket's first step's)
    decode_buckets: int = 0
    fallback_steps: int = 0
    replayed_events: int = 0  #: the part of ``events`` in segments replayed from the memo
    hbm_peak_gbps: float = 0.0  #: raw HBM peak of the preset (channels x channel_gbps)
    hbm_achievable_gbps: float = 0.0  #: the model's sustained bandwidth of long reads

    # --- derived figures (SI units) ---
    @property
    def prefill_cycles(self) -> int:
        return self.prefill_step.cycles

    @property
    def total_cycles(self) -> int:
        return self.prefill_cycles + sum(self.decode_cycles)

    @property
    def seconds(self) -> float:
        return self.total_cycles / self.clock_hz

    @property
    def ttft_s(self) -> float:
        return self.prefill_cycles / self.clock_hz

    @property
    def decode_s(self) -> float:
        return sum(self.decode_cycles) / self.clock_hz

    def token_ms(self) -> tuple[float, float, float]:
        """Decode latency per token (min, mean, max) in milliseconds."""
        if not self.decode_cycles:
            return (0.0, 0.0, 0.0)
        c = self.decode_cycles
        f = 1e3 / self.clock_hz
        return (min(c) * f, sum(c) / len(c) * f, max(c) * f)

    @property
    def tokens(self) -> int:
        """Generated tokens: the prefill's one plus one per decode step."""
        return 1 + self.decode

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens over the whole case (prefill included)."""
        return self.tokens / self.seconds

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode / self.decode_s if self.decode else 0.0

    @property
    def average_w(self) -> float:
        return self.energy.average_w

    @property
    def tokens_per_j(self) -> float:
        return self.tokens / self.energy.total

    @property
    def j_per_token(self) -> float:
        return self.energy.total / self.tokens

    @property
    def roofline_fraction(self) -> float:
        """Decode: roofline time at the *achievable* HBM bandwidth / simulated time (1.0 = every
        cycle moving bytes as fast as long sequential reads can)."""
        if not self.decode_cycles:
            return 0.0
        return sum(self.decode_roofline_cycles) / sum(self.decode_cycles)

    @property
    def roofline_fraction_raw(self) -> float:
        """Decode: the same against the *raw* peak (channels x channel_gbps, e.g. 460 GB/s on the
        U280): achieved decode bandwidth of the needed bytes / peak."""
        if not self.hbm_peak_gbps:
            return 0.0
        return self.roofline_fraction * self.hbm_achievable_gbps / self.hbm_peak_gbps

    @property
    def roofline_ms_per_token(self) -> float:
        """Mean decode time per token at the sustained HBM bandwidth (the roofline)."""
        if not self.decode_cycles:
            return 0.0
        return sum(self.decode_roofline_cycles) / len(self.decode_cycles) / self.clock_hz * 1e3

    @property
    def hbm_gbps(self) -> float:
        """Achieved HBM bandwidth over the case, GB/s."""
        return self.hbm_bytes / self.seconds / 1e9

    @property
    def decode_hbm_gbps(self) -> float:
        return self.decode_hbm_bytes / self.decode_s / 1e9 if self.decode else 0.0

    def utilisation(self) -> dict[str, float]:
        return {u: self.busy[u] / self.total_cycles for u in UNITS}

    def summary(self) -> dict[str, Any]:
        """Flat, JSON-safe figures (the row a sweep writes)."""
        lo, avg, hi = self.token_ms()
        out: dict[str, Any] = {
            "model": self.model,
            "hw": self.hw,
            "plan": self.plan,
            "prefill": self.prefill,
            "decode": self.decode,
            "mode": self.mode,
            "clock_mhz": self.clock_hz / 1e6,
            "total_cycles": self.total_cycles,
            "prefill_cycles": self.prefill_cycles,
            "ttft_ms": self.ttft_s * 1e3,
            "ms_per_token_min": lo,
            "ms_per_token_avg": avg,
            "ms_per_token_max": hi,
            "tokens_per_s": self.tokens_per_s,
            "decode_tokens_per_s": self.decode_tokens_per_s,
            "average_w": self.average_w,
            "tokens_per_j": self.tokens_per_j,
            "j_per_token": self.j_per_token,
            "energy_j": self.energy.total,
            "hbm_gbps": self.hbm_gbps,
            "decode_hbm_gbps": self.decode_hbm_gbps,
            "decode_bytes_per_token": self.decode_hbm_bytes / self.decode if self.decode else 0,
            "roofline_fraction": self.roofline_fraction,
            "roofline_fraction_raw": self.roofline_fraction_raw,
            "hbm_peak_gbps": self.hbm_peak_gbps,
            "hbm_achievable_gbps": self.hbm_achievable_gbps,
            "roofline_ms_per_token": self.roofline_ms_per_token,
            "simulated_steps": self.simulated_steps,
            "fallback_steps": self.fallback_steps,
            "events": self.events,
            "wall_s": self.wall_s,
        }
        for u in UNITS:
            out[f"util_{u}"] = self.busy[u] / self.total_cycles
            out[f"stall_{u}"] = self.stall[u] / self.total_cycles
        for k, v in self.energy.joules.items():
            out[f"energy_{k}_j"] = v
        for b, v in sorted(self.actions.macs.items()):
            out[f"macs_w{b}"] = v
        a = self.actions
        out.update(
            buffer_read_bits=a.buffer_read_bits,
            buffer_write_bits=a.buffer_write_bits,
            hbm_read_bytes=a.hbm_read_bytes,
            hbm_write_bytes=a.hbm_write_bytes,
            sfu_ops=a.sfu_ops,
            instr_words=a.instr_words,
            idle_unit_cycles=a.idle_unit_cycles,
        )
        return out

    def decode_curve(self) -> list[tuple[int, float]]:
        """(context, ms) of every decode step."""
        f = 1e3 / self.clock_hz
        return [(self.prefill + 1 + i, c * f) for i, c in enumerate(self.decode_cycles)]


def _roofline_cycles(
    cfg: ModelConfig, plan: CompressionPlan, hw: HardwarePreset, pos: int
) -> float:
    """Cycles the decode step at ``pos`` needs at the preset's achievable HBM bandwidth (long
    sequential reads on every channel, :func:`hwflow.costs.hbm_achievable_gbps`): the bytes the
    step must move (weights and KV cache, :func:`hwflow.model.step_graph`) / bandwidth."""
    nbytes = step_graph(cfg, plan, "decode", 1, pos).hbm_bytes
    bw = hbm_achievable_gbps(hw) * 1e9
    return nbytes / bw * hw.clock_hz


def _rooflines(
    cfg: ModelConfig, plan: CompressionPlan, hw: HardwarePreset, positions: list[int]
) -> dict[int, float]:
    """:func:`_roofline_cycles` of consecutive ``positions``: the bytes are affine in the
    context (the weights plus the KV rows), so they are computed at both ends and checked at
    two inner points (every position is computed if that check fails)."""
    if len(positions) <= 4:
        return {p: _roofline_cycles(cfg, plan, hw, p) for p in positions}
    a, b = positions[0], positions[-1]
    ca, cb = _roofline_cycles(cfg, plan, hw, a), _roofline_cycles(cfg, plan, hw, b)

    def line(p: int) -> float:
        return ca + (cb - ca) * (p - a) / (b - a)

    for m in (positions[len(positions) // 3], positions[2 * len(positions) // 3]):
        cm = _roofline_cycles(cfg, plan, hw, m)
        if abs(line(m) - cm) > 1e-9 * cm:
            return {p: _roofline_cycles(cfg, plan, hw, p) for p in positions}
    return {p: line(p) for p in positions}


def default_max_len(cfg: ModelConfig) -> int:
    """The program's longest context when none is given: the model's, at most 2048."""
    return min(cfg.max_positions, 2048)


def simulate(
    cfg: ModelConfig,
    plan: CompressionPlan,
    hw: HardwarePreset,
    prefill: int,
    decode: int,
    *,
    mode: Mode = "fast",
    max_len: int | None = None,
    program: Program | None = None,
    trace: bool = False,
    workers: int = 1,
    note: Callable[[str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SimResult:
    """Simulate the (prefill, decode) case; see the module doc for ``mode``. ``note`` hears
    what is being done (compiling, or the cached program used, then simulating), ``progress``
    counts the step groups done."""
    t0 = time.perf_counter()
    max_len = max_len or default_max_len(cfg)
    _check_case(mode, prefill, decode, max_len)
    prog = program or compile_cached(cfg, plan, hw, max_len, note=note)
    positions = list(range(prefill, prefill + decode))
    fast = mode == "fast"
    groups = _decode_groups(prog, positions, fast)
    tasks: list[Task] = [("prefill", prefill, (0,), trace, fast)]
    tasks += [("decode", 1, tuple(g), trace and i == 0, fast) for i, g in enumerate(groups)]
    if note:
        note(f"simulating prefill {prefill} + {decode} decode steps ({mode} mode)")
    out = _run_steps(cfg, plan, hw, prog, tasks, workers, progress)
    pre = next(r for p, r, _ in out if r.phase == "prefill")
    results = {p: r for p, r, _ in out if r.phase == "decode"}
    simulated = [results[p] for p, r, sim in out if sim and r.phase == "decode"]
    steps = [pre, *(results[p] for p in positions)]
    actions = Actions()
    for r in steps:
        actions.add(r.actions)
    dec_cycles = [results[p].cycles for p in positions]
    dec_bytes = sum(results[p].stats.hbm_bytes for p in positions)
    roof_at = _rooflines(cfg, plan, hw, positions)
    return SimResult(
        model=cfg.name,
        hw=hw.name,
        plan=plan.name,
        prefill=prefill,
        decode=decode,
        mode=mode,
        clock_hz=hw.clock_hz,
        prefill_step=pre,
        decode_cycles=dec_cycles,
        decode_roofline_cycles=[roof_at[p] for p in positions],
        decode_hbm_bytes=dec_bytes,
        busy={u: sum(r.stats.busy[u] for r in steps) for u in pre.stats.busy},
        stall={u: sum(r.stats.stall[u] for r in steps) for u in pre.stats.stall},
        hbm_bytes=pre.stats.hbm_bytes + dec_bytes,
        actions=actions,
        energy=energy(hw, actions, pre.cycles + sum(dec_cycles)),
        simulated_steps=1 + len(simulated),
        events=pre.stats.events + sum(r.stats.events for r in simulated),
        wall_s=time.perf_counter() - t0,
        trace=_timeline(pre, [results[p] for p in positions[:1]] if trace else []),
        decode_buckets=len(groups) if fast else 0,
        fallback_steps=len(simulated) - len(groups) if fast else 0,
        replayed_events=pre.stats.replayed_events + sum(r.stats.replayed_events for r in simulated),
        hbm_peak_gbps=hw.hbm.peak_gbps,
        hbm_achievable_gbps=hbm_achievable_gbps(hw),
    )


def _check_case(mode: str, prefill: int, decode: int, max_len: int) -> None:
    """ConfigError unless the mode is known and the case fits the program's lengths."""
    if mode not in ("exact", "fast"):
        raise ConfigError(f"mode {mode!r} unknown (allowed: exact, fast)")
    if prefill < 1 or decode < 0:
        raise ConfigError(f"need prefill >= 1 and decode >= 0, got {prefill} and {decode}")
    if prefill + decode > max_len:
        raise ConfigError(
            f"prefill {prefill} + decode {decode} = {prefill + decode} exceeds max_len {max_len}"
        )


def _decode_groups(prog: Program, positions: list[int], fast: bool) -> list[list[int]]:
    """The decode positions in tasks: fast, one group per template (bucket), whose steps the
    worker groups by signature; exact, one position each."""
    if not fast:
        return [[p] for p in positions]
    by_t: dict[int, list[int]] = {}
    for p in positions:
        by_t.setdefault(id(prog.select("decode", Runtime(1, p))), []).append(p)
    return list(by_t.values())


def _timeline(pre: StepResult, after: list[StepResult]) -> list[tuple[str, str, int, int]]:
    """The traced timeline: the prefill's, then that of the steps ``after`` it (the first
    decode step when tracing), shifted to start where the prefill ends."""
    c0 = pre.cycles
    shifted = [(u, n, s + c0, e + c0) for r in after for u, n, s, e in r.stats.trace]
    return [*pre.stats.trace, *shifted]


def simulate_cached(
    cfg: ModelConfig,
    plan: CompressionPlan,
    hw: HardwarePreset,
    prefill: int,
    decode: int,
    *,
    mode: Mode = "fast",
    max_len: int | None = None,
    trace: bool = False,
    workers: int = 1,
    note: Callable[[str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[SimResult, bool]:
    """(:func:`simulate`, whether it came from the cache). The key holds the values of the
    model, plan, preset and its energy table, the case and the package source
    (:mod:`hwflow.cache`); ``workers`` does not change results and is not in it."""
    from hwflow.energy import load_energy_table

    max_len = max_len or default_max_len(cfg)
    table = load_energy_table(hw.energy_table) if hw.energy_table else None
    return cache.memo(
        "sims",
        (cfg, plan, hw.digest, table, prefill, decode, mode, max_len, trace),
        lambda: simulate(
            cfg,
            plan,
            hw,
            prefill,
            decode,
            mode=mode,
            max_len=max_len,
            trace=trace,
            workers=workers,
            note=note,
            progress=progress,
        ),
        note=note,
        what="simulated result",
    )
