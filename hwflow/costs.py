"""Cycle costs of the accelerator's compute units, defined once.

The cycle model (:mod:`hwflow.perf`) charges these; the RTL (:mod:`hwflow.hw`) is held to them
by its benches, which measure the same operations on Verilator and compare.

The DSP chain (what the numbers mean)
-------------------------------------
An engine has ``chains`` chains of ``chain_length`` (C) DSP stages. Each cycle one *beat*
enters: one M-wide block of activations (broadcast to every chain; M = the preset's
``sparsity.m``) and, for every chain, C (value, index) weight slots. A chain is cut by its
reduction points into C/N segments of N stages; segment s computes the partial dot product of
one output row over the block (its N kept weights select their activations through the index
mux). A dense op runs as N = M: C/M rows per chain, indices implicit. So one beat advances
``chains * C / N`` rows by one block, and a row of length K needs K/M beats.

Rows are processed in *row groups* of ``chains * C / N`` rows; a group's K/M beats are
consecutive and its accumulators drain into the requantizer after the last one. The
matrix-matrix engine has ``rows`` token lanes that share each weight beat (with ``dual_int8``,
two lanes share one DSP as in Xilinx WP486); T tokens take ceil(T/rows) passes per group.

Latency = issue-to-last-result cycles of one op in an idle engine. Throughput = cycles between
the starts of two back-to-back ops (the engine is pipelined: the next op's first beat follows
the previous op's last beat).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil

from hwflow.config import Engine, HardwarePreset
from hwflow.errors import UnsupportedError

__all__ = [
    "ACC_STAGES",
    "OPERAND_STAGES",
    "REQUANT_STAGES",
    "OpCost",
    "chain_latency",
    "effective_nm",
    "matmul_cost",
    "sfu_cost",
]

#: Register stages from a beat's arrival to the DSP multiplier inputs: weight widening +
#: activation mux (1), DSP A/B input registers (1).
OPERAND_STAGES = 2
#: The DSP's M (product) register.
PRODUCT_STAGES = 1
#: Accumulating a segment's partial sum across blocks (1 register).
ACC_STAGES = 1
#: Requantization: multiply by ``mult`` (1), add rounding + shift (1), saturate (1).
REQUANT_STAGES = 3


@dataclass(frozen=True)
class OpCost:
    """Cycle cost of one engine operation."""

    beats: int  #: cycles the engine's input is occupied (its initiation interval)
    latency: int  #: cycles from the first beat to the last result, in an idle engine
    macs: int  #: useful (kept-weight) multiply-accumulates
    dense_macs: int  #: multiply-accumulates of the dense equivalent


def effective_nm(hw: HardwarePreset, n: int, m: int) -> tuple[int, int]:
    """The (N, M) the chain runs for a layer compressed N:M: dense layers run as M:M."""
    hm = hw.sparsity.m
    if n == m:
        return hm, hm
    hw.check_plan_support(min(hw.weight_bits), n, m)
    return n, m


def chain_latency(n: int) -> int:
    """Pipeline depth of a chain whose segments are ``n`` stages long (cascade: one per stage)."""
    return OPERAND_STAGES + PRODUCT_STAGES + n + ACC_STAGES + REQUANT_STAGES


def matmul_cost(engine: Engine, m_block: int, tokens: int, rows: int, k: int, n: int) -> OpCost:
    """Cost of ``out[tokens, rows] = x[tokens, k] @ W[rows, k]^T`` on a chain engine.

    ``n`` is the kept weights per ``m_block`` activations (n = m_block for dense). The
    matrix-vector engine is the case ``engine.rows == 1`` (one token).
    """
    c = engine.chain_length
    if c % n:
        raise UnsupportedError(f"N = {n} does not divide chain length {c}")
    if k % m_block:
        raise UnsupportedError(f"reduction length {k} is not a multiple of the block M = {m_block}")
    rows_per_beat = engine.chains * (c // n)
    groups = ceil(rows / rows_per_beat)
    passes = ceil(tokens / engine.rows)
    beats = groups * passes * (k // m_block)
    return OpCost(
        beats=beats,
        latency=beats + chain_latency(n),
        macs=tokens * rows * (k // m_block) * n,
        dense_macs=tokens * rows * k,
    )


def sfu_cost(hw: HardwarePreset, elements: int, passes: int = 1) -> OpCost:
    """Cost of a special-function op over ``elements`` values read ``passes`` times."""
    beats = passes * ceil(elements / hw.sfu.lanes)
    return OpCost(beats=beats, latency=beats + hw.sfu.latency, macs=0, dense_macs=0)
