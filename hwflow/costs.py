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

The chain is systolic: stage j's operands are delayed j cycles so that the cascade sum
(PCOUT->PCIN, one P register per stage) meets them, a reduction point zeroes the cascade input
of a segment's first stage, and each segment's accumulator result is delayed again (deskewed)
to the end of the chain. So every result of a row group leaves at the same depth, whatever N
is: the pipeline depth depends on the chain length C, not on N, and ops of different N run
back to back without bubbles or reordering (the RTL in :mod:`hwflow.hw` is built this way and
its benches hold it to these formulas).

A row group's results (``chains * C/N`` rows x ``rows`` token lanes) are captured into an output
buffer and drain through the engine's ``requantizers`` shared requantizers, R values per
cycle (:func:`drain_cycles`); the next group may capture only once they have left, so a result
occupies the engine's input for max(K/M, drain) cycles.

Latency = cycles from the handshake of an op's first beat through the cycle its last result is
presented, inclusive, in an idle engine without backpressure. Throughput = cycles between the
starts of two back-to-back ops = ``beats`` (the engine is pipelined: the next op's first beat
follows the previous op's last beat).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil

from hwflow.config import Engine, HardwarePreset
from hwflow.errors import CapacityError, UnsupportedError

__all__ = [
    "ACC_STAGES",
    "GROUP_STAGES",
    "HBM_ATOM_BYTES",
    "LDST_ISSUE_CYCLES",
    "OPERAND_STAGES",
    "REQUANT_STAGES",
    "HbmPiece",
    "OpCost",
    "chain_latency",
    "drain_cycles",
    "effective_nm",
    "hbm_achievable_gbps",
    "hbm_burst_ns",
    "hbm_latency_cycles",
    "hbm_pieces",
    "hbm_refresh_share",
    "hbm_run_ns",
    "hbm_stream_gbps",
    "matmul_cost",
    "sfu_cost",
    "sfu_passes",
    "sync_cost",
]

#: Register stages from a beat's arrival to the DSP multiplier inputs: weight widening +
#: activation mux (1), DSP A/B input registers (1).
OPERAND_STAGES = 2
#: The DSP's M (product) register.
PRODUCT_STAGES = 1
#: Accumulating a segment's partial sum across blocks (1 register).
ACC_STAGES = 1
#: Capturing a row group's segment results (prefix-sum differences) into the output buffer.
CAPTURE_STAGES = 1
#: Requantization: add the INT32 bias (1), multiply by ``mult`` (2: the partial products in
#: the DSPs' M registers, their sum in a P register), add the rounding constant (1), shift
#: (1), saturate into the output FIFO (1): few LUT levels per stage and no DSP-to-DSP path
#: without a register (the timing proxy of ``hwflow synth``).
REQUANT_STAGES = 6
#: The output FIFO (credit-based, never full): a written word is presented one cycle later
#: than a plain output register would present it.
OUTPUT_STAGES = 1
#: Group-wise weight scales (numerics, weights; an op with a weight group G): at each segment
#: end the group's partial sum (accumulated over its G/M beats) is multiplied by the row's
#: 8-bit group multiplier (one DSP48E2: the <= 22-bit partial on the 27-bit port, the
#: multiplier on the 18-bit one; its M register, 1 stage) and added into the row accumulator
#: (its P register, 1 stage). One multiply per segment every G/M >= 1 beats, so it is
#: pipelined behind the segment accumulator: latency only, no beats.
GROUP_STAGES = 2


@dataclass(frozen=True)
class OpCost:
    """Cycle cost of one engine operation."""

    beats: int  #: cycles the engine's input is occupied (its initiation interval)
    latency: int  #: cycles from the first beat to the last result, in an idle engine
    macs: int  #: useful (kept-weight) multiply-accumulates
    dense_macs: int  #: multiply-accumulates of the dense equivalent
    #: beats that carry operands (matmul: K/M per result; the input waits without reading
    #: while a drain-bound group drains); -1: every one of ``beats``
    reads: int = -1

    @property
    def operand_beats(self) -> int:
        """Beats that read operands from the buffers (what the buffer energy counts)."""
        return self.beats if self.reads < 0 else self.reads


def effective_nm(hw: HardwarePreset, n: int, m: int) -> tuple[int, int]:
    """The (N, M) the chain runs for a layer compressed N:M: a dense layer (N = M, any M) runs
    as the preset's M:M (M its activation block, ``sparsity.m``); the one definition, which
    the compiler's tiling and checks and the cycle model read. UnsupportedError for an N:M
    the preset does not run."""
    hm = hw.sparsity.m
    if n == m:
        return hm, hm
    hw.check_plan_support(min(hw.weight_bits), n, m)
    return n, m


def chain_latency(chain_length: int) -> int:
    """Pipeline depth of a chain of ``chain_length`` stages up to a row group's first output
    word: operands, product, the systolic cascade with its deskew (one cycle per stage of the
    whole chain, whatever the segment length N), accumulator, capture into the output buffer,
    requantizer, output FIFO."""
    return (
        OPERAND_STAGES
        + PRODUCT_STAGES
        + chain_length
        + ACC_STAGES
        + CAPTURE_STAGES
        + REQUANT_STAGES
        + OUTPUT_STAGES
    )


def drain_cycles(engine: Engine, n: int) -> int:
    """Cycles a row group's results take to drain through the engine's shared requantizers:
    ``chains * C/N`` rows x ``rows`` token lanes, ``requantizers`` values per cycle."""
    return ceil(engine.rows * engine.chains * (engine.chain_length // n) / engine.requantizers)


def matmul_cost(
    engine: Engine, m_block: int, tokens: int, rows: int, k: int, n: int, group: int | None = None
) -> OpCost:
    """Cost of ``out[tokens, rows] = x[tokens, k] @ W[rows, k]^T`` on a chain engine.

    ``n`` is the kept weights per ``m_block`` activations (n = m_block for dense). The
    matrix-vector engine is the case ``engine.rows == 1`` (one token). A weight ``group``
    (whole blocks) adds :data:`GROUP_STAGES` of latency and no beats.

    Each result (row group x token pass) takes its K/M beats and then drains for
    D = :func:`drain_cycles` cycles; a group captures its results only once the previous group
    has drained, so a result occupies the input for max(K/M, D) cycles (the engine's input
    waits after a group's last beat when D is the longer). The op's last result leaves
    ``chain_latency + D - 1`` cycles after its last beat.
    """
    c = engine.chain_length
    if c % n:
        raise UnsupportedError(f"N = {n} does not divide chain length {c}")
    if k % m_block:
        raise UnsupportedError(f"reduction length {k} is not a multiple of the block M = {m_block}")
    if group is not None and group % m_block:
        raise UnsupportedError(f"weight group {group} is not a multiple of the block M = {m_block}")
    rows_per_beat = engine.chains * (c // n)
    groups = ceil(rows / rows_per_beat)
    passes = ceil(tokens / engine.rows)
    per_result, drain = k // m_block, drain_cycles(engine, n)
    slot = max(per_result, drain)
    beats = groups * passes * slot
    return OpCost(
        beats=beats,
        latency=beats
        - slot
        + per_result
        + chain_latency(c)
        + drain
        - 1
        + (GROUP_STAGES if group is not None else 0),
        macs=tokens * rows * (k // m_block) * n,
        dense_macs=tokens * rows * k,
        reads=groups * passes * per_result,
    )


def sfu_passes(hw: HardwarePreset, func: str, center: bool = False) -> int:
    """Reads of its input a special-function op makes under the numerics contract
    (:mod:`hwflow.numerics`; ``func`` one of :data:`hwflow.isa.SFU_FUNCS`).

    * ``norm``: the preset's ``norm_passes`` (statistics, then the output: RMSNorm's sum of
      squares and the row maximum of ``xr * gamma`` the per-row quantization needs share the
      statistics pass); LayerNorm (``center``) one more, since centring needs the row sum
      before the sum of squares and the maximum of the centred row.
    * ``softmax``: the preset's ``softmax_passes`` (row maximum, then EXP2, the UINT8
      numerators and their row sum; the normalisation moved into P x V's row stage).
    * ``mul``, ``reluq`` (per-row INT8 quantization, :func:`~hwflow.numerics.quant_rows`):
      two, a row-maximum pass before the quantizing one.
    * ``rope``, ``silu``, ``add``, ``mov``: one.
    """
    if func == "norm":
        return hw.sfu.norm_passes + int(center)
    if func == "softmax":
        return hw.sfu.softmax_passes
    return 2 if func in ("mul", "reluq") else 1


def sfu_cost(hw: HardwarePreset, elements: int, passes: int = 1) -> OpCost:
    """Cost of a special-function op over ``elements`` values read ``passes`` times
    (:func:`sfu_passes`). Each of the preset's ``sfu.lanes`` lanes takes one element per cycle
    whatever its width (a lane is 32 bits wide: the INT32 residual stream), so a pass takes
    ``ceil(elements / lanes)`` cycles; the bytes moved count in the buffer energy
    (:mod:`hwflow.perf.lower`), not in cycles. The per-row scalar work (the norm's inverse
    square root, the reciprocals of the row maximum and of the softmax row sum) is pipelined
    behind the next row's pass."""
    beats = passes * ceil(elements / hw.sfu.lanes)
    return OpCost(beats=beats, latency=beats + hw.sfu.latency, macs=0, dense_macs=0)


# --------------------------------------------------------------------------------------------
# HBM transfers (LD / ST), defined once: the cycle model's HBM channels charge these (the RTL
# has no LD/ST unit yet; its bench will be held to them once it exists). The LD/ST unit below
# is the cycle model's.
#
# The address space is interleaved across the preset's pseudo-channels in granules of
# ``hbm.interleave_bytes``: granule g lives in channel ``g % channels``, and the LD/ST unit has
# one port per channel. A transfer is split into one *piece* per channel it touches. Within a
# channel, consecutive granules of one transfer are consecutive in that channel's own address
# space, so a contiguous transfer's piece is one *run* of contiguous bytes. A strided transfer
# whose rows are shorter than a granule hops from channel to channel row by row: each row is a
# run of its own that opens a new DRAM row (page) in its channel.
#
# The bandwidth model (no efficiency constant; every input is a preset field with a source):
# a run is carried by AXI bursts of at most ``max_burst_bytes``; one burst of b bytes holds its
# channel for the longest of
#   * the port:     ceil(b / port bytes) beats at ``port_mhz``    (port width x clock cap),
#   * the device:   b at ``channel_gbps`` less the refresh share ``refresh_ns / refresh_interval_ns``,
#   * the latency:  ``latency_ns / outstanding``                  (Little's law: with N bursts in
#                   flight and a round trip of L, one burst completes every L / N),
# plus ``row_miss_ns`` for a run that opens a new row (a hop row), and, for a write piece,
# ``2 x turnaround_ns`` (the channel turns from reads to the write and back: in decode a
# write is a short KV row between long weight reads). A run's last burst is rounded up to whole
# port beats. The data of a piece is in the on-chip buffer ``latency_ns`` after the channel
# finished streaming it (the first-beat latency; later bursts are pipelined behind it). The
# load/store unit itself only hands a transfer's pieces to the channels' command queues:
# ``LDST_ISSUE_CYCLES`` per transfer.

#: Cycles the LD/ST unit spends issuing one transfer's per-channel commands.
LDST_ISSUE_CYCLES = 1
#: The device moves whole 32-byte atoms: a pseudo-channel is 64 bits wide with burst length 4
#: (JEDEC HBM2 pseudo-channel mode), one 256-bit AXI beat of the HBM controller (Xilinx PG276).
HBM_ATOM_BYTES = 32


@dataclass(frozen=True)
class HbmPiece:
    """The part of one transfer that one pseudo-channel serves."""

    channel: int
    nbytes: int
    occupancy: int  #: cycles the channel is busy streaming this piece
    same_channel: bool  #: one sequential run in its channel, or hopping short rows
    write: bool = False  #: a store (pays the read/write turnaround)


def hbm_latency_cycles(hw: HardwarePreset) -> int:
    """First-beat latency of a read in accelerator cycles (rounded up)."""
    return ceil(hw.hbm.latency_ns * hw.clock_mhz / 1000 - 1e-9)


def hbm_refresh_share(hw: HardwarePreset) -> float:
    """Fraction of a channel's time lost to refresh: tRFC / tREFI."""
    return hw.hbm.refresh_ns / hw.hbm.refresh_interval_ns


def hbm_burst_ns(hw: HardwarePreset, nbytes: int) -> float:
    """Channel time of one burst of ``nbytes`` (<= ``max_burst_bytes``) in a stream of them:
    the slowest of port, device (refresh included) and latency / outstanding."""
    h = hw.hbm
    t_port = ceil(nbytes / (h.port_bits // 8)) * 1e3 / h.port_mhz
    atoms = ceil(nbytes / HBM_ATOM_BYTES) * HBM_ATOM_BYTES
    t_dev = atoms / (h.channel_gbps * (1 - hbm_refresh_share(hw)))
    t_lat = h.latency_ns / h.outstanding
    return max(t_port, t_dev, t_lat)


def hbm_run_ns(hw: HardwarePreset, nbytes: int, *, new_row: bool = False) -> float:
    """Channel time of one run of ``nbytes`` contiguous bytes: full bursts, a remainder burst,
    and ``row_miss_ns`` if the run opens a new row."""
    if nbytes <= 0:
        return 0.0
    mb = hw.hbm.max_burst_bytes
    full, rest = divmod(nbytes, mb)
    t = full * hbm_burst_ns(hw, mb) + (hbm_burst_ns(hw, rest) if rest else 0.0)
    return t + (hw.hbm.row_miss_ns if new_row else 0.0)


def hbm_stream_gbps(hw: HardwarePreset, run_bytes: int, *, new_row: bool = False) -> float:
    """Sustained GB/s of all channels for a long stream of runs of ``run_bytes`` each (the
    model's bandwidth curve; ``hwflow bench hbm`` prints it against published measurements)."""
    return hw.hbm.channels * run_bytes / hbm_run_ns(hw, run_bytes, new_row=new_row)


def hbm_achievable_gbps(hw: HardwarePreset) -> float:
    """The sustained bandwidth of long sequential reads over every channel: the roofline."""
    return hbm_stream_gbps(hw, 1 << 20)


def _cycles(hw: HardwarePreset, ns: float) -> int:
    return max(ceil(ns * hw.clock_mhz / 1000 - 1e-9), 1)


def hbm_pieces(
    hw: HardwarePreset, addr: int, nbytes: int, *, hop: bool = False, write: bool = False
) -> list[HbmPiece]:
    """Split the contiguous transfer of ``nbytes`` at HBM byte ``addr`` into per-channel pieces.

    ``hop``: the bytes are one short row of a strided transfer (a run that opens a new row).
    ``write``: a store (pays the read/write turnaround)."""
    if addr < 0 or nbytes < 0:
        raise UnsupportedError(f"HBM transfer at {addr} of {nbytes} bytes: negative")
    if addr + nbytes > hw.hbm.capacity_bytes:
        raise CapacityError(
            f"HBM transfer [{addr}, {addr + nbytes}) exceeds the {hw.hbm.capacity_bytes} bytes"
            f" of preset {hw.name}"
        )
    if nbytes == 0:
        return []
    g, nch = hw.hbm.interleave_bytes, hw.hbm.channels
    first, last = addr // g, (addr + nbytes - 1) // g
    per: dict[int, int] = {}
    if first == last:
        per[first % nch] = nbytes
    else:
        per[first % nch] = (first + 1) * g - addr
        per[last % nch] = per.get(last % nch, 0) + addr + nbytes - last * g
        n_whole = last - first - 1
        rounds, rest = divmod(n_whole, nch)
        for i in range(min(nch, n_whole)):
            ch = (first + 1 + i) % nch
            per[ch] = per.get(ch, 0) + (rounds + (1 if i < rest else 0)) * g
    turn = 2 * hw.hbm.turnaround_ns if write else 0.0
    return [
        HbmPiece(
            channel=ch,
            nbytes=b,
            occupancy=_cycles(hw, hbm_run_ns(hw, b, new_row=hop) + turn),
            same_channel=not hop,
            write=write,
        )
        for ch, b in sorted(per.items())
    ]


def sync_cost() -> OpCost:
    """A unit's SYNC no-op (it only carries tokens): one issue cycle, done when issued."""
    return OpCost(beats=1, latency=1, macs=0, dense_macs=0)
