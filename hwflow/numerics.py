"""The arithmetic contract: every integer operation hwflow's executors perform, defined once.

The numeric reference (:mod:`hwflow.reference`), the functional simulator, the cycle model's
action counts and the RTL benches all call these functions; nothing re-implements them.

Conventions (the contract, in words)
------------------------------------
* **Activations** are INT8 with a per-tensor scale (``real = q * scale``), symmetric, no zero point.
* **Weights** are INT\\ *b* (b in 2, 3, 4, 8) symmetric per output channel:
  ``scale[o] = max|w[o, :]| / (2**(b-1) - 1)``, ``q = clip(rint(w / scale), -qmax, qmax)``
  (``rint`` rounds half to even; this happens once, on the host, at compression time).
  The most negative code ``-2**(b-1)`` is never produced, so INT2 weights are ternary.
* **Accumulation** is exact (int64 here; the hardware's 48-bit DSP accumulator cannot overflow for
  K < 2**33 / 127**2). A bias is INT32 at the accumulator's scale, added before requantization.
* **Requantization**: ``out = saturate(round_shift(acc * mult, shift))`` with ``mult`` an unsigned
  15-bit integer and ``0 <= shift <= 47``. ``round_shift(x, s) = (x + 2**(s-1)) >> s`` with an
  arithmetic (flooring) shift: round half towards +infinity. ``saturate`` clips to the signed
  range of the output width (INT8: -128..127).
* **N:M sparsity** along the reduction axis K: in every aligned group of M weights of a row,
  exactly N are stored (the N largest magnitudes; ties go to the lower index), as values plus
  ``log2(M)``-bit in-group indices, in ascending index order.
* **Packing**: a tensor of b-bit fields is a little-endian bit stream over its row-major
  elements: element i occupies stream bits ``[i*b, (i+1)*b)``; byte j holds stream bits
  ``[8j, 8j+8)``. Weights are two's complement; indices unsigned.
* **Element-wise functions** (SiLU, ReLU, ...) are 256-entry INT8 -> INT8 tables indexed by
  ``x + 128``; the table is made on the host from the input and output scales.
* **Normalisation** (RMSNorm; LayerNorm = RMSNorm of the centred ``d*x - sum(x)``):
  ``inv = isqrt((d << 60) // max(ss, 1))`` per row, ``ss`` the sum of squares (the epsilon is
  omitted: ``ss >= 1`` is the guard), then ``out = requantize(xc * inv, mult, shift)``. The
  scale and shift (gamma, beta) are folded into the next linear layer at compression time.
* **Softmax** over INT8 scores: ``e = EXP[max - s]`` (a 256-entry Q15 table of
  ``exp(-j * score_scale)``), masked entries 0; ``recip = 2**32 // sum(e)``;
  ``p = (e * recip * 127 + 2**31) >> 32`` in 0..127 with scale 1/127.
* **RoPE** (HF ``rotate_half`` convention): ``cos``/``sin`` tables in Q14;
  ``y1 = round_shift(x1*c - x2*s, 14)``, ``y2 = round_shift(x2*c + x1*s, 14)``, saturated to
  INT8 at the input's scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = [
    "EXP_FRAC",
    "NORM_FRAC",
    "REQ_MULT_BITS",
    "REQ_SHIFT_MAX",
    "ROPE_FRAC",
    "add_requant",
    "apply_lut",
    "exp_table",
    "lut_from_fn",
    "matmul_int",
    "max_abs_error",
    "mul_requant",
    "nm_compress",
    "nm_expand",
    "nm_prune_mask",
    "norm_int",
    "pack_bits",
    "qmax",
    "quant_multiplier",
    "quantize_weight",
    "requantize",
    "rope_int",
    "rope_tables",
    "round_shift",
    "saturate",
    "softmax_int",
    "sqnr_db",
    "unpack_bits",
]

REQ_MULT_BITS = 15  #: requantization multiplier width (unsigned)
REQ_SHIFT_MAX = 47  #: largest requantization shift (48-bit DSP post-adder)
NORM_FRAC = 30  #: fraction bits of the normalisation's inverse RMS
EXP_FRAC = 15  #: fraction bits of the softmax exponential table
ROPE_FRAC = 14  #: fraction bits of the RoPE cos/sin tables


def saturate(x: np.ndarray, bits: int = 8) -> np.ndarray:
    """Clip to the signed range of ``bits`` and return the smallest fitting int dtype."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    out = np.clip(x, lo, hi)
    return out.astype(
        np.int8 if bits <= 8 else np.int16 if bits <= 16 else np.int32 if bits <= 32 else np.int64
    )


def round_shift(x: np.ndarray, shift: np.ndarray | int) -> np.ndarray:
    """``(x + 2**(shift-1)) >> shift`` (round half up); ``shift`` 0 leaves x; broadcasts."""
    x = np.asarray(x, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    half = np.where(shift > 0, np.left_shift(np.int64(1), np.maximum(shift - 1, 0)), 0)
    return np.right_shift(x + half, shift)


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
    the largest shift keeps shift = 47 and a small (possibly zero) multiplier.
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
    mult = np.where(over, mult >> 1, mult)
    shift = np.where(over, shift - 1, shift)
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


# --------------------------------------------------------------------------------------------
# Products


def matmul_int(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Exact ``x[..., K] @ w[N, K].T`` of integer tensors, as int64.

    Computed in float64, which is exact while every partial sum stays below 2**53 (INT8 x INT8
    for K < 5e11), then converted; much faster than an int64 matmul.
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
    return np.rint(np.matmul(x.astype(np.float64), w.astype(np.float64).T)).astype(np.int64)


def mul_requant(a: np.ndarray, b: np.ndarray, mult: int, shift: int) -> np.ndarray:
    """Element-wise INT8 x INT8 product requantized to INT8 (the gated MLP's silu(g) * u)."""
    return requantize(np.asarray(a, np.int64) * np.asarray(b, np.int64), mult, shift)


def add_requant(a: np.ndarray, b: np.ndarray, mult_a: int, mult_b: int, shift: int) -> np.ndarray:
    """Element-wise ``saturate(round_shift(a*mult_a + b*mult_b, shift))`` (residual adds)."""
    acc = np.asarray(a, np.int64) * mult_a + np.asarray(b, np.int64) * mult_b
    return saturate(round_shift(acc, shift), 8)


# --------------------------------------------------------------------------------------------
# Non-linear functions


def lut_from_fn(
    fn: Callable[[np.ndarray], np.ndarray], scale_in: float, scale_out: float
) -> np.ndarray:
    """The 256-entry INT8 table of ``fn`` between two scales, indexed by ``x + 128``."""
    x = np.arange(-128, 128, dtype=np.float64) * scale_in
    return saturate(np.rint(fn(x) / scale_out), 8)


def apply_lut(x: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Element-wise table look-up of INT8 ``x``."""
    return lut[np.asarray(x, np.int64) + 128]


def norm_int(x: np.ndarray, center: bool, mult: int, shift: int) -> np.ndarray:
    """RMSNorm (``center=False``) or LayerNorm (``center=True``) of INT8 rows, unit gain.

    ``xc = d*x - sum(x)`` when centring, else ``x``; ``inv = isqrt((d << 60) // max(ss, 1))``
    with ``ss = sum(xc**2)`` (so ``xc * inv / 2**30`` has unit RMS); the result is
    ``requantize(xc * inv, mult, shift)``.
    """
    x = np.asarray(x, dtype=np.int64)
    d = x.shape[-1]
    xc = d * x - x.sum(axis=-1, keepdims=True) if center else x
    ss = (xc * xc).sum(axis=-1)
    flat = ss.ravel()
    inv = np.array(
        [math.isqrt((d << (2 * NORM_FRAC)) // max(int(s), 1)) for s in flat], dtype=np.int64
    )
    inv = inv.reshape(ss.shape)[..., None]
    return requantize(xc * inv, mult, shift)


def exp_table(score_scale: float) -> np.ndarray:
    """Q15 table ``round(2**15 * exp(-j * score_scale))`` for j = 0..255 (uint16 range, int64)."""
    j = np.arange(256, dtype=np.float64)
    return np.rint(np.exp(-j * score_scale) * (1 << EXP_FRAC)).astype(np.int64)


def softmax_int(
    scores: np.ndarray, table: np.ndarray, mask: np.ndarray | None = None
) -> np.ndarray:
    """Softmax over the last axis of INT8 scores -> probabilities 0..127 (scale 1/127), int8.

    Masked-out entries (``mask`` False) get probability 0; every row must keep one entry.
    """
    s = np.asarray(scores, dtype=np.int64)
    if mask is None:
        mask = np.ones(s.shape, dtype=bool)
    mx = np.where(mask, s, -(1 << 20)).max(axis=-1, keepdims=True)
    e = np.where(mask, table[np.clip(mx - s, 0, 255)], 0)
    total = e.sum(axis=-1, keepdims=True)
    if np.any(total == 0):
        raise ValueError("softmax row with every entry masked")
    recip = (np.int64(1) << 32) // total
    return ((e * recip * 127 + (np.int64(1) << 31)) >> 32).astype(np.int8)


def rope_tables(positions: int, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Q14 cos/sin tables [positions, head_dim/2] (int64) of the HF LLaMA rotary embedding."""
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    ang = np.arange(positions, dtype=np.float64)[:, None] * inv_freq[None, :]
    one = 1 << ROPE_FRAC
    return np.rint(np.cos(ang) * one).astype(np.int64), np.rint(np.sin(ang) * one).astype(np.int64)


def rope_int(x: np.ndarray, cos_q: np.ndarray, sin_q: np.ndarray) -> np.ndarray:
    """Rotate INT8 ``x[..., T, head_dim]`` by the Q14 rows ``cos_q/sin_q[T, head_dim/2]``."""
    x = np.asarray(x, dtype=np.int64)
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    y1 = round_shift(x1 * cos_q - x2 * sin_q, ROPE_FRAC)
    y2 = round_shift(x2 * cos_q + x1 * sin_q, ROPE_FRAC)
    return saturate(np.concatenate([y1, y2], axis=-1), 8)


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
