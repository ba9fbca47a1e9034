"""Symmetric INT\\ *b* weight quantization of ``w[out, K]``: how the scales are chosen.

Codes follow :func:`hwflow.numerics.quantize_weight`: ``codes = clip(rint(w / scale), -qmax,
qmax)`` with ``qmax = 2**(b-1) - 1``, one scale per output channel (``scales[out]``) or, with
``group``, one per output channel and run of ``group`` inputs along K (``scales[out, K/group]``).
A keep-mask (N:M pruning) makes pruned weights code 0 and keeps them out of the scale.

* ``rtn``: ``scale = max|w| / qmax`` and round to nearest (today's method; per channel it *is*
  ``numerics.quantize_weight``).
* ``search``: per channel (or group) the clip ratio ``r`` on a grid from 1.0 down to 0.5 that
  minimises ``sum_j d_j (w_j - r*scale_rtn*c_j)^2``, ``d = diag(H)`` with calibration data, 1
  without (plain MSE). Codes saturate at ``qmax`` where ``|w| > r*max|w|``. Ties keep the larger
  ratio, so search never does worse than RTN on its own error measure.
* ``gptq`` / ``gptq-search``: GPTQ (Frantar, Ashkboos, Hoefler & Alistarh, ICLR 2023, arXiv:2210.17323, Alg. 1;
  reference IST-DASLab/gptq ``fasterquant``): columns are quantized left to right and each
  column's rounding error is compensated on the columns not yet quantized through the
  Hessian (:func:`hwflow.calib.obs_sweep`). Scales come from the original weights (per
  channel) or from each group's compensated weights when the group starts (the reference's
  non-static groups). Pruned weights stay exactly 0 and their compensated value's error is
  spread too (as in SparseGPT's joint sparsification and quantization, arXiv:2301.00774).
  ``gptq-search`` takes each scale from the clip search (error weighted by ``diag(H)``)
  instead of ``max|w|``; the reference quantizer's ``mse`` option is the same idea (it shrinks
  ``max|w|`` on a grid down to 0.2 and minimises the unweighted ``sum |err|^2.4``).

The accelerator stores a group scale as an integer multiplier of a per-row unit
(:func:`hwflow.numerics.group_multipliers`); :func:`quantize_grouped` returns that form, with
the codes chosen against the snapped scales ``unit * g`` (GPTQ: a first pass finds each row's
unit, a second quantizes with every group scale snapped to it as the group starts).
"""

from __future__ import annotations

from typing import get_args

import numpy as np

from hwflow.calib import BLOCKSIZE, PERCDAMP, Calibration, obs_sweep
from hwflow.config import WEIGHT_BITS, QuantMethod
from hwflow.numerics import GROUP_MULT_MAX, group_multipliers, qmax, quantize_weight

__all__ = [
    "CLIP_GRID",
    "QUANT_METHODS",
    "dequantize",
    "gptq",
    "quantize",
    "quantize_grouped",
    "rtn",
    "search",
    "search_scales",
]

QUANT_METHODS: tuple[str, ...] = get_args(QuantMethod)
#: clip ratios tried by the scale search, largest first (1.0 is RTN)
CLIP_GRID = tuple(float(r) for r in np.linspace(1.0, 0.5, 21))


def _check(w: np.ndarray, bits: int, mask: np.ndarray | None, group: int | None) -> np.ndarray:
    """``w`` as float64 [out, K] with pruned weights zeroed; ValueError on bad arguments."""
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 2:
        raise ValueError(f"weights must be 2-D [out, K], got shape {w.shape}")
    if bits not in WEIGHT_BITS:
        raise ValueError(f"weight bits {bits!r} unsupported (allowed: {WEIGHT_BITS})")
    if not np.all(np.isfinite(w)):
        raise ValueError("weights hold non-finite values")
    if group is not None and (group < 1 or w.shape[1] % group):
        raise ValueError(f"group {group!r} does not divide the reduction length {w.shape[1]}")
    if mask is not None:
        if np.shape(mask) != w.shape:
            raise ValueError(f"mask shape {np.shape(mask)} differs from weights {w.shape}")
        w = np.where(mask, w, 0.0)
    return w


def _codes(w: np.ndarray, scale: np.ndarray, bits: int) -> np.ndarray:
    """``clip(rint(w / scale), -qmax, qmax)`` as int8 (numerics.quantize_weight's rounding)."""
    q = qmax(bits)
    return np.clip(np.rint(w / scale), -q, q).astype(np.int8)


def _slabs(w: np.ndarray, group: int | None) -> np.ndarray:
    """[out, K] -> [out * K/group, group]: each row one (channel, group) scale's weights."""
    return w if group is None else w.reshape(-1, group)


def _unslab(scale: np.ndarray, out: int, group: int | None) -> np.ndarray:
    return scale if group is None else scale.reshape(out, -1)


def dequantize(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Float weights ``codes * scale``; ``scales`` is [out] or [out, K/group]."""
    codes = np.asarray(codes, dtype=np.float64)
    scales = np.asarray(scales, dtype=np.float64)
    if scales.ndim == 1:
        return codes * scales[:, None]
    return codes * np.repeat(scales, codes.shape[1] // scales.shape[1], axis=1)


def rtn(
    w: np.ndarray, bits: int, mask: np.ndarray | None = None, group: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Round to nearest with ``scale = max|w| / qmax`` per channel (or per group)."""
    w = _check(w, bits, mask, group)
    codes, scale = quantize_weight(_slabs(w, group), bits)
    return codes.reshape(w.shape), _unslab(scale, w.shape[0], group)


def search_scales(
    w: np.ndarray, bits: int, d: np.ndarray | None = None, grid: tuple[float, ...] = CLIP_GRID
) -> np.ndarray:
    """Per row of ``w``, the scale ``r * max|w| / qmax`` (r in ``grid``) of least
    ``sum_j d_j (w_j - scale * code_j)^2``; the first grid entry wins ties."""
    _, base = quantize_weight(w, bits)  # RTN scale, 1.0 for all-zero rows
    d = np.ones(w.shape[1]) if d is None else np.asarray(d, dtype=np.float64)
    best = np.full(w.shape[0], np.inf)
    scale = base.copy()
    for r in grid:
        s = r * base
        err = ((w - s[:, None] * _codes(w, s[:, None], bits)) ** 2) @ d
        better = err < best
        best = np.where(better, err, best)
        scale = np.where(better, s, scale)
    return scale


def _diag_weight(calib: Calibration | None, k: int) -> np.ndarray | None:
    if calib is None:
        return None
    if calib.dim != k:
        raise ValueError(f"calibration has {calib.dim} input channels, the weights {k} (K)")
    return np.diag(calib.xtx).copy()


def search(
    w: np.ndarray,
    bits: int,
    mask: np.ndarray | None = None,
    group: int | None = None,
    calib: Calibration | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Clip-ratio search per channel (or group): error weighted by ``diag(X^T X)`` with
    ``calib``, plain MSE without."""
    w = _check(w, bits, mask, group)
    d = _diag_weight(calib, w.shape[1])
    if group is None:
        scale = search_scales(w, bits, d)
        return _codes(w, scale[:, None], bits), scale
    slabs = w.reshape(w.shape[0], -1, group)
    dg = None if d is None else d.reshape(-1, group)
    scale = np.stack(
        [
            search_scales(slabs[:, g], bits, None if dg is None else dg[g])
            for g in range(slabs.shape[1])
        ],
        axis=1,
    )
    return _codes(slabs, scale[..., None], bits).reshape(w.shape), scale


def gptq(
    w: np.ndarray,
    bits: int,
    calib: Calibration,
    mask: np.ndarray | None = None,
    group: int | None = None,
    clip_search: bool = False,
    percdamp: float = PERCDAMP,
    blocksize: int = BLOCKSIZE,
    unit: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ: quantize columns left to right, compensating each one's error with the Hessian.

    Per-channel scales are RTN's of the (masked) original weights; group scales are RTN's of
    the group's compensated weights when its first column is reached, snapped to
    ``unit[out] * g`` (integer ``1 <= g <= 255``) when ``unit`` is given. Inputs that never fire
    (``H_jj = 0``) have their weights zeroed after the scales are chosen, as the reference.
    """
    w = _check(w, bits, mask, group)
    if calib.dim != w.shape[1]:
        raise ValueError(
            f"calibration has {calib.dim} input channels, the weights {w.shape[1]} (K)"
        )
    keep = np.ones(w.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    out, k = w.shape
    u, dead = calib.factor(percdamp)
    codes = np.zeros(w.shape, dtype=np.int8)
    d = np.diag(calib.xtx)

    def pick(cols: np.ndarray, j: int) -> np.ndarray:
        if clip_search:
            sc = search_scales(cols, bits, d[j : j + cols.shape[1]])
        else:
            sc = quantize_weight(cols, bits)[1]
        return sc if unit is None else _snap(sc, unit)

    if group is None:
        scale = pick(w, 0)
        scales = scale
    else:
        scales = np.zeros((out, k // group))
        scale = np.ones(out)
    w = np.where(dead[None, :], 0.0, w)

    def on_group(j: int, cols: np.ndarray, d: np.ndarray) -> None:
        if group is not None:
            live = np.where(keep[:, j : j + group], cols, 0.0)
            scale[:] = scales[:, j // group] = pick(live, j)

    def on_column(j: int, col: np.ndarray) -> np.ndarray:
        c = np.where(keep[:, j], _codes(col, scale, bits), 0).astype(np.int8)
        codes[:, j] = c
        return c * scale

    inner = 16 if group is None else group
    block = max(inner, blocksize - blocksize % inner)
    obs_sweep(w, u, on_group, on_column, blocksize=block, inner=inner)
    return codes, scales


def _snap(scale: np.ndarray, unit: np.ndarray) -> np.ndarray:
    """``scale`` rounded to the grid ``unit * g``, ``1 <= g <= 255`` (numerics' multipliers)."""
    return np.clip(np.rint(scale / unit), 1, GROUP_MULT_MAX) * unit


def _live_scales(codes: np.ndarray, scales: np.ndarray, group: int) -> np.ndarray:
    """Group scales with those of all-zero groups (their scale is arbitrary: 1.0 by
    quantize_weight) replaced by the row's largest live one, so they set no row unit."""
    live = np.any(codes.reshape(codes.shape[0], -1, group) != 0, axis=2)
    top = np.where(live, scales, 0.0).max(axis=1)
    top = np.where(top > 0, top, 1.0)
    return np.where(live, scales, top[:, None])


def quantize_grouped(
    method: QuantMethod,
    w: np.ndarray,
    bits: int,
    group: int,
    mask: np.ndarray | None = None,
    calib: Calibration | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group-wise quantization in the accelerator's form: (codes int8 [out, K], integer group
    multipliers ``g[out, K/group]``, row units ``unit[out]``), the weights being ``codes * g *
    unit`` per group (:func:`hwflow.numerics.group_multipliers`). RTN and search snap their
    group scales and re-round the codes; GPTQ runs twice (see the module docstring)."""
    codes, scales = quantize(method, w, bits, mask, group, calib)
    gmult, unit = group_multipliers(_live_scales(codes, scales, group))
    if method in ("gptq", "gptq-search"):
        assert calib is not None  # quantize refused a missing calibration
        codes, scales = gptq(
            w, bits, calib, mask, group, clip_search=method == "gptq-search", unit=unit
        )
        gmult = np.rint(scales / unit[:, None]).astype(np.int64)
    else:
        wm = _check(w, bits, mask, group)
        snapped = np.repeat(gmult * unit[:, None], group, axis=1)
        codes = _codes(wm, snapped, bits)
    return codes, gmult, unit


def quantize(
    method: QuantMethod,
    w: np.ndarray,
    bits: int,
    mask: np.ndarray | None = None,
    group: int | None = None,
    calib: Calibration | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Quantize ``w`` with ``method``; returns (codes int8 [out, K], scales [out] or
    [out, K/group]). ``gptq`` needs ``calib``; ``search`` uses it when given."""
    if method not in QUANT_METHODS:
        raise ValueError(f"quant method {method!r} unknown (allowed: {', '.join(QUANT_METHODS)})")
    if method == "rtn":
        return rtn(w, bits, mask, group)
    if method == "search":
        return search(w, bits, mask, group, calib)
    if calib is None:
        raise ValueError(f"quant method {method!r} needs calibration data")
    return gptq(w, bits, calib, mask, group, clip_search=method == "gptq-search")
