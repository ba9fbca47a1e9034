"""The arithmetic contract: every integer operation hwflow's executors perform, defined once.

The numeric reference (:mod:`hwflow.reference`), the functional simulator, the cycle model's
action counts and the RTL benches all call these functions; nothing re-implements them.

Why this contract (measured, not assumed)
-----------------------------------------
Trained LLaMA-family models carry *massive activations*: in SmolLM2-135M the residual stream
reaches 23,600 in one channel of the first token while its median is ~2 (and ~0.07 at the
input). One per-tensor INT8 scale for the residual rounds every ordinary value to zero (the
first contract gave perplexity 50,574 against 28.7 in float). Measured on that checkpoint with
fake quantization of each choice (README "Numerics" has the table): an INT32 residual, INT8
per-token linear inputs with the norm gain applied *before* quantization, INT16 gate/up outputs
and 8-bit softmax probabilities relative to the row maximum (normalised after P x V) keep w8a8
within ~2 % of float; INT8 static gate/up costs +14 %, probabilities normalised to 1/127 +3 %.
INT4 weights with one scale per output row lose +61 % (w4a8, the integer reference on the
same checkpoint, whose own weights are Q4_1 groups of 32); group-wise scales in this contract's
integer form (below) bring RTN to +35 % with groups of 64 and +13 % with groups of 32.

Formats
-------
* **Residual stream** ``x{l}``: INT32 fixed point, ``real = x * 2**-F`` with one binary point
  ``F`` per model (from calibration on real text, two bits of headroom). Adds saturate to INT32.
* **Linear inputs** (norm outputs ``h1``, ``h2``, ``hf``; the gated product ``mm``; OPT's
  activation ``ua``): INT8 with a **per-row (per-token) scale** computed on chip
  (:func:`quant_rows`): ``real = q * f_t * s`` with ``s`` static and the *row factor*
  ``f_t ~= m_t * 2**-e_t`` (``m_t`` 15-bit, :func:`row_factor`) produced by the SFU with the row.
* **Attention output** ``a``: INT8, static per-tensor scale.
* **q, k, v** (and the KV cache): INT8, static **per-head** scales (per output channel of the
  linear, so free in the requantizer) at the head's calibrated maximum (nothing clipped). q and
  k are **balanced** per channel first (``q * lam``, ``k / lam``, folded into the q/k weights on
  the host, :func:`hwflow.smooth.qk_factors`): trained models carry attention-sink channels in
  q and k that one per-head INT8 scale cannot hold next to the ordinary channels (SmolLM2-135M
  w8a8: 24.28 perplexity clipped and unbalanced, 22.10 balanced, float 21.67).
* **Rotated keys** (plan ``method.keys: rotated``, RoPE models with a power-of-two head
  dimension; the instruction set runs it since ISA v5, :mod:`hwflow.isa` ``ropeq``/``ropek``):
  q and k leave their linears as INT16 (static per-head scales, two bits of headroom), RoPE
  rotates them at INT16 (:func:`rope_int` with ``bits=16``), then both are rotated by the
  Hadamard transform (:func:`hadamard_int`, per head; ``H/sqrt(hd)`` is orthonormal, so every
  score is unchanged in real arithmetic) which spreads a channel outlier over the head. q goes
  to INT8 at a static per-head scale (``requantize``); each key row (token, KV head) goes to
  INT8 by :func:`quant_rows` and its row factor is stored with it in the KV cache. The
  scores' row stage applies the keys' factors (:func:`linear_out` of the transposed product,
  a key being a row of K, with a static guard), the channel stage the head's constant. Why:
  with static per-head INT8 q and k, SmolLM2-135M w8a8 is +4.1 % over float at 512 tokens
  (KL 0.032); rotated keys (QuaRot's online Hadamard on q and k after RoPE with per-head,
  per-token KV scales: Ashkboos et al., arXiv:2404.00456, Sec. 4) take it to the figures in the
  README "Numerics" table. Per-token scales without the rotation measured no better than static
  ones (KL 0.034): the loss is a head's channel range, not its token range.
* **gate / up** outputs: INT16, static per-tensor scale (SiLU needs a static input scale, and
  INT8 cannot hold both the massive tokens and the ordinary ones).
* **Weights** are INT\\ *b* (b in 2, 3, 4, 8) symmetric per output channel:
  ``q = clip(rint(w / scale), -qmax, qmax)`` (on the host; the method choosing ``scale`` and
  ``w`` is the plan's). The most negative code is never produced (INT2 weights are ternary).
  With a weight **group** ``G`` (the plan's, per linear) the scale is per output row ``o`` and
  run ``j`` of ``G`` inputs along K: ``scale[o, j] = u[o] * g[o, j]`` with a real row *unit*
  ``u[o]`` (folded into the channel stage's ``mult``/``shift``, like a per-channel scale) and
  an unsigned :data:`GROUP_MULT_BITS`-bit integer *group multiplier* ``1 <= g <= 255``
  (:func:`group_multipliers`: ``u = max_j scale / 255``, so the largest group of a row gets
  255 and every group keeps its scale to 0.5/g relative; codes are chosen against the
  snapped ``u * g``). ``G`` is a multiple of the block M (a group is whole beats of the DSP
  chain) and divides K.
* **Logits**: INT32 at a static scale.

Operations
----------
* **Accumulation** is exact (int64 here; the hardware's 48-bit DSP accumulator cannot overflow
  for K < 2**33 / 127**2).
* **Group-scaled accumulation** (:func:`weight_matmul` with a group): the chain's reduction
  point forms each group's partial sum ``p[t, o, j] = sum_{k in group j} x[t, k] * q[o, k]``
  (exact; ``|p| <= G * 127 * qmax``, a signed :func:`group_partial_bits`-bit value: 18 bits
  for INT4 at G = 128, 22 for INT8), multiplies it by ``g[o, j]`` (exact, no shift or
  rounding: +8 bits) and accumulates ``acc = sum_j g[o, j] * p[t, o, j]`` (exact; the 48-bit
  accumulator holds it for ``K * 127 * qmax * 255 < 2**47``: K < 620,000 at INT4, 34,000 at
  INT8). ``acc`` then goes through :func:`linear_out` unchanged, the row unit ``u`` being part
  of the channel stage's scale. Without a group ``g = 1`` and this is plain accumulation.
* **Linear requantization** is two-stage (:func:`linear_out`): the *row stage*
  ``y = sat32(round_shift(acc * m_t, e_t - G))`` applies the input's row factor (``G`` a static
  guard per op; inputs without row factors use the factor 1, ``m = 2**14, e = 14``), then the INT32 bias (at ``y``'s
  scale) is added, then the *channel stage* ``out = saturate(round_shift(y * mult[o], shift[o]))``
  to the output width (8, 16 or 32 bits). ``mult`` is an unsigned 15-bit integer,
  ``0 <= shift <= 47``. INT8 results saturate to the symmetric -127..127 (the dual-INT8 DSP
  packing needs activations >= -127). ``round_shift(x, s) = (x + 2**(s-1)) >> s`` (arithmetic shift: round half
  towards +infinity); a negative ``s`` is an exact left shift.
* **Per-row quantization** (:func:`quant_rows`): ``M = max(max|v|, 1)`` per row,
  ``q = sat8(round_shift(v * ((127 << 46) // M), 46))``, row factor ``M`` (``v ~= q * M / 127``).
* **Normalisation** (:func:`norm_rows`; RMSNorm, or LayerNorm on the centred row): ``xr =
  sat21(round_shift(x, pre))`` (``pre`` static, from calibration: ``|xr| < 2**20``); LayerNorm centres ``xc =
  round_shift(d*xr - sum(xr), ceil(log2 d))``; ``y = xc * gamma`` with the norm's gain as a
  per-channel INT16 ``gamma``; ``q`` = :func:`quant_rows` of ``y`` and the row factor
  ``M * sqrt(d / ss)`` with ``ss = sum(xc**2)`` by :func:`rsqrt_fixed` (the epsilon is omitted;
  ``ss >= 1`` is the guard). LayerNorm's beta is folded into the next linear's bias.
* **Attention scores** ``z = sat32(round_shift(q.k * mult_h, shift_h))`` per head, in Q8 units
  of log2 (``real score * log2(e) * 256``). **Softmax** (:func:`softmax_rows`):
  ``d = max(z) - z``, ``e = EXP2[d & 255] >> (d >> 8)`` (Q15 table of ``2**(-i/256)``),
  ``p = (255 * e + 2**14) >> 15`` in 0..255 (UINT8, relative to the row maximum; masked: 0) and
  the row sum ``S = sum(p)``. P x V accumulates ``p * v`` exactly and normalises in its row stage
  with the row factor ``1/S`` (:func:`recip_factor`) per row and head.
* **SiLU** on INT16 ``g`` (:func:`silu_int16`): ``i = clip(round_shift(g * m, s), -1024, 1023)``
  (``m/2**s = 64 * scale``: steps of 1/64 over [-16, 16)), ``out = round_shift(g * SIG[i+1024], 15)``
  with SIG the Q15 sigmoid table, at ``g``'s scale. ReLU is ``max(g, 0)``.
* **Gated product** ``mm``: INT16 x INT16 products, then :func:`quant_rows`.
* **N:M sparsity** along the reduction axis K: in every aligned group of M weights of a row,
  exactly N are stored (which ones: the plan's method; magnitude by default, ties to the lower
  index), as values plus ``log2(M)``-bit in-group indices, in ascending index order.
* **Packing**: a tensor of b-bit fields is a little-endian bit stream over its row-major
  elements: element i occupies stream bits ``[i*b, (i+1)*b)``; byte j holds stream bits
  ``[8j, 8j+8)``. Weights are two's complement; indices unsigned.
* **Tensor-parallel reduction** (multi-board systems, :mod:`hwflow.compiler.partition`): a
  row-parallel linear (attention's ``o`` and the MLP's ``down``: their reduction axis K split
  over B boards at multiples of the sparsity block M and of the weight group) computes on each
  board the exact accumulators of its K slice, ``acc_b = sum_{k in slice b} x * w``
  (:func:`weight_matmul` with group multipliers), and writes them as INT32 without any row or
  channel stage. The ring all-reduce sums those INT32 partials (:func:`reduce_partials`):
  ``acc = sum_b acc_b``, exact because the compiler admits a split only when the full
  accumulator's bound ``K * 127 * qmax * gmax`` is below 2**31 (then every partial sum is too, in
  any order of the ring). Every board then applies the op's :func:`linear_out` (row stage with
  the input's row factors and the guard, bias once, channel stage) to ``acc``: the result equals
  the single-board reference bit for bit, because integer addition is associative and the
  nonlinear stages run once, after the sum. Column-parallel linears (q, k, v, gate, up) split
  output rows: each row's arithmetic is unchanged. The per-row quantization of the FFN
  activation (the gated product ``mm``, OPT's ``ua``) needs its row's maximum over *all* FFN
  columns: each board computes the maximum of its columns (:func:`row_max`, INT32: ``|g u| <
  2**30``), the ring all-reduces the maximum (:func:`reduce_max`) and each board quantizes its
  columns with it (:func:`quant_rows` with ``big``): the same codes and row factor as one board.
* **RoPE** (HF ``rotate_half`` convention): ``cos``/``sin`` tables in Q14;
  ``y1 = round_shift(x1*c - x2*s, 14)``, ``y2 = round_shift(x2*c + x1*s, 14)``, saturated to
  INT8 at the input's scale.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "ACT_MIN",
    "EXP2_FRAC",
    "GATE_BITS",
    "GROUP_MULT_BITS",
    "GROUP_MULT_MAX",
    "NORM_FRAC",
    "NORM_IN_BITS",
    "P_MAX",
    "REQ_MULT_BITS",
    "REQ_SHIFT_MAX",
    "RESIDUAL_BITS",
    "ROPE_FRAC",
    "ROW_MULT_BITS",
    "SIG_STEPS",
    "add_residual",
    "exp2_table",
    "group_multipliers",
    "group_partial_bits",
    "hadamard_int",
    "linear_out",
    "matmul_int",
    "max_abs_error",
    "mul_rows",
    "nm_compress",
    "nm_expand",
    "nm_prune_mask",
    "norm_rows",
    "pack_bits",
    "partial_bound",
    "qmax",
    "quant_multiplier",
    "quant_rows",
    "quantize_weight",
    "recip_factor",
    "reduce_max",
    "reduce_partials",
    "relu",
    "requantize",
    "rope_int",
    "rope_tables",
    "round_shift",
    "row_factor",
    "row_max",
    "rsqrt_fixed",
    "saturate",
    "sigmoid_table",
    "silu_int16",
    "softmax_rows",
    "sqnr_db",
    "unit_rows",
    "unpack_bits",
    "weight_matmul",
]

REQ_MULT_BITS = 15  #: requantization multiplier width (unsigned)
REQ_SHIFT_MAX = 47  #: largest requantization shift (48-bit DSP post-adder)
NORM_FRAC = 30  #: fraction bits of the normalisation's inverse RMS (before its exponent)
NORM_IN_BITS = 20  #: the norm's pre-shifted input fits ``|xr| < 2**NORM_IN_BITS``
EXP2_FRAC = 15  #: fraction bits of the softmax's 2**-x table
P_MAX = 255  #: softmax probabilities are UINT8 relative to the row maximum
ROPE_FRAC = 14  #: fraction bits of the RoPE cos/sin tables
ROW_MULT_BITS = 15  #: mantissa width of a row factor
RESIDUAL_BITS = 32  #: width of the residual stream
GATE_BITS = 16  #: width of the gate/up outputs (SiLU input)
#: Width of a weight group's integer multiplier (unsigned). 8 bits: one byte per group in HBM
#: (6 % over the INT4 values at G = 32) and the group partial (<= 22 bits) times it fits one
#: DSP48E2 multiplier (27 x 18). llama.cpp's Q4_K stores 6-bit sub-block scales under one
#: per-super-block float the same way (ggml PR #1684, "k-quants").
GROUP_MULT_BITS = 8
GROUP_MULT_MAX = (1 << GROUP_MULT_BITS) - 1  #: largest group multiplier (255)
SIG_STEPS = 64  #: SiLU's sigmoid table steps per unit of the real input
SIG_HALF = 1024  #: half the sigmoid table's entries (covers [-16, 16) at 1/64)
QROW_SHIFT = 46  #: fraction bits of quant_rows' reciprocal
#: INT8 activations are symmetric, -127..127: a dual-INT8 DSP48E2 packs the upper activation
#: as ``a << 19`` into the 27-bit pre-adder, exact only for a >= -127 (hwflow.hw.params).
ACT_MIN = -127


def saturate(x: np.ndarray, bits: int = 8) -> np.ndarray:
    """Clip to the signed range of ``bits`` (INT8: the symmetric -127..127, :data:`ACT_MIN`)
    and return the smallest fitting int dtype."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if bits == 8:
        lo = ACT_MIN
    out = np.clip(x, lo, hi)
    return out.astype(
        np.int8 if bits <= 8 else np.int16 if bits <= 16 else np.int32 if bits <= 32 else np.int64
    )


def round_shift(x: np.ndarray, shift: np.ndarray | int) -> np.ndarray:
    """``(x + 2**(shift-1)) >> shift`` (round half up); ``shift`` 0 leaves x, a negative
    ``shift`` is the exact left shift ``x << -shift``; broadcasts."""
    x = np.asarray(x, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    right = np.maximum(shift, 0)
    half = np.where(right > 0, np.left_shift(np.int64(1), np.maximum(right - 1, 0)), 0)
    return np.left_shift(np.right_shift(x + half, right), np.maximum(-shift, 0))


def requantize(
    acc: np.ndarray, mult: np.ndarray | int, shift: np.ndarray | int, bits: int = 8
) -> np.ndarray:
    """INT32/64 accumulator -> INT``bits``: ``saturate(round_shift(acc * mult, shift))``.

    ``mult`` and ``shift`` broadcast against the last axis (per output channel) or are scalars.
    """
    prod = np.asarray(acc, dtype=np.int64) * np.asarray(mult, dtype=np.int64)
    return saturate(round_shift(prod, shift), bits)


def quant_multiplier(real: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """The (mult, shift) pair with ``mult / 2**shift ~= real``, mult normalised to 15 bits.

    Raises ValueError for a non-positive or too large (>= 2**15) scale. A scale too small for
    the largest shift keeps shift = 47 and a small (possibly zero) multiplier; one that rounds
    up to 2**15 at shift 0 (in [2**15 - 0.5, 2**15)) saturates to (2**15 - 1, 0), so the shift
    stays in 0..47.
    """
    r = np.atleast_1d(np.asarray(real, dtype=np.float64))
    if np.any(~np.isfinite(r)) or np.any(r <= 0):
        raise ValueError(
            f"requantization scale must be positive and finite, got {r[(~np.isfinite(r)) | (r <= 0)][:3]}"
        )
    e = np.floor(np.log2(r)).astype(np.int64)
    shift = (REQ_MULT_BITS - 1) - e
    if np.any(shift < 0):
        raise ValueError(
            f"requantization scale {r.max():g} too large (must be < {2**REQ_MULT_BITS})"
        )
    shift = np.minimum(shift, REQ_SHIFT_MAX)
    mult = np.rint(r * np.exp2(shift)).astype(np.int64)
    over = mult >= (1 << REQ_MULT_BITS)
    top = over & (shift == 0)  # no shift left to take back: the largest multiplier
    mult = np.where(top, (1 << REQ_MULT_BITS) - 1, np.where(over, mult >> 1, mult))
    shift = np.where(over & ~top, shift - 1, shift)
    if np.ndim(real) == 0:
        return mult[0], shift[0]
    return mult, shift


# --------------------------------------------------------------------------------------------
# Weights


def qmax(bits: int) -> int:
    """Largest code of a symmetric INT``bits`` weight (INT2: 1, INT3: 3, INT4: 7, INT8: 127)."""
    return (1 << (bits - 1)) - 1


def quantize_weight(
    w: np.ndarray, bits: int, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel quantization of ``w[out, in]``; returns (codes int8, scale[out]).

    With ``mask`` (the N:M keep-mask), the scale is taken over kept weights and pruned ones are 0.
    """
    w = np.asarray(w, dtype=np.float64)
    if mask is not None:
        w = np.where(mask, w, 0.0)
    q = qmax(bits)
    scale = np.abs(w).max(axis=1) / q
    scale = np.where(scale > 0, scale, 1.0)
    codes = np.clip(np.rint(w / scale[:, None]), -q, q).astype(np.int8)
    return codes, scale


def nm_prune_mask(w: np.ndarray, n: int, m: int) -> np.ndarray:
    """Keep-mask of magnitude N:M pruning along the last axis (exactly n kept per group of m)."""
    rows, k = w.shape
    if k % m:
        raise ValueError(f"reduction length {k} is not a multiple of M = {m}")
    g = np.abs(np.asarray(w, dtype=np.float64)).reshape(rows, k // m, m)
    order = np.argsort(-g, axis=-1, kind="stable")  # ties: lower index first
    keep = np.zeros_like(g, dtype=bool)
    np.put_along_axis(keep, order[..., :n], True, axis=-1)
    return keep.reshape(rows, k)


def nm_compress(
    codes: np.ndarray, mask: np.ndarray, n: int, m: int
) -> tuple[np.ndarray, np.ndarray]:
    """Dense codes + keep-mask -> (values[out, K/m*n] int8, indices[out, K/m*n] uint8)."""
    rows, k = codes.shape
    keep = mask.reshape(rows, k // m, m)
    if not np.all(keep.sum(-1) == n):
        raise ValueError(f"mask does not keep exactly {n} of every {m}")
    idx = np.nonzero(keep)[-1].reshape(rows, k // m, n)  # ascending within a group
    vals = np.take_along_axis(codes.reshape(rows, k // m, m), idx, axis=-1)
    return vals.reshape(rows, -1).astype(np.int8), idx.reshape(rows, -1).astype(np.uint8)


def nm_expand(values: np.ndarray, indices: np.ndarray, n: int, m: int) -> np.ndarray:
    """Inverse of :func:`nm_compress`: the dense [out, K] codes with zeros where pruned."""
    rows = values.shape[0]
    groups = values.shape[1] // n
    dense = np.zeros((rows, groups, m), dtype=np.int8)
    np.put_along_axis(
        dense,
        indices.reshape(rows, groups, n).astype(np.int64),
        values.reshape(rows, groups, n),
        axis=-1,
    )
    return dense.reshape(rows, groups * m)


def pack_bits(fields: np.ndarray, bits: int) -> np.ndarray:
    """Pack integers (two's complement or unsigned) into a little-endian ``bits``-wide bit stream."""
    flat = np.asarray(fields).astype(np.int64).ravel() & ((1 << bits) - 1)
    stream = ((flat[:, None] >> np.arange(bits)) & 1).astype(np.uint8).ravel()
    pad = (-stream.size) % 8
    stream = np.concatenate([stream, np.zeros(pad, np.uint8)])
    return np.packbits(stream, bitorder="little")


def unpack_bits(data: np.ndarray, bits: int, count: int, signed: bool = True) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` fields, sign-extended when ``signed``."""
    if np.asarray(data).size * 8 < count * bits:
        raise ValueError(
            f"{np.asarray(data).size} bytes hold fewer than {count} fields of {bits} bits"
        )
    stream = np.unpackbits(np.asarray(data, dtype=np.uint8), bitorder="little")[: count * bits]
    vals = (stream.reshape(count, bits).astype(np.int64) << np.arange(bits)).sum(axis=1)
    if signed:
        vals = np.where(vals >= (1 << (bits - 1)), vals - (1 << bits), vals)
        return vals.astype(np.int8)
    return vals.astype(np.uint8)


def group_multipliers(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Real group scales ``scales[out, K/G]`` (positive) -> (integer multipliers ``g[out, K/G]``,
    row units ``u[out]``) with ``u = max_j scales / 255`` and ``g = clip(rint(scales / u), 1,
    255)``: the snapped scale ``u * g`` is within 0.5/g of ``scales`` (relative)."""
    s = np.asarray(scales, dtype=np.float64)
    if s.ndim != 2 or np.any(~np.isfinite(s)) or np.any(s <= 0):
        raise ValueError("group scales must be a positive finite [out, groups] array")
    unit = s.max(axis=1) / GROUP_MULT_MAX
    g = np.clip(np.rint(s / unit[:, None]), 1, GROUP_MULT_MAX).astype(np.int64)
    return g, unit


def group_partial_bits(wbits: int, group: int) -> int:
    """Signed width of a group's partial sum ``sum x * q`` over ``group`` INT8 x INT``wbits``
    products (``|p| <= group * 127 * qmax``)."""
    return (group * 127 * qmax(wbits)).bit_length() + 1


# --------------------------------------------------------------------------------------------
# Products


def matmul_int(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Exact ``x[..., K] @ w[N, K].T`` of integer tensors, as int64.

    Computed in float32 when every partial sum stays below 2**24 (INT8 x INT8 for K <= 1040),
    else in float64 (exact below 2**53), then converted; much faster than an int64 matmul.
    """
    x = np.asarray(x)
    w = np.asarray(w)
    bound = (
        int(np.abs(x.astype(np.int64)).max(initial=0))
        * int(np.abs(w.astype(np.int64)).max(initial=0))
        * x.shape[-1]
    )
    if bound >= 2**53:
        return np.matmul(x.astype(np.int64), w.astype(np.int64).T)
    ft = np.float32 if bound < 2**24 else np.float64  # every partial sum exact in the mantissa
    return np.rint(np.matmul(x.astype(ft), w.astype(ft).T)).astype(np.int64)


def weight_matmul(
    x: np.ndarray, codes: np.ndarray, gmult: np.ndarray | None = None, group: int | None = None
) -> np.ndarray:
    """The accumulators of a linear op: ``acc[..., o] = sum_j g[o, j] * sum_{k in group j}
    x[..., k] * codes[o, k]`` (groups of ``group`` inputs along K), or :func:`matmul_int`
    without group multipliers. Exact: computed as one product with the weights ``codes * g``
    (the same integer, by distributivity)."""
    if gmult is None:
        return matmul_int(x, codes)
    codes = np.asarray(codes, dtype=np.int64)
    gmult = np.asarray(gmult, dtype=np.int64)
    if group is None or codes.shape[1] != gmult.shape[1] * group:
        raise ValueError(
            f"group multipliers {gmult.shape} do not tile weights {codes.shape} in groups of {group}"
        )
    return matmul_int(x, codes * np.repeat(gmult, group, axis=1))


def reduce_partials(parts: list[np.ndarray]) -> np.ndarray:
    """The all-reduce of a row-parallel linear (module doc, tensor-parallel reduction): the sum
    of the boards' INT32 accumulator partials. ``ValueError`` when a sum leaves INT32 (the
    compiler's bound rules that out; an executor meeting it has a bug)."""
    total = np.zeros(np.shape(parts[0]), np.int64)
    for p in parts:
        total = total + np.asarray(p, np.int64)
    lim = 1 << (RESIDUAL_BITS - 1)
    if total.size and (total.min() < -lim or total.max() >= lim):
        raise ValueError("tensor-parallel partial sum leaves INT32 (the compiler's bound failed)")
    return total


def reduce_max(parts: list[np.ndarray]) -> np.ndarray:
    """The all-reduce of row maxima (module doc, tensor-parallel reduction): their maximum."""
    out = np.asarray(parts[0], np.int64)
    for p in parts[1:]:
        out = np.maximum(out, np.asarray(p, np.int64))
    return out


def partial_bound(k: int, wbits: int, group: int | None) -> int:
    """The largest ``|acc|`` of a linear over ``k`` INT8 inputs (|x| <= 127) and INT``wbits``
    weights, times the largest group multiplier with a weight group: what must fit INT32 for
    its K to be split over boards (:func:`reduce_partials`)."""
    return k * 127 * qmax(wbits) * (GROUP_MULT_MAX if group is not None else 1)


def linear_out(
    acc: np.ndarray,
    mult: np.ndarray,
    shift: np.ndarray,
    bits: int,
    row: tuple[np.ndarray, np.ndarray] | None = None,
    guard: int = 0,
    bias: np.ndarray | None = None,
) -> np.ndarray:
    """Two-stage requantization of a linear op's accumulators ``acc[T, N]``.

    Row stage (when the input carries row factors ``row = (m[T], e[T])``):
    ``y = sat32(round_shift(acc * m, e - guard))``, else ``y = acc``; then ``y + bias`` (INT32
    at ``y``'s scale) and the channel stage ``saturate(round_shift(y * mult, shift), bits)``.
    """
    y = np.asarray(acc, dtype=np.int64)
    if row is not None:
        m, e = (np.asarray(r, np.int64)[..., None] for r in row)
        y = saturate(round_shift(y * m, e - guard), 32).astype(np.int64)
    if bias is not None:
        y = y + np.asarray(bias, np.int64)
    return requantize(y, mult, shift, bits)


def unit_rows(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The row factor 1 (``m = 2**14, e = 14``) for ``n`` rows of a tensor without row scales."""
    one = ROW_MULT_BITS - 1
    return np.full(n, 1 << one, np.int64), np.full(n, one, np.int64)


def row_factor(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positive integers ``v`` as 15-bit mantissas and exponents: ``v ~= m * 2**-e``,
    ``2**14 <= m < 2**15`` (``m`` rounded half up; ``e`` may be negative)."""
    v = np.maximum(np.asarray(v, dtype=np.int64), 1)
    b = np.array([int(x).bit_length() for x in v.ravel()], np.int64).reshape(v.shape)
    m = round_shift(v, b - ROW_MULT_BITS)
    over = m >= (1 << ROW_MULT_BITS)
    m = np.where(over, m >> 1, m)
    b = np.where(over, b + 1, b)
    return m, ROW_MULT_BITS - b


def recip_factor(total: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``1/total`` (positive integers) as a row factor ``m * 2**-e``: ``b`` the bit length of
    ``total``, ``m = round(2**(14 + b) / total)`` in ``(2**14, 2**15]``, ``e = 14 + b``; an
    ``m`` of ``2**15`` (a power-of-two total) is halved with ``e - 1``."""
    t = np.maximum(np.asarray(total, dtype=np.int64), 1)
    b = np.array([int(x).bit_length() for x in t.ravel()], np.int64).reshape(t.shape)
    e = ROW_MULT_BITS - 1 + b
    m = (np.left_shift(np.int64(1), e) + t // 2) // t
    over = m >= (1 << ROW_MULT_BITS)
    return np.where(over, m >> 1, m), np.where(over, e - 1, e)


def row_max(v: np.ndarray) -> np.ndarray:
    """``M = max(max|v|, 1)`` per row of integer rows ``v[..., n]`` (:func:`quant_rows`)."""
    return np.maximum(np.abs(np.asarray(v, dtype=np.int64)).max(axis=-1), 1)


def quant_rows(
    v: np.ndarray, big: np.ndarray | None = None
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Per-row INT8 quantization of integer rows ``v[..., n]`` (``|v| < 2**46``).

    ``M = max(max|v|, 1)``; ``q = sat8(round_shift(v * ((127 << 46) // M), 46))``, so
    ``v ~= q * M / 127``; returns ``q`` and the row factor of ``M`` (:func:`row_factor`).
    ``big``: the rows' ``M`` given (tensor parallel: the row maximum over every board's
    columns, :func:`reduce_max`, so each board quantizes its columns as one board would).
    """
    v = np.asarray(v, dtype=np.int64)
    big = row_max(v) if big is None else np.asarray(big, np.int64)
    recip = (np.int64(127) << QROW_SHIFT) // big
    q = saturate(round_shift(v * recip[..., None], QROW_SHIFT), 8)
    return q, row_factor(big)


def rsqrt_fixed(ss: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """``sqrt(d / ss)`` for positive integers ``ss`` as ``inv * 2**-(NORM_FRAC + k)``.

    ``ss`` is first normalised to at most 32 bits by an even shift ``2k`` (``k`` as small as
    possible), then ``inv = isqrt((d << 2*NORM_FRAC) // max(ss >> 2k, 1))``.
    """
    flat = np.maximum(np.asarray(ss, dtype=np.int64), 1).ravel()
    inv, ks = [], []
    for s in flat:
        k = max(0, (int(s).bit_length() - 31) // 2)
        inv.append(math.isqrt((d << (2 * NORM_FRAC)) // max(int(s) >> (2 * k), 1)))
        ks.append(k)
    shape = np.shape(ss)
    return np.array(inv, np.int64).reshape(shape), np.array(ks, np.int64).reshape(shape)


def norm_rows(
    x: np.ndarray, gamma: np.ndarray, center: bool, pre: int
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """RMSNorm (``center=False``) or LayerNorm of INT32 rows with an INT16 per-channel gain.

    ``xr = round_shift(x, pre)``; LayerNorm centres ``xc = round_shift(d*xr - sum(xr),
    ceil(log2 d))``; ``y = xc * gamma`` is quantized per row (:func:`quant_rows`) and the row
    factor is ``M * sqrt(d / ss)`` (``ss = sum(xc**2)``, :func:`rsqrt_fixed`), so the real
    output is ``q * factor * gamma_scale / 127``.
    """
    x = np.asarray(x, dtype=np.int64)
    d = x.shape[-1]
    xc = saturate(round_shift(x, pre), NORM_IN_BITS + 1).astype(np.int64)
    if center:
        xc = round_shift(d * xc - xc.sum(axis=-1, keepdims=True), (d - 1).bit_length())
    ss = (xc * xc).sum(axis=-1)
    q, (m, e) = quant_rows(xc * np.asarray(gamma, np.int64))
    inv, k = rsqrt_fixed(ss, d)
    m2, e2 = row_factor(m * inv)
    return q, (m2, e2 + e + NORM_FRAC + k)


def add_residual(x: np.ndarray, branch: np.ndarray) -> np.ndarray:
    """The residual add: ``sat32(x + branch)`` (both INT32 at the residual's binary point)."""
    return saturate(np.asarray(x, np.int64) + np.asarray(branch, np.int64), RESIDUAL_BITS)


def mul_rows(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """The gated product: INT16 x INT16 element-wise, quantized per row (:func:`quant_rows`)."""
    return quant_rows(np.asarray(a, np.int64) * np.asarray(b, np.int64))


# --------------------------------------------------------------------------------------------
# Non-linear functions


def sigmoid_table() -> np.ndarray:
    """Q15 ``round(2**15 * sigmoid((i - 1024) / 64))`` for i = 0..2047 (int64)."""
    x = (np.arange(2 * SIG_HALF, dtype=np.float64) - SIG_HALF) / SIG_STEPS
    return np.rint((1 << 15) / (1 + np.exp(-x))).astype(np.int64)


_SIG = sigmoid_table()


def silu_int16(g: np.ndarray, mult: int, shift: int) -> np.ndarray:
    """SiLU of INT16 ``g`` at its own scale: ``i = clip(round_shift(g * mult, shift), -1024,
    1023)`` (``mult / 2**shift = 64 * scale``), ``out = sat16(round_shift(g * SIG[i], 15))``."""
    g = np.asarray(g, dtype=np.int64)
    i = np.clip(round_shift(g * mult, shift), -SIG_HALF, SIG_HALF - 1) + SIG_HALF
    return saturate(round_shift(g * _SIG[i], 15), GATE_BITS)


def relu(x: np.ndarray) -> np.ndarray:
    """``max(x, 0)`` at the input's width."""
    x = np.asarray(x)
    return np.maximum(x, 0).astype(x.dtype)


def exp2_table() -> np.ndarray:
    """Q15 table ``round(2**15 * 2**(-i/256))`` for i = 0..255 (int64)."""
    i = np.arange(256, dtype=np.float64)
    return np.rint(np.exp2(-i / 256) * (1 << EXP2_FRAC)).astype(np.int64)


_EXP2 = exp2_table()


def softmax_rows(z: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Softmax numerators over the last axis of Q8-log2 scores ``z`` (INT32).

    ``d = max(z) - z`` over kept entries, ``e = EXP2[d & 255] >> min(d >> 8, 31)``,
    ``p = (255 * e + 2**14) >> 15`` in 0..255 (0 where ``mask`` is False); returns ``p`` (uint8)
    and the row sums ``S`` (int64) by which P x V normalises. Every row must keep one entry.
    """
    z = np.asarray(z, dtype=np.int64)
    if mask is None:
        mask = np.ones(z.shape, dtype=bool)
    if not np.all(mask.any(axis=-1)):
        raise ValueError("softmax row with every entry masked")
    mx = np.where(mask, z, np.iinfo(np.int64).min).max(axis=-1, keepdims=True)
    d = np.where(mask, mx - z, 0)
    e = _EXP2[d & 255] >> np.minimum(d >> 8, 31)
    p = np.where(mask, (P_MAX * e + (1 << (EXP2_FRAC - 1))) >> EXP2_FRAC, 0)
    return p.astype(np.uint8), p.sum(axis=-1)


def rope_tables(positions: int, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Q14 cos/sin tables [positions, head_dim/2] (int64) of the HF LLaMA rotary embedding."""
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    ang = np.arange(positions, dtype=np.float64)[:, None] * inv_freq[None, :]
    one = 1 << ROPE_FRAC
    return np.rint(np.cos(ang) * one).astype(np.int64), np.rint(np.sin(ang) * one).astype(np.int64)


def rope_int(x: np.ndarray, cos_q: np.ndarray, sin_q: np.ndarray, bits: int = 8) -> np.ndarray:
    """Rotate ``x[..., T, head_dim]`` (INT8, or INT16 with rotated keys) by the Q14 rows
    ``cos_q/sin_q[T, head_dim/2]``, saturated to ``bits`` at the input's scale."""
    x = np.asarray(x, dtype=np.int64)
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    y1 = round_shift(x1 * cos_q - x2 * sin_q, ROPE_FRAC)
    y2 = round_shift(x2 * cos_q + x1 * sin_q, ROPE_FRAC)
    return saturate(np.concatenate([y1, y2], axis=-1), bits)


def hadamard_int(x: np.ndarray) -> np.ndarray:
    """The unnormalised Walsh-Hadamard transform along the last axis (a power of two, n):
    ``y = x @ H_n`` with Sylvester's ``H_2n = [[H, H], [H, -H]]``, computed exactly by
    ``log2(n)`` butterfly stages ``(a, b) -> (a + b, a - b)`` (adds only; ``|y| <= n max|x|``).
    ``H_n / sqrt(n)`` is orthonormal and symmetric, so rotating both q and k leaves every
    score ``q . k`` unchanged in real arithmetic."""
    y = np.asarray(x, dtype=np.int64)
    n = y.shape[-1]
    if n < 1 or n & (n - 1):
        raise ValueError(f"Hadamard length {n} must be a power of two")
    h = 1
    while h < n:
        y = y.reshape(*y.shape[:-1], n // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        y = np.stack([a + b, a - b], axis=-2).reshape(*y.shape[:-3], n)
        h *= 2
    return y


# --------------------------------------------------------------------------------------------
# Quality


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of ``test`` against ``ref`` in dB (inf if equal)."""
    ref = np.asarray(ref, dtype=np.float64)
    noise = float(np.sum((ref - np.asarray(test, dtype=np.float64)) ** 2))
    signal = float(np.sum(ref**2))
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


def max_abs_error(ref: np.ndarray, test: np.ndarray) -> float:
    return float(
        np.max(np.abs(np.asarray(ref, np.float64) - np.asarray(test, np.float64)), initial=0.0)
    )
