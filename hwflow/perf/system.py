"""Cycle model of a multi-board system: every distinct board program on the SimPy machine
(:func:`hwflow.perf.sim.simulate`, link instructions priced by :mod:`hwflow.perf.links`), then
the system's figures.

* **Tensor parallel**: the boards run the same program on their shares and meet at every
  all-reduce, so one board's timeline is the system's (the all-reduce time inside it is the
  ring's, from the links' SimPy model). Energy is the boards' sum.
* **Pipeline parallel** at batch 1: a decode step passes through the stages one after the
  other (the next token needs this one's logits), so its time is the sum of the stages' step
  times, each including the SEND of its residual rows; prefill is modelled the same way (its
  chunks are not overlapped across stages: an upper bound on prefill time). While one stage
  works the others wait, burning their static power, which the system energy adds
  (``idle_static_j``). Pipeline parallelism buys capacity, not batch-1 speed.

Link energy is not modelled (see :mod:`hwflow.perf.links`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hwflow.compiler.partition import SystemCompiled, compile_system
from hwflow.config import CompressionPlan, HardwarePreset, ModelConfig
from hwflow.energy import load_energy_table
from hwflow.isa import LINK_OPS, Runtime, expand
from hwflow.perf.links import allreduce_ns, p2p_ns
from hwflow.perf.sim import SimResult, default_max_len, simulate

__all__ = ["SystemResult", "link_ns_per_step", "simulate_system"]


def link_ns_per_step(hw: HardwarePreset, sysc: SystemCompiled, board: int, pos: int) -> float:
    """Nanoseconds board ``board``'s link instructions take in the decode step at ``pos``."""
    prog = sysc.boards[board].program
    rt = Runtime(1, pos)
    ns = 0.0
    for c in expand(prog.select("decode", rt), rt):
        if c.op in LINK_OPS:
            nbytes = c["rows"] * c["row_bytes"]
            ns += allreduce_ns(hw, nbytes, c["peer"]) if c.op == "ALLRED" else 0.0
            ns += p2p_ns(hw, nbytes) if c.op == "SEND" else 0.0
    return ns


@dataclass
class SystemResult:
    """A simulated (prefill, decode) case on ``boards`` boards."""

    model: str
    hw: str
    plan: str
    boards: int
    parallel: str
    prefill: int
    decode: int
    per_board: list[SimResult]  #: one per board (tensor: board 0's, standing for all)
    ttft_s: float
    decode_s: float
    energy_j: float
    idle_static_j: float
    link_ms_per_token: float  #: decode: time on the links per token, summed over stages

    @property
    def seconds(self) -> float:
        return self.ttft_s + self.decode_s

    @property
    def tokens(self) -> int:
        return 1 + self.decode

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode / self.decode_s if self.decode else 0.0

    @property
    def tokens_per_j(self) -> float:
        return self.tokens / self.energy_j

    def summary(self) -> dict[str, Any]:
        """Flat, JSON-safe figures (the row a sweep writes)."""
        return {
            "model": self.model,
            "hw": self.hw,
            "plan": self.plan,
            "boards": self.boards,
            "parallel": self.parallel,
            "prefill": self.prefill,
            "decode": self.decode,
            "ttft_ms": self.ttft_s * 1e3,
            "ms_per_token_avg": self.decode_s / self.decode * 1e3 if self.decode else 0.0,
            "tokens_per_s": self.tokens_per_s,
            "decode_tokens_per_s": self.decode_tokens_per_s,
            "board_decode_tokens_per_s": [r.decode_tokens_per_s for r in self.per_board],
            "board_energy_j": [r.energy.total for r in self.per_board],
            "energy_j": self.energy_j,
            "idle_static_j": self.idle_static_j,
            "tokens_per_j": self.tokens_per_j,
            "j_per_token": 1 / self.tokens_per_j,
            "average_w": self.energy_j / self.seconds,
            "link_ms_per_token": self.link_ms_per_token,
            "link_energy": "not modelled",
        }


def simulate_system(
    cfg: ModelConfig,
    plan: CompressionPlan,
    hw: HardwarePreset,
    prefill: int,
    decode: int,
    boards: int,
    mode: str,
    *,
    max_len: int | None = None,
    note: Callable[[str], None] | None = None,
    sysc: SystemCompiled | None = None,
) -> SystemResult:
    """Simulate the case on ``boards`` boards in ``mode`` (see the module doc)."""
    max_len = max_len or default_max_len(cfg)
    if sysc is None:
        if note:
            note(f"compiling {cfg.name} for {boards} boards ({mode} parallel)")
        sysc = compile_system(cfg, plan, hw, max_len, boards, mode)
    distinct = 1 if mode == "tensor" else len(sysc.boards)
    per = []
    for b in range(distinct):
        if note:
            note(f"simulating board {b} of {boards}")
        per.append(simulate(sysc.cfgs[b], plan, hw, prefill, decode, max_len=max_len,
                            program=sysc.boards[b].program))  # fmt: skip
    if mode == "tensor" or boards == 1:
        r = per[0]
        ttft, dec = r.ttft_s, r.decode_s
        energy_j, idle = boards * r.energy.total, 0.0
        links = link_ns_per_step(hw, sysc, 0, prefill) / 1e6 if boards > 1 and decode else 0.0
    else:
        ttft = sum(r.ttft_s for r in per)
        dec = sum(r.decode_s for r in per)
        busy = [r.ttft_s + r.decode_s for r in per]
        static = load_energy_table(hw.energy_table).static_w if hw.energy_table else 0.0
        idle = sum(static * (ttft + dec - t) for t in busy)
        energy_j = sum(r.energy.total for r in per) + idle
        links = sum(link_ns_per_step(hw, sysc, b, prefill) for b in range(boards)) / 1e6
        links = links if decode else 0.0
    return SystemResult(cfg.name, hw.name, plan.name, boards, mode, prefill, decode, per, ttft,
                        dec, energy_j, idle, links)  # fmt: skip
