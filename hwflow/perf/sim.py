"""Simulate a (prefill, decode) case: compile, expand, price, run, count energy.

A case is one prefill of ``prefill`` tokens (its last token's logits are the first generated
token: the time to first token) followed by ``decode`` decode steps at contexts
``prefill + 1 .. prefill + decode``. Every step is one run of its length bucket's template
(:meth:`hwflow.isa.Program.select`) from an idle machine, expanded by
:func:`hwflow.isa.expand` and priced by :mod:`hwflow.perf.lower`.

Modes
-----
``exact``   every decode step is expanded, priced and simulated. Inside a step the machine
            reuses barrier-delimited segments it has already simulated in the same relative
            state (:class:`~hwflow.perf.machine.SegmentMemo`: exact by construction).
``fast``    one decode step per length bucket is simulated -- the bucket's longest context in
            the case, its most expensive step -- and stands for every step of the bucket. The
            compiler's templates clamp attention extents to the exact context, so the other
            steps of a bucket move a few hundred bytes less per layer: ``fast`` is an upper
            bound within a bucket, not exact; the tests measure the difference on a small
            model. (Expanding a step, not simulating it, is the cost: ``exact`` on LLaMA-2-7B
            spends most of its time in :func:`hwflow.isa.expand`.)
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hwflow.config import CompressionPlan, HardwarePreset, ModelConfig
from hwflow.energy import Actions, Energy, energy
from hwflow.errors import ConfigError
from hwflow.isa import Program, Runtime, expand
from hwflow.model import step_graph
from hwflow.perf.lower import lower
from hwflow.perf.machine import UNITS, Machine, RunStats, SegmentMemo

__all__ = ["SimResult", "StepResult", "compile_cached", "run_step", "simulate"]

Mode = Literal["exact", "fast"]
TOKEN_UNITS = ("ld", "st", "mm", "mv", "sfu")


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
) -> StepResult:
    """Expand, price and simulate one step of ``program`` on ``hw``."""
    program.check_preset(hw.digest, hw.name)
    template = program.select(phase, runtime)
    ops, actions = lower(hw, expand(template, runtime))
    stats = Machine(hw, trace=trace).run(ops, memo)
    actions.idle_unit_cycles = sum(
        stats.cycles - stats.busy[u] for u in TOKEN_UNITS if stats.ops[u]
    )
    return StepResult(phase, runtime.length, runtime.pos, stats, actions)


_JOB: dict[str, Any] = {}


Task = tuple[str, int, int, bool, tuple[int, ...]]


def _job(task: Task) -> tuple[int, tuple[StepResult, dict[int, float]]]:
    """A worker's step and the roofline of the decode positions it stands for (the program,
    preset, model and plan are inherited through fork)."""
    phase, length, pos, trace, roof_positions = task
    memo = _JOB.setdefault("memo", SegmentMemo())
    hw = _JOB["hw"]
    r = run_step(hw, _JOB["prog"], phase, Runtime(length, pos), memo=memo, trace=trace)
    roof = {q: _roofline_cycles(_JOB["cfg"], _JOB["plan"], hw, q) for q in roof_positions}
    return (-1 if phase == "prefill" else pos), (r, roof)


def _run_steps(
    cfg: ModelConfig,
    plan: CompressionPlan,
    hw: HardwarePreset,
    prog: Program,
    tasks: list[Task],
    workers: int,
) -> dict[int, tuple[StepResult, dict[int, float]]]:
    """Run the steps, in ``workers`` forked processes when > 1 (results are identical)."""
    import gc
    import multiprocessing as mp

    _JOB.clear()
    _JOB.update(hw=hw, prog=prog, cfg=cfg, plan=plan)
    gc.freeze()  # the program's objects live for the whole run: keep them out of collections
    try:
        if workers <= 1 or len(tasks) < 2 or mp.current_process().daemon:
            return dict(map(_job, tasks))
        with mp.get_context("fork").Pool(workers) as pool:
            return dict(pool.imap_unordered(_job, tasks))
    finally:
        _JOB.clear()
        gc.unfreeze()


def _cache_dir() -> Path:
    return Path(os.environ.get("HWFLOW_CACHE", Path.home() / ".cache" / "hwflow"))


def _compiler_digest() -> str:
    """Hash of the compiler and ISA sources: a cached program is reused only by the same code."""
    import hwflow.compiler as comp
    import hwflow.isa as isa

    h = hashlib.sha256()
    files = [*sorted(Path(comp.__file__).parent.glob("*.py")), Path(isa.__file__)]
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


_PROGRAMS: dict[str, Program] = {}


def compile_cached(
    cfg: ModelConfig, plan: CompressionPlan, hw: HardwarePreset, max_len: int
) -> Program:
    """The compiled program, from memory, the on-disk cache or :func:`compile_model`."""
    from hwflow.compiler import compile_model

    key_src = f"{cfg.model_dump_json()}|{plan.model_dump_json()}|{hw.digest}|{max_len}"
    key = hashlib.sha256(f"{key_src}|{_compiler_digest()}".encode()).hexdigest()[:24]
    if key in _PROGRAMS:
        return _PROGRAMS[key]
    path = _cache_dir() / "programs" / f"{key}.hwp"
    prog = None
    if path.is_file():
        try:
            prog = Program.from_bytes(path.read_bytes(), str(path))
        except Exception:  # a damaged cache entry is recompiled, never trusted
            prog = None
    if prog is None:
        prog = compile_model(cfg, plan, hw, max_len).program
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(prog.to_bytes())
            tmp.replace(path)
        except OSError:
            pass  # caching is an optimisation only
    _PROGRAMS[key] = prog
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
    simulated_steps: int
    events: int
    wall_s: float
    #: (unit, op, start, end) cycles of the prefill and the first decode step, when traced
    trace: list[tuple[str, str, int, int]] = field(default_factory=list)

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
        """Decode: HBM roofline time / simulated time (1.0 = every cycle at full bandwidth)."""
        if not self.decode_cycles:
            return 0.0
        return sum(self.decode_roofline_cycles) / sum(self.decode_cycles)

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
            "roofline_ms_per_token": self.roofline_ms_per_token,
            "simulated_steps": self.simulated_steps,
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
    """Cycles the decode step at ``pos`` needs at the preset's sustained HBM bandwidth (every
    channel streaming at same-channel efficiency): the bytes the step must move (weights and
    KV cache, :func:`hwflow.model.step_graph`) / bandwidth."""
    nbytes = step_graph(cfg, plan, "decode", 1, pos).hbm_bytes
    bw = hw.hbm.peak_gbps * 1e9 * hw.hbm.efficiency_same_channel
    return nbytes / bw * hw.clock_hz


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
) -> SimResult:
    """Simulate the (prefill, decode) case; see the module doc for ``mode``."""
    t0 = time.perf_counter()
    if mode not in ("exact", "fast"):
        raise ConfigError(f"mode {mode!r} unknown (allowed: exact, fast)")
    if prefill < 1 or decode < 0:
        raise ConfigError(f"need prefill >= 1 and decode >= 0, got {prefill} and {decode}")
    max_len = max_len or min(cfg.max_positions, 2048)
    if prefill + decode > max_len:
        raise ConfigError(
            f"prefill {prefill} + decode {decode} = {prefill + decode} exceeds max_len {max_len}"
        )
    prog = program or compile_cached(cfg, plan, hw, max_len)
    positions = list(range(prefill, prefill + decode))
    # which step stands for which: exact -> itself; fast -> the bucket's last position
    if mode == "exact":
        rep = {p: p for p in positions}
    else:
        by_t: dict[int, int] = {}
        for p in positions:
            t = id(prog.select("decode", Runtime(1, p)))
            by_t[t] = max(by_t.get(t, p), p)
        rep = {p: by_t[id(prog.select("decode", Runtime(1, p)))] for p in positions}
    reps = sorted(set(rep.values()))
    # the roofline of a step is taken at the step that was simulated for it, so that the
    # fraction compares like with like (in exact mode: every step at its own context)
    tasks: list[Task] = [("prefill", prefill, 0, trace, ())]
    tasks += [("decode", 1, p, trace and i == 0, (p,)) for i, p in enumerate(reps)]
    out = _run_steps(cfg, plan, hw, prog, tasks, workers)
    pre = out.pop(-1)[0]
    results = {p: r for p, (r, _) in out.items()}
    roof_rep = {q: c for _, roof in out.values() for q, c in roof.items()}
    roof_at = {p: roof_rep[rep[p]] for p in positions}
    busy = dict(pre.stats.busy)
    stall = dict(pre.stats.stall)
    hbm = pre.stats.hbm_bytes
    events = pre.stats.events
    actions = Actions()
    actions.add(pre.actions)
    events_out = list(pre.stats.trace)
    if trace and reps:  # the first decode step follows the prefill on the timeline
        c0 = pre.cycles
        events_out += [(u, n, s + c0, e + c0) for u, n, s, e in results[reps[0]].stats.trace]
    dec_cycles: list[int] = []
    dec_bytes = 0
    for p in positions:
        r = results[rep[p]]
        dec_cycles.append(r.cycles)
        dec_bytes += r.stats.hbm_bytes
        for u in UNITS:
            busy[u] += r.stats.busy[u]
            stall[u] += r.stats.stall[u]
        actions.add(r.actions)
    for r in results.values():
        events += r.stats.events
    hbm += dec_bytes
    roof = [roof_at[p] for p in positions]
    total = pre.cycles + sum(dec_cycles)
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
        decode_roofline_cycles=roof,
        decode_hbm_bytes=dec_bytes,
        busy=busy,
        stall=stall,
        hbm_bytes=hbm,
        actions=actions,
        energy=energy(hw, actions, total),
        simulated_steps=1 + len(results),
        events=events,
        wall_s=time.perf_counter() - t0,
        trace=events_out,
    )
