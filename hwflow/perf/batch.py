"""Simulate a batched case: B sequences, each a prefill of ``prefill`` tokens into its own KV
cache, then ``decode`` decode steps of all B at once (:mod:`hwflow.compiler.batch`).

Every step is one run of its template from an idle machine on the SimPy model, priced by
:mod:`hwflow.perf.lower` from :mod:`hwflow.costs` exactly as at batch 1: the thin matrix
products of B rows cost what :func:`hwflow.costs.matmul_cost` says for B token rows on the
engine the compiler chose (``ceil(B / rows)`` passes of every weight beat), the HBM transfers
what their bytes and channels cost. No batch-specific constant enters.

Figures. A decode step produces one token of each of the B sequences: ``ms/token`` is the
step's time (what each sequence waits per token), ``tokens/s`` is B / step time (all
sequences). The step is *compute-bound* when the matrix engines' busy cycles (MM + MV, from
the simulation) exceed its HBM time (the channels' streaming cycles averaged over the
channels): past that batch the engines, not HBM, set the pace. The HBM roofline of a step is
the bytes it must move (the weights once, each sequence's KV rows,
:func:`hwflow.model.step_graph`) at the sustained bandwidth.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hwflow import cache
from hwflow.compiler.batch import check_batch
from hwflow.config import CompressionPlan, HardwarePreset, ModelConfig
from hwflow.costs import hbm_achievable_gbps
from hwflow.energy import Actions, Energy, energy
from hwflow.errors import ConfigError
from hwflow.isa import Program, Runtime
from hwflow.model import step_graph
from hwflow.perf.sim import (
    Mode,
    _check_case,
    _decode_groups,
    _run_steps,
    compile_cached,
    default_max_len,
)

__all__ = ["BatchSimResult", "decode_roofline_cycles", "simulate_batch", "simulate_batch_cached"]


@dataclass
class BatchSimResult:
    """A simulated batched case and what is reported about it (SI units in the names)."""

    model: str
    hw: str
    plan: str
    batch: int
    prefill: int  #: prompt tokens of every sequence
    decode: int  #: batched decode steps (each makes one token of every sequence)
    mode: str
    clock_hz: float
    engine: str  #: the engine of the linears and the head (:func:`batch_engine`)
    prefill_cycles: list[int]  #: one per sequence
    decode_cycles: list[int]  #: one per decode step
    engine_cycles: list[int]  #: MM + MV busy cycles of each decode step
    hbm_cycles: list[float]  #: each decode step's HBM time: channel streaming cycles / channels
    roofline_cycles: list[float]  #: each decode step's HBM roofline
    decode_hbm_bytes: int
    actions: Actions
    energy: Energy  #: the whole case (B prefills and the decode steps)
    decode_energy: Energy  #: the decode steps alone
    simulated_steps: int
    wall_s: float

    @property
    def decode_s(self) -> float:
        return sum(self.decode_cycles) / self.clock_hz

    @property
    def ms_per_token(self) -> float:
        """Mean decode step time: every sequence waits this long per generated token."""
        return self.decode_s / self.decode * 1e3 if self.decode else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens of all sequences per second of decode."""
        return self.batch * self.decode / self.decode_s if self.decode else 0.0

    @property
    def ttft_s(self) -> float:
        """Time to the first token of the last sequence (the B prefills run one after another)."""
        return sum(self.prefill_cycles) / self.clock_hz

    @property
    def total_s(self) -> float:
        return self.ttft_s + self.decode_s

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens of all sequences (each prefill's one and the decode steps') over
        the whole case."""
        return self.batch * (1 + self.decode) / self.total_s

    @property
    def tokens_per_j(self) -> float:
        return self.batch * (1 + self.decode) / self.energy.total

    @property
    def decode_tokens_per_j(self) -> float:
        """Tokens of all sequences per joule of the decode steps alone."""
        return self.batch * self.decode / self.decode_energy.total

    @property
    def compute_bound(self) -> bool:
        """Whether the decode steps' engine time exceeds their HBM time (module doc)."""
        return sum(self.engine_cycles) > sum(self.hbm_cycles)

    def summary(self) -> dict[str, Any]:
        """Flat, JSON-safe figures."""
        d = max(self.decode, 1)
        return {
            "model": self.model,
            "hw": self.hw,
            "plan": self.plan,
            "batch": self.batch,
            "prefill": self.prefill,
            "decode": self.decode,
            "mode": self.mode,
            "engine": self.engine,
            "clock_mhz": self.clock_hz / 1e6,
            "ttft_ms": self.ttft_s * 1e3,
            "ms_per_token": self.ms_per_token,
            "decode_tokens_per_s": self.decode_tokens_per_s,
            "tokens_per_s": self.tokens_per_s,
            "tokens_per_j": self.tokens_per_j,
            "decode_tokens_per_j": self.decode_tokens_per_j,
            "energy_j": self.energy.total,
            "average_w": self.energy.average_w,
            "decode_engine_ms_per_step": sum(self.engine_cycles) / d / self.clock_hz * 1e3,
            "decode_hbm_ms_per_step": sum(self.hbm_cycles) / d / self.clock_hz * 1e3,
            "roofline_ms_per_step": sum(self.roofline_cycles) / d / self.clock_hz * 1e3,
            "compute_bound": self.compute_bound,
            "decode_bytes_per_token": self.decode_hbm_bytes / (d * self.batch),
            "simulated_steps": self.simulated_steps,
            "wall_s": self.wall_s,
        }


def decode_roofline_cycles(
    cfg: ModelConfig, plan: CompressionPlan, hw: HardwarePreset, pos: int, batch: int
) -> float:
    """Cycles a decode step of ``batch`` sequences at POS ``pos`` needs at the sustained HBM
    bandwidth: the weights once and every sequence's KV bytes (:func:`step_graph`)."""
    g = step_graph(cfg, plan, "decode", 1, pos)
    nbytes = g.weight_bytes + batch * g.kv_bytes
    return nbytes / (hbm_achievable_gbps(hw) * 1e9) * hw.clock_hz


def simulate_batch(
    cfg: ModelConfig,
    plan: CompressionPlan,
    hw: HardwarePreset,
    batch: int,
    prefill: int,
    decode: int,
    *,
    mode: Mode = "fast",
    max_len: int | None = None,
    workers: int = 1,
    note: Callable[[str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    program: Program | None = None,
) -> BatchSimResult:
    """Simulate the batched case (module doc); ``mode`` as :func:`hwflow.perf.sim.simulate`;
    ``program``: the compiled program for ``batch`` when the caller has it."""
    t0 = time.perf_counter()
    check_batch(batch)
    max_len = max_len or default_max_len(cfg)
    _check_case(mode, prefill, decode, max_len)
    if decode < 1:
        raise ConfigError(f"--decode {decode}: a batched case needs at least one decode step")
    prog = program or compile_cached(cfg, plan, hw, max_len, note=note, batch=batch)
    fast = mode == "fast"
    positions = list(range(prefill, prefill + decode))
    slots = tuple(range(batch))
    tasks: list[tuple] = [("prefill", prefill, s, False, fast) for s in _groups(slots, fast)]
    tasks += [("decode", batch, tuple(g), False, fast, batch)
              for g in _decode_groups(prog, positions, fast)]  # fmt: skip
    if note:
        note(
            f"simulating {batch} prefills of {prefill} + {decode} decode steps of {batch} ({mode})"
        )
    out = _run_steps(cfg, plan, hw, prog, tasks, workers, progress)
    pre = {p: r for p, r, _ in out if r.phase == "prefill"}
    dec = {p: r for p, r, _ in out if r.phase == "decode"}
    steps = [*(pre[s] for s in slots), *(dec[p] for p in positions)]
    actions, dec_actions = Actions(), Actions()
    for r in steps:
        actions.add(r.actions)
    for p in positions:
        dec_actions.add(dec[p].actions)
    cycles = sum(r.cycles for r in steps)
    nch = hw.hbm.channels
    return BatchSimResult(
        model=cfg.name,
        hw=hw.name,
        plan=plan.name,
        batch=batch,
        prefill=prefill,
        decode=decode,
        mode=mode,
        clock_hz=hw.clock_hz,
        engine=str(
            prog.select("decode", Runtime.batch([prefill] * batch)).info.get("engine", "MV")
        ),
        prefill_cycles=[pre[s].cycles for s in slots],
        decode_cycles=[dec[p].cycles for p in positions],
        engine_cycles=[dec[p].stats.busy["mm"] + dec[p].stats.busy["mv"] for p in positions],
        hbm_cycles=[dec[p].stats.hbm_channel_cycles / nch for p in positions],
        roofline_cycles=[decode_roofline_cycles(cfg, plan, hw, p, batch) for p in positions],
        decode_hbm_bytes=sum(dec[p].stats.hbm_bytes for p in positions),
        actions=actions,
        energy=energy(hw, actions, cycles),
        decode_energy=energy(hw, dec_actions, sum(dec[p].cycles for p in positions)),
        simulated_steps=sum(sim for _, _, sim in out),
        wall_s=time.perf_counter() - t0,
    )


def _groups(slots: tuple[int, ...], fast: bool) -> list[tuple[int, ...]]:
    """Prefill tasks: fast, all slots in one (the worker simulates one per distinct
    signature); exact, one each."""
    return [slots] if fast else [(s,) for s in slots]


def simulate_batch_cached(
    cfg: ModelConfig,
    plan: CompressionPlan,
    hw: HardwarePreset,
    batch: int,
    prefill: int,
    decode: int,
    *,
    mode: Mode = "fast",
    max_len: int | None = None,
    workers: int = 1,
    note: Callable[[str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[BatchSimResult, bool]:
    """(:func:`simulate_batch`, whether it came from the cache); the key as
    :func:`hwflow.perf.sim.simulate_cached`'s, with the batch."""
    from hwflow.energy import load_energy_table

    max_len = max_len or default_max_len(cfg)
    table = load_energy_table(hw.energy_table) if hw.energy_table else None
    return cache.memo(
        "batch-sims",
        (cfg, plan, hw.digest, table, batch, prefill, decode, mode, max_len),
        lambda: simulate_batch(
            cfg,
            plan,
            hw,
            batch,
            prefill,
            decode,
            mode=mode,
            max_len=max_len,
            workers=workers,
            note=note,
            progress=progress,
        ),
        note=note,
        what="simulated result",
    )
