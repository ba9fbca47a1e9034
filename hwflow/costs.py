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
from hwflow.isa import Buf
from hwflow.numerics import NORM_FRAC, QROW_SHIFT

__all__ = [
    "ACC_STAGES",
    "GROUP_STAGES",
    "HBM_ATOM_BYTES",
    "LDST_REQUEST_STAGES",
    "LD_DONE_STAGES",
    "OPERAND_STAGES",
    "REQUANT_STAGES",
    "ST_DONE_STAGES",
    "UNIT_DRAIN_STAGES",
    "UNIT_FEED_STAGES",
    "HbmBurst",
    "HbmPiece",
    "OpCost",
    "chain_latency",
    "core_port_bytes",
    "drain_cycles",
    "effective_nm",
    "hbm_achievable_gbps",
    "hbm_burst_ns",
    "hbm_bursts",
    "hbm_latency_cycles",
    "hbm_pieces",
    "hbm_refresh_share",
    "hbm_run_ns",
    "hbm_runs",
    "hbm_stream_gbps",
    "ld_flush_cycles",
    "ldst_done_stages",
    "matmul_cost",
    "matmul_unit_cost",
    "pv_nm",
    "sfu_cost",
    "sfu_op_cost",
    "sfu_passes",
    "sfu_scalar_cycles",
    "sfu_shared_port",
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
#: (its P register, 1 stage); the partial (the segment difference, picked by N) is registered
#: before the multiplier (1 stage: without it, 4.95 ns of logic against the 4.44 ns period of
#: 225 MHz, ``hwflow synth --hw u280``). One multiply per segment every G/M >= 1 beats, so it
#: is pipelined behind the segment accumulator: latency only, no beats.
GROUP_STAGES = 3


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


def pv_nm(hw: HardwarePreset, engine: Engine, cols: int) -> tuple[int, int]:
    """The (N, N) an engine runs P x V at for ``cols`` V columns: the smallest N mode whose
    row group (``chains * C / N`` columns) is no wider than ``cols`` (the widest fitting
    group; the densest mode M when none is that narrow).

    Why not the dense M:M of the other ops: the V rows sit key-major in the KV buffer (a key
    per row, as the cache is written), so the weight rows of P x V (V's columns) are strided
    through memory, one byte per key. On the chain's N:M datapath a beat instead takes N
    consecutive keys of ``chains * C / N`` columns each: N contiguous pieces of V rows (one
    buffer read when they span no more than a word), the in-block indices selecting those
    keys' probabilities; M/N beats cover an activation block. A row group of
    ``chains * C / N`` columns then needs ``K / N`` beats: the same beats per column as the
    dense op (``K / M`` per ``chains * C / M`` columns), the group's drain at that N."""
    c = engine.chain_length
    modes = hw.chain_n_modes(c)
    for n in modes:
        if engine.chains * c // n <= cols:
            return n, n
    return modes[-1], modes[-1]


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


#: The machine's matmul unit (:mod:`hwflow.hw.machine.mmu`) around an engine, one instruction
#: at a time: cycles from accepting an instruction to its first beat: the command register
#: with the first operand part request (1), the buffer's read latency (1), the operand FIFO
#: between the part reader and the beat (1).
UNIT_FEED_STAGES = 3
#: Cycles from the engine's last drain word to the unit's ``done``: the engine runs raw and
#: the unit applies the numerics contract's two-stage requantization
#: (:func:`hwflow.numerics.linear_out`) itself: the word with its parameters (1), the row
#: stage's product (1), its rounding shift and INT32 saturation (1), the bias add (1), the
#: channel stage's product (1), its rounding shift and saturation (1); then the buffer write
#: of the last output word (1).
UNIT_DRAIN_STAGES = 7


def matmul_unit_cost(
    engine: Engine,
    m_block: int,
    tokens: int,
    rows: int,
    k: int,
    n: int,
    group: int | None = None,
    *,
    sliced: bool = False,
) -> OpCost:
    """Cost of one MM/MV instruction on the machine's matmul unit: :func:`matmul_cost` with
    the unit's :data:`UNIT_FEED_STAGES` and :data:`UNIT_DRAIN_STAGES` of latency.

    ``sliced``: the UINT8 probabilities of P x V on a dual-INT8 engine (its packed ``a << F``
    leaves no room for a 9th activation bit in the DSP48E2's 27-bit pre-adder) run bit-sliced,
    ``p >> 1`` and ``p & 1`` of one token on the engine's two token lanes, so a pass holds one
    token: the beats of ``tokens * engine.rows`` tokens (the multiply-accumulates stay the
    real ones)."""
    cost = matmul_cost(engine, m_block, tokens * engine.rows if sliced else tokens, rows, k, n,
                       group)  # fmt: skip
    stages = UNIT_FEED_STAGES + UNIT_DRAIN_STAGES
    return OpCost(
        beats=cost.beats,
        latency=cost.latency + stages,
        macs=tokens * rows * (k // m_block) * n,
        dense_macs=tokens * rows * k,
        reads=cost.reads,
    )


#: Result bits per cycle of the SFU's per-row scalar engines (a restoring divider and a
#: digit-by-digit square root, one adder-comparator per result bit: radix-2 long division
#: unrolled 8 times, as in Xilinx's Divider Generator radix-2 core, PG151 "Radix-2").
SFU_SCALAR_BITS = 8
#: Numerator bits of the quantization reciprocal ``(127 << QROW_SHIFT) // M``
#: (numerics.quant_rows), rounded up to whole cycles of the engine.
SFU_RECIP_BITS = -(-(127 << QROW_SHIFT).bit_length() // SFU_SCALAR_BITS) * SFU_SCALAR_BITS
#: Numerator bits of the norm's ``(d << 2*NORM_FRAC) // ss'`` (numerics.rsqrt_fixed, a row of
#: ``d < 2**16`` elements: the ISA's 16-bit ``cols``); its root has half as many bits.
SFU_NORM_BITS = -(-(16 + 2 * NORM_FRAC) // (2 * SFU_SCALAR_BITS)) * 2 * SFU_SCALAR_BITS


def sfu_passes(hw: HardwarePreset, func: str, center: bool = False, head_dim: int = 0) -> int:
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
    * ``rope``, ``silu``, ``add``, ``mov``: one; and tensor parallelism's ``requant`` (one
      pass over the reduced accumulators), ``rowmax`` and ``qrows`` (``mul``/``reluq``'s two
      passes, split around the all-reduce of the row maxima).
    * rotated keys' ``ropeq`` (``head_dim`` a power of two): the RoPE pass, then the
      ``log2(head_dim)`` Hadamard stages (:func:`~hwflow.numerics.hadamard_int`), the last one
      requantizing; ``ropek`` one more: its last stage takes each head's maximum, then the
      quantizing pass (:func:`rotate_passes`).
    """
    if func in ("ropeq", "ropek"):
        return rotate_passes(func, head_dim)
    if func == "norm":
        return hw.sfu.norm_passes + int(center)
    if func == "softmax":
        return hw.sfu.softmax_passes
    return 2 if func in ("mul", "reluq") else 1


def rotate_passes(func: str, head_dim: int) -> int:
    """Passes of rotated keys' ``ropeq`` / ``ropek`` over a head of ``head_dim`` (a power of
    two): the RoPE pass reading A, ``log2(head_dim)`` Hadamard butterfly stages on the SFU's
    head scratch (each a pass in RoPE's pair pattern, partners ``2**s`` apart), and for
    ``ropek`` the quantizing pass after the head's maximum (:func:`sfu_passes`)."""
    if head_dim < 2 or head_dim & (head_dim - 1):
        raise UnsupportedError(f"{func}: head_dim {head_dim} is not a power of two >= 2")
    return 1 + head_dim.bit_length() - 1 + int(func == "ropek")


def rotate_slots(hw: HardwarePreset, func: str, rows: int, cols: int, head_dim: int) -> int:
    """Group slots of a ``ropeq`` / ``ropek`` instruction as the SFU runs it
    (:mod:`hwflow.hw.machine.sfu_rot`, :mod:`hwflow.hw.machine.sfu_hadamard`), without the
    fill :func:`sfu_op_cost` adds. Per (row, head) segment: its ``C = max(head_dim / lanes,
    2)`` chunks (RoPE's half-head groups) into the Hadamard row buffer, ``log2(C) * C / 2``
    cross-chunk butterfly cycles (the in-chunk stages are combinational on arrival), two
    cycles handing the head to the tail, and for ``ropek`` the reciprocal of the head's
    maximum (``sfu_scalar_cycles - 1``: the engine starts as the head arrives); its chunks
    then leave one a cycle while the next head's enter. After the last head: its ``C``
    chunks out, less two (the tail writes without the output register of the other
    functions)."""
    chunks = max(head_dim // hw.sfu.lanes, 2)
    per = chunks + (chunks.bit_length() - 1) * chunks // 2 + 2
    if func == "ropek":
        per += sfu_scalar_cycles(func) - 1
    return rows * (cols // head_dim) * per + chunks - 2


def sfu_cost(hw: HardwarePreset, elements: int, passes: int = 1) -> OpCost:
    """Cost of a special-function op over ``elements`` values read ``passes`` times
    (:func:`sfu_passes`). Each of the preset's ``sfu.lanes`` lanes takes one element per cycle
    whatever its width (a lane is 32 bits wide: the INT32 residual stream), so a pass takes
    ``ceil(elements / lanes)`` cycles; the bytes moved count in the buffer energy
    (:mod:`hwflow.perf.lower`), not in cycles. This is the lane rate alone: an instruction's
    cost with its rows and per-row scalar work is :func:`sfu_op_cost`."""
    beats = passes * ceil(elements / hw.sfu.lanes)
    return OpCost(beats=beats, latency=beats + hw.sfu.latency, macs=0, dense_macs=0)


def sfu_scalar_cycles(func: str) -> int:
    """Cycles from the last statistics group of a row to the first output group that can use
    its per-row scalars (norm, mul, reluq), or from a softmax row's last output group to its
    row factor write: each scalar engine operation takes its result bits at
    :data:`SFU_SCALAR_BITS` per cycle plus one (start), the row's state moves one cycle later.
    The norm divides, then takes the root; the quantization reciprocal runs beside them."""
    op = lambda bits: bits // SFU_SCALAR_BITS + 1  # noqa: E731
    if func == "norm":
        return op(SFU_NORM_BITS) + op(SFU_NORM_BITS // 2) + 1
    if func in ("mul", "reluq", "softmax", "ropek"):
        return op(SFU_RECIP_BITS) + 1
    return 0


def _interleaved_slots(rows: int, stats: int, out: int, scalar: int) -> int:
    """Group slots of an interleaved instruction (norm, mul, reluq): the output pass of row
    ``k - 1`` follows the statistics of row ``k``; a row's statistics end waits for the scalar
    engines to be free, its output pass for its scalars (:func:`sfu_scalar_cycles`)."""
    t, ready, rel, latch = 0, 0, -1, 0
    for k in range(rows + 1):
        if k < rows:
            t = max(t + stats - 1, ready if k else 0)
            latch, t = t, t + 1
        if k >= 1:
            t = max(t, ready) + out
            rel = t - 1
        ready = max(latch + scalar - 1, rel) + 1
    return t


def sfu_shared_port(func: str, a_buf: int, b_buf: int) -> bool:
    """Whether two operand streams of an SFU op read through one buffer's read port (one
    port per buffer): RoPE's element and its partner (and its cos and sin rows) always; add and
    mul when both operands sit in one buffer; the norm when its input sits with its gains in
    PARAM."""
    if func in ("rope", "ropeq", "ropek"):
        return True
    if func == "norm":
        return a_buf == Buf.PARAM
    return func in ("add", "mul") and a_buf == b_buf


def _softmax_slots(rows: int, per: int, scalar: int) -> int:
    """Group slots of a softmax: row by row (maximum, then numerators); after a row's output
    pass the engine divides its sum and writes its row factor (``scalar`` cycles), taking the
    writer for one cycle (a stall when the next row's output pass is on); a row's output pass
    ends only once the previous row's factor is out. The last row's factor write is exposed."""
    t, prev = 0, None
    for _ in range(rows):
        t += per  # statistics
        end = t + per - 1  # the last numerator group
        if prev is not None:
            end += int(t <= prev + scalar - 1 <= end)
            end = max(end, prev + scalar)
        prev, t = end, end + 1
    return t + scalar - 2


def sfu_op_cost(
    hw: HardwarePreset,
    func: str,
    rows: int,
    cols: int,
    center: bool = False,
    head_dim: int = 0,
    shared: bool = False,
) -> OpCost:
    """Cost of one SFU instruction as the unit runs it (:mod:`hwflow.hw.machine.sfu`).

    The lanes take ``sfu.lanes`` elements of one row per cycle (a row's statistics are its
    own, so a group never mixes rows; RoPE: of one half head), each pass of a row in
    ``ceil(cols / lanes)`` cycles. Per-row scalars (:func:`sfu_scalar_cycles`) overlap the
    next row's statistics pass; what they cannot hide (one-row instructions, short rows) is
    charged. Operand streams sharing a buffer's read port (``shared``,
    :func:`sfu_shared_port`) take turns for their first two words each: two cycles before
    the first group (RoPE, four streams on two ports: four). ``latency``: the unit's pipeline depth beyond the last group."""
    if rows <= 0 or cols <= 0:
        return OpCost(beats=0, latency=0, macs=0, dense_macs=0)
    lanes, passes = hw.sfu.lanes, sfu_passes(hw, func, center, head_dim)
    half = head_dim // 2
    per = (cols // half) * ceil(half / lanes) if func == "rope" and half else ceil(cols / lanes)
    if func in ("ropeq", "ropek"):
        slots = rotate_slots(hw, func, rows, cols, head_dim)
    elif func in ("norm", "mul", "reluq"):
        slots = _interleaved_slots(rows, (passes - 1) * per, per, sfu_scalar_cycles(func))
    elif func == "softmax" and passes == 2:
        slots = _softmax_slots(rows, per, sfu_scalar_cycles(func))
    else:
        slots = passes * rows * per
    slots += 2 * int(shared) + 2 * int(func in ("rope", "ropeq", "ropek"))
    return OpCost(beats=slots, latency=slots + hw.sfu.latency, macs=0, dense_macs=0)


# --------------------------------------------------------------------------------------------
# HBM transfers (LD / ST), defined once: the cycle model's HBM channels charge these, and the
# RTL machine's simulated HBM (hwflow.hw.machine.hbm_sim) times its AXI bursts with them.
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
# finished streaming it (the first-beat latency; later bursts are pipelined behind it), and
# the LD/ST unit's one port carries a transfer's AXI bursts in order (:func:`hbm_bursts`: a
# burst's words, a store's write response, come once its channels streamed it, one per cycle,
# after the bursts before it; bursts take their channels in arrival order with the other
# unit's). The load/store unit runs one transfer at a time, as the RTL's does
# (hwflow.hw.machine.ldst: a command is taken only while the unit is idle): its next transfer
# starts once this one is done (hwflow.perf.machine).
#
# The core side: the HBM's AXI ports run at ``port_mhz`` (450 MHz on the U280, PG276) and a
# clock/width converter brings each channel into the accelerator's clock domain, where a buffer
# word (``buffers.word_bytes``) is every channel's core-side port side by side: one buffer word
# per accelerator cycle, ``word_bytes / channels`` bytes of each channel (:func:`core_port_bytes`).
# That port is a fourth bound of a burst (``ceil(b / core bytes)`` cycles at ``clock_mhz``): on
# a preset whose core clock is slow (the 100 MHz simulation preset) it, not the channel, is the
# limit; the RTL machine's LD/ST path is built this way (hwflow.hw.machine.ldst).

#: Cycles from an LD/ST's start to its first request on the HBM port: the command register
#: that drives the AXI address channel (hwflow.hw.machine.ldst).
LDST_REQUEST_STAGES = 1
#: Cycles from an LD's last beat at its HBM port (``hbm_latency_cycles`` after the channels
#: streamed it) to its tokens being visible: the realigner's output register, whose word is
#: written into the buffer in the next cycle with ``done`` (1), and the token counters (1).
LD_DONE_STAGES = 2
#: Cycles from an ST's last write response to its tokens being visible: the token counters.
ST_DONE_STAGES = 1


def ldst_done_stages(store: bool) -> int:
    """:data:`ST_DONE_STAGES` for the store unit, :data:`LD_DONE_STAGES` for the load unit."""
    return ST_DONE_STAGES if store else LD_DONE_STAGES


def ld_flush_cycles(
    hw: HardwarePreset, hbm: int, rows: int, row_bytes: int, hbm_stride: int, off: int, stride: int
) -> int:
    """Cycles an LD's last buffer word comes after its last HBM word: the realigner's flush.

    The LD unit writes a row through a realigner (:mod:`hwflow.hw.machine.realign`) taking one
    word per cycle: row bytes starting ``s_in`` bytes into an HBM word land ``s_out`` bytes into
    a buffer word, and when ``s_in > s_out`` the first input word makes no output word, so a
    row whose output words number its input words needs one more cycle after its last input
    (its last output word is the tail of the last input word). Rows contiguous on both sides
    are one row (:class:`hwflow.hw.machine.ldst.LoadUnit`); of several rows the last one's
    flush is charged (an earlier row's flush overlaps the next row's HBM words when the HBM
    side is the slower, as it is for rows of their own runs)."""
    if rows <= 0 or row_bytes <= 0:
        return 0
    wb = hw.buffers.word_bytes
    merged = rows == 1 or hbm_stride == row_bytes
    flat = merged and (rows == 1 or stride == row_bytes)
    last, n = (0, rows * row_bytes) if flat else (rows - 1, row_bytes)
    s_in, s_out = (hbm + last * hbm_stride) % wb, (off + last * stride) % wb
    n_in, n_out = -(-(s_in + n) // wb), -(-(s_out + n) // wb)
    lead = int(s_in >= s_out)
    single = s_in == s_out or (n_in == 1 and lead)
    return int(n_out + lead > n_in and not single)


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


@dataclass(frozen=True)
class HbmBurst:
    """One AXI burst of a transfer as the LD/ST unit issues it (:func:`hbm_bursts`)."""

    #: cycles it takes on the unit's port: a read its words (one per cycle), a store its
    #: write response (one)
    port: int
    #: (channel, cycles) of each channel piece of its bytes, in channel order
    pieces: tuple[tuple[int, int], ...]


def hbm_latency_cycles(hw: HardwarePreset) -> int:
    """First-beat latency of a read in accelerator cycles (rounded up)."""
    return ceil(hw.hbm.latency_ns * hw.clock_mhz / 1000 - 1e-9)


def hbm_refresh_share(hw: HardwarePreset) -> float:
    """Fraction of a channel's time lost to refresh: tRFC / tREFI."""
    return hw.hbm.refresh_ns / hw.hbm.refresh_interval_ns


def core_port_bytes(hw: HardwarePreset) -> int:
    """Bytes one channel moves per accelerator cycle on the core side of its clock/width
    converter: its share of a buffer word (module comment above)."""
    return hw.buffers.word_bytes // hw.hbm.channels


def hbm_burst_ns(hw: HardwarePreset, nbytes: int) -> float:
    """Channel time of one burst of ``nbytes`` (<= ``max_burst_bytes``) in a stream of them:
    the slowest of the HBM-side port, the core-side port (:func:`core_port_bytes` per
    accelerator cycle), device (refresh included) and latency / outstanding."""
    h = hw.hbm
    t_port = ceil(nbytes / (h.port_bits // 8)) * 1e3 / h.port_mhz
    t_core = ceil(nbytes / core_port_bytes(hw)) * 1e3 / hw.clock_mhz
    atoms = ceil(nbytes / HBM_ATOM_BYTES) * HBM_ATOM_BYTES
    t_dev = atoms / (h.channel_gbps * (1 - hbm_refresh_share(hw)))
    t_lat = h.latency_ns / h.outstanding
    return max(t_port, t_core, t_dev, t_lat)


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


def _split(addr: int, nbytes: int, g: int, nch: int) -> dict[int, int]:
    """Bytes of ``[addr, addr + nbytes)`` per channel (granules of ``g``, ``nch`` channels)."""
    first, last = addr // g, (addr + nbytes - 1) // g
    per: dict[int, int] = {}
    if first == last:
        per[first % nch] = nbytes
        return per
    per[first % nch] = (first + 1) * g - addr
    per[last % nch] = per.get(last % nch, 0) + addr + nbytes - last * g
    n_whole = last - first - 1
    rounds, rest = divmod(n_whole, nch)
    for i in range(min(nch, n_whole)):
        ch = (first + 1 + i) % nch
        per[ch] = per.get(ch, 0) + (rounds + (1 if i < rest else 0)) * g
    return per


def hbm_pieces(
    hw: HardwarePreset, addr: int, nbytes: int, *, hop: bool = False, write: bool = False
) -> list[HbmPiece]:
    """Split the contiguous transfer of ``nbytes`` at HBM byte ``addr`` into per-channel pieces.

    A channel moves whole :data:`HBM_ATOM_BYTES` atoms: a piece's occupancy is that of the
    atoms its bytes cover (``nbytes`` stays the bytes asked for).
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
    per = _split(addr, nbytes, hw.hbm.interleave_bytes, hw.hbm.channels)
    occ = _occupancies(hw, addr, nbytes, hop, write)
    return [
        HbmPiece(channel=ch, nbytes=b, occupancy=occ[ch], same_channel=not hop, write=write)
        for ch, b in sorted(per.items())
    ]


def _burst_bytes(hw: HardwarePreset) -> int:
    """Bytes of the LD/ST unit's longest AXI burst on its word-wide port (at least a word)."""
    return max(hw.hbm.max_burst_bytes, hw.buffers.word_bytes)


def hbm_bursts(
    hw: HardwarePreset, addr: int, nbytes: int, *, hop: bool = False, write: bool = False
) -> list[HbmBurst]:
    """The AXI bursts of one run of ``nbytes`` at HBM byte ``addr`` (``hop``, ``write`` as for
    :func:`hbm_pieces`), in issue order.

    The RTL's LD/ST unit (:mod:`hwflow.hw.machine.ldst`) carries a run in INCR bursts of whole
    buffer words, split at multiples of ``max(max_burst_bytes, word)`` bytes, and issues one
    burst per cycle. Each burst holds the channels its bytes touch, in arrival order with the
    other unit's bursts; a channel's pieces of the run's bursts add up to the run's piece
    (:func:`hbm_pieces`: a burst's cycles are the run's cumulative occupancy through it less
    that through the previous one, so the row miss and the write turnaround come once per
    channel and run). The unit's one word-wide AXI port returns a read's words in request
    order (AXI4 read data of one ID is in order, Arm IHI0022 A5.3.1), one per cycle, and a
    store's write responses one per cycle in burst order: a burst's data is there once its
    pieces streamed (plus the first-beat latency) and the port carried the bursts before it
    (:class:`hwflow.perf.hbm.HbmChannels`)."""
    if nbytes <= 0:
        return []
    wb, mb, a = hw.buffers.word_bytes, _burst_bytes(hw), HBM_ATOM_BYTES
    g, nch = hw.hbm.interleave_bytes, hw.hbm.channels
    turn = 2 * hw.hbm.turnaround_ns if write else 0.0
    end = addr + nbytes
    s, rend = addr // wb * wb, -(-end // wb) * wb
    done: dict[int, list[int]] = {}  # per channel: atom bytes and cycles through the last burst
    out: list[HbmBurst] = []
    while s < rend:
        e = min(rend, (s // mb + 1) * mb)
        first, last = max(s, addr), min(e, end)
        lo, hi = first // a * a, -(-last // a) * a
        pieces = []
        for ch, b in sorted(_split(lo, hi - lo, g, nch).items()):
            acc = done.setdefault(ch, [0, 0])
            acc[0] += b
            cyc = _cycles(hw, hbm_run_ns(hw, acc[0], new_row=hop) + turn)
            pieces.append((ch, cyc - acc[1]))
            acc[1] = cyc
        out.append(HbmBurst(port=1 if write else (e - s) // wb, pieces=tuple(pieces)))
        s = e
    return out


def _occupancies(
    hw: HardwarePreset, addr: int, nbytes: int, hop: bool, write: bool
) -> dict[int, int]:
    """Per channel: the cycles it streams its part of ``[addr, addr + nbytes)`` (its atoms)."""
    g, nch, a = hw.hbm.interleave_bytes, hw.hbm.channels, HBM_ATOM_BYTES
    lo, hi = addr // a * a, -(-(addr + nbytes) // a) * a
    turn = 2 * hw.hbm.turnaround_ns if write else 0.0
    return {
        ch: _cycles(hw, hbm_run_ns(hw, b, new_row=hop) + turn)
        for ch, b in _split(lo, hi - lo, g, nch).items()
    }


def hbm_runs(
    hw: HardwarePreset, hbm: int, rows: int, row_bytes: int, stride: int
) -> list[tuple[int, int, bool]]:
    """The contiguous runs of an LD/ST of ``rows`` rows of ``row_bytes`` bytes, ``stride``
    bytes apart in HBM from byte ``hbm``, as (address, bytes, hop): rows contiguous in HBM
    (``stride == row_bytes``, or one row) are one run; otherwise every row is a run of its
    own, a *hop* (opening a new DRAM row) when it is shorter than an interleave granule. The
    RTL's LD/ST units issue their AXI bursts run by run (:mod:`hwflow.hw.machine.ldst`)."""
    if rows == 0 or row_bytes == 0:
        return []
    if rows == 1 or stride == row_bytes:
        return [(hbm, rows * row_bytes, False)]
    hop = row_bytes < hw.hbm.interleave_bytes
    return [(hbm + i * stride, row_bytes, hop) for i in range(rows)]


def sync_cost() -> OpCost:
    """A unit's SYNC no-op (it only carries tokens): one issue cycle, done when issued."""
    return OpCost(beats=1, latency=1, macs=0, dense_macs=0)
