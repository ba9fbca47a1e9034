"""Hardware presets (``mappings/hw/*.yaml``): the accelerator's parallelism, buffers, HBM and
board facts, each number with its source."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from functools import cached_property
from typing import Annotated, Any, Literal, Self

from pydantic import Field, StrictInt, model_validator

from hwflow.config.base import NonNegativeInt, PositiveFloat, PositiveInt, Sourced, pow2
from hwflow.errors import UnsupportedError

__all__ = [
    "REQUANT_DSPS",
    "WEIGHT_BITS",
    "Board",
    "Buffers",
    "Engine",
    "HardwarePreset",
    "Hbm",
    "Sfu",
    "Sparsity",
    "System",
    "engine_dsps",
]

#: Weight precisions the numeric reference implements.
WEIGHT_BITS = (2, 3, 4, 8)
#: DSPs of one requantizer by DSP kind (hwflow.hw.requant: the (acc + bias) x 15-bit multiply
#: cut into 24-bit unsigned pieces and a signed top piece of at most 25 bits, one DSP each):
#: the 49-bit operand of a 48-bit accumulator is two pieces, 2 DSP48E2 (as Yosys maps it,
#: ``hwflow synth``); the 59-bit one of a DSP58's 58-bit accumulator three, counted
#: structurally.
REQUANT_DSPS = {"DSP48E2": 2, "DSP58": 3}


def engine_dsps(chains: int, chain_length: int, rows: int, dual_int8: bool, slots: int) -> int:
    """DSPs of one chain engine (the one count the preset check, the RTL's
    ``EngineParams.dsps`` and ``hwflow synth`` use): one per chain stage and token lane (one
    per two token lanes with dual-INT8 packing), plus the weight-group stage's multipliers
    (:data:`hwflow.costs.GROUP_STAGES`): one per output-buffer slot (``slots``: segments of a
    chain at its smallest N) and token lane of every chain, unpacked (two group partials of
    22 bits do not share a 27-bit port). Requantizers are counted apart
    (:data:`REQUANT_DSPS`)."""
    stages = chain_length * (rows // 2 if dual_int8 else rows)
    return chains * (stages + slots * rows)


class Board(Sourced):
    """The FPGA part and board: resource totals and limits, for fit checks and energy."""

    part: str
    family: Literal["ultrascale_plus", "versal"]
    dsp_kind: Literal["DSP48E2", "DSP58"]
    dsp_count: PositiveInt
    bram36: PositiveInt
    uram: NonNegativeInt
    board_power_w: PositiveFloat | None = None  # maximum board power, where published

    @property
    def onchip_bytes(self) -> int:
        """Total block RAM + UltraRAM capacity in bytes (36 Kib BRAM, 288 Kib URAM)."""
        return (self.bram36 * 36 * 1024 + self.uram * 288 * 1024) // 8


class Hbm(Sourced):
    """High-bandwidth memory: pseudo-channels, their peak rate, and the facts the bandwidth
    model of :mod:`hwflow.costs` derives sustained rates from (no efficiency constant: see
    :func:`hwflow.costs.hbm_burst_ns`)."""

    channels: PositiveInt
    channel_gbps: PositiveFloat  # peak GB/s (1e9 bytes/s) of one pseudo-channel
    capacity_gib: PositiveFloat
    latency_ns: PositiveFloat  # first-beat latency of a read burst (page hit)
    interleave_bytes: PositiveInt  # address-interleave granule across channels used by hwflow
    port_bits: PositiveInt  # data width of the LD/ST unit's port on one channel
    port_mhz: PositiveFloat  # clock of that port
    max_burst_bytes: PositiveInt  # largest burst one AXI transaction carries
    outstanding: PositiveInt  # read bursts the LD/ST unit keeps in flight per channel
    refresh_interval_ns: PositiveFloat  # tREFI: one refresh per interval
    refresh_ns: PositiveFloat  # tRFC: the channel is blocked this long per refresh
    row_miss_ns: Annotated[float, Field(ge=0, strict=True, allow_inf_nan=False)]  # new-row cost
    turnaround_ns: Annotated[float, Field(ge=0, strict=True, allow_inf_nan=False)]  # rd<->wr

    @property
    def peak_gbps(self) -> float:
        return self.channels * self.channel_gbps

    @property
    def capacity_bytes(self) -> int:
        return int(self.capacity_gib * 2**30)

    @model_validator(mode="after")
    def _granule(self) -> Hbm:
        if not pow2(self.interleave_bytes):
            raise ValueError(
                f"hbm.interleave_bytes = {self.interleave_bytes} must be a power of two"
            )
        if self.refresh_ns >= self.refresh_interval_ns:
            raise ValueError(
                f"hbm.refresh_ns = {self.refresh_ns} must be below hbm.refresh_interval_ns ="
                f" {self.refresh_interval_ns} (tRFC < tREFI)"
            )
        if self.port_bits % 8:
            raise ValueError(f"hbm.port_bits = {self.port_bits} must be a whole number of bytes")
        return self


class Engine(Sourced):
    """A DSP-chain engine: ``chains`` chains of ``chain_length`` DSP stages.

    For the matrix-vector engine ``rows`` is 1. For the matrix-matrix engine ``rows`` tokens
    share each weight; with ``dual_int8`` two tokens share one DSP (Xilinx WP486 packing).
    Its DSPs: :meth:`HardwarePreset.engine_dsps` (they depend on the preset's N modes).
    """

    chains: PositiveInt
    chain_length: PositiveInt
    #: requantizers shared by the engine's output lanes: a row group's results are captured
    #: in an output buffer and drain through them ``requantizers`` values per cycle
    #: (:func:`hwflow.costs.matmul_cost` charges the drain)
    requantizers: PositiveInt
    rows: PositiveInt = 1
    dual_int8: bool = False

    @property
    def macs_per_cycle(self) -> int:
        """Dense-equivalent multiply-accumulates per cycle at N = M (no sparsity)."""
        return self.chains * self.chain_length * self.rows

    @model_validator(mode="after")
    def _dual(self) -> Engine:
        if self.dual_int8 and self.rows % 2:
            raise ValueError(f"dual_int8 packs two tokens per DSP: rows = {self.rows} must be even")
        return self


class Sfu(Sourced):
    """Special-function unit: ``lanes`` elements per cycle; multi-pass functions (softmax,
    normalisation) read their input ``passes`` times."""

    lanes: PositiveInt
    softmax_passes: PositiveInt
    norm_passes: PositiveInt
    latency: PositiveInt  # pipeline depth in cycles


class Sparsity(Sourced):
    """The N:M patterns the DSP chain supports: M is the activation block broadcast to a chain,
    N the kept weights per block (N = M is dense). N must divide the chain length."""

    m: PositiveInt
    n_allowed: tuple[StrictInt, ...]

    @model_validator(mode="after")
    def _check(self) -> Sparsity:
        if not pow2(self.m):
            raise ValueError(f"sparsity.m = {self.m} must be a power of two")
        bad = [n for n in self.n_allowed if not 1 <= n <= self.m]
        if bad:
            raise ValueError(f"sparsity.n_allowed {bad} must lie in 1..m={self.m}")
        return self

    @property
    def index_bits(self) -> int:
        return int(math.log2(self.m))


class Buffers(Sourced):
    """On-chip buffer capacities in KiB (each built from BRAM/URAM of the board)."""

    weight_kib: PositiveInt  # weight tiles, double-buffered by the compiler (half each)
    act_kib: PositiveInt  # activations; decode keeps a whole step's activations here
    kv_kib: PositiveInt  # K/V tiles streamed for attention
    score_kib: PositiveInt  # attention scores / probabilities
    param_kib: PositiveInt  # requantization tables, LUTs, RoPE rows
    instr_kib: PositiveInt  # instruction memory
    #: decoded-instruction queue entries per unit (the dispatcher stalls when one is full);
    #: 64 x 9-word entries = 18 Kib, half a BRAM36 per unit
    queue_entries: PositiveInt = 64
    #: bytes of one buffer word, what a buffer's port moves per accelerator cycle: the core-side
    #: ports of every HBM channel side by side (``word_bytes / hbm.channels`` each, a bound of
    #: every burst: :func:`hwflow.costs.core_port_bytes`; the RTL's buffers and LD/ST path)
    word_bytes: PositiveInt

    def bytes(self, name: str) -> int:
        return getattr(self, f"{name}_kib") * 1024


class System(Sourced):
    """How boards of this design are joined into a multi-board system (``--boards N``): the
    board-to-board links of one board and the topology they form. A preset without this
    section runs on one board only."""

    topology: Literal["ring"]
    ports: PositiveInt  #: link ports per board (a ring uses one to each neighbour)
    link_gbps: PositiveFloat  #: payload GB/s (1e9 bytes/s) of one port, each direction
    link_latency_ns: PositiveFloat  #: first byte out of one board to first byte into the next
    max_boards: PositiveInt  #: largest ring the system section describes

    @model_validator(mode="after")
    def _ring(self) -> System:
        if self.topology == "ring" and self.ports < 2:
            raise ValueError(
                f"system.ports = {self.ports}: a ring needs 2 ports per board (one per neighbour)"
            )
        return self


class HardwarePreset(Sourced):
    """One accelerator design point on one board."""

    name: str
    description: str
    clock_mhz: PositiveFloat
    board: Board
    hbm: Hbm
    mv: Engine
    mpe: Engine
    sfu: Sfu
    sparsity: Sparsity
    weight_bits: tuple[StrictInt, ...]
    kv_bits: Literal[8] = 8
    buffers: Buffers
    energy_table: str | None = None
    system: System | None = None

    @model_validator(mode="after")
    def _consistent(self) -> HardwarePreset:
        bad = [b for b in self.weight_bits if b not in WEIGHT_BITS]
        if bad or not self.weight_bits:
            raise ValueError(
                f"weight_bits {list(self.weight_bits)} not supported (allowed: a non-empty "
                f"subset of {list(WEIGHT_BITS)})"
            )
        for eng in ("mv", "mpe"):
            c = getattr(self, eng).chain_length
            bad_n = [n for n in self.sparsity.n_allowed if c % n]
            if bad_n:
                raise ValueError(
                    f"sparsity.n_allowed {bad_n} do not divide {eng}.chain_length = {c}: a chain is"
                    " cut into segments of N stages"
                )
        used = self.dsps_used
        if used > self.board.dsp_count:
            raise ValueError(
                f"mv + mpe need {used} DSPs but board {self.board.part} has "
                f"{self.board.dsp_count} (chain stages, weight-group multipliers and requantizers)"
            )
        need = sum(getattr(self.buffers, f) for f in Buffers.model_fields if f.endswith("_kib"))
        have = self.board.onchip_bytes // 1024
        if need > have:
            raise ValueError(f"buffers need {need} KiB but board {self.board.part} has {have} KiB")
        if self.buffers.word_bytes % self.hbm.channels:
            raise ValueError(
                f"buffers.word_bytes = {self.buffers.word_bytes} must be a multiple of "
                f"hbm.channels = {self.hbm.channels} (a word is every channel's core-side port)"
            )
        return self

    def n_modes(self, kind: Literal["mv", "mpe"]) -> tuple[int, ...]:
        """The N modes engine ``kind``'s chains run, ascending (:meth:`chain_n_modes`)."""
        return self.chain_n_modes(getattr(self, kind).chain_length)

    def chain_n_modes(self, chain_length: int) -> tuple[int, ...]:
        """The N modes a chain of ``chain_length`` stages runs, ascending: every allowed N
        that divides the chain length, and M itself (a dense layer runs as M:M,
        :func:`hwflow.costs.effective_nm`) when it does."""
        m = self.sparsity.m
        return tuple(sorted({n for n in (*self.sparsity.n_allowed, m) if chain_length % n == 0}))

    def slots(self, kind: Literal["mv", "mpe"]) -> int:
        """Output-buffer slots per chain and token lane of engine ``kind``: its segments at the
        smallest N (the engine refuses a preset without any N mode)."""
        return getattr(self, kind).chain_length // min(self.n_modes(kind), default=1)

    def engine_dsps(self, kind: Literal["mv", "mpe"]) -> int:
        """DSPs of engine ``kind`` without its requantizers (:func:`engine_dsps`)."""
        e = getattr(self, kind)
        return engine_dsps(e.chains, e.chain_length, e.rows, e.dual_int8, self.slots(kind))

    @property
    def dsps_used(self) -> int:
        """DSPs of both engines: every chain stage, weight-group multiplier and requantizer."""
        rq = (self.mv.requantizers + self.mpe.requantizers) * REQUANT_DSPS[self.board.dsp_kind]
        return self.engine_dsps("mv") + self.engine_dsps("mpe") + rq

    @property
    def clock_hz(self) -> float:
        return self.clock_mhz * 1e6

    @property
    def hbm_bytes_per_cycle(self) -> float:
        """Peak HBM bytes per accelerator clock cycle, all channels."""
        return self.hbm.peak_gbps * 1e9 / self.clock_hz

    @cached_property
    def digest(self) -> str:
        """SHA-256 of the preset's canonical JSON: programs record it and are refused elsewhere."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """Pydantic's copy without the cached :attr:`digest`: a copy with changed fields is
        another preset (pydantic copies the instance dict, the cached value with it)."""
        copy = super().model_copy(update=update, deep=deep)
        copy.__dict__.pop("digest", None)
        return copy

    def check_plan_support(self, bits: int, n: int, m: int) -> None:
        """Raise UnsupportedError unless this preset runs INT``bits`` weights at N:M = n:m."""
        if bits not in self.weight_bits:
            raise UnsupportedError(
                f"preset {self.name} does not support INT{bits} weights "
                f"(allowed: {list(self.weight_bits)})"
            )
        if n == m:  # dense works at any M by grouping the row into chain-length segments
            return
        if m != self.sparsity.m or n not in self.sparsity.n_allowed:
            kept = [f"{k}:{self.sparsity.m}" for k in self.sparsity.n_allowed]
            allowed = ", ".join([*kept, "or dense"]) if kept else "dense only"
            raise UnsupportedError(
                f"preset {self.name} does not support {n}:{m} sparsity (allowed: {allowed})"
            )
