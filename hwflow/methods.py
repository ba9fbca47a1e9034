"""A plan's ``method:`` applied to one linear layer: prune N:M, then quantize to INT\\ *b*.

The seam between the plan (:class:`hwflow.config.CompressionMethod`, :class:`LinearQuant`)
and the numerics of :mod:`hwflow.prune` and :mod:`hwflow.wquant`. With the default method
(magnitude, rtn, no group) the result is exactly ``numerics.nm_prune_mask`` followed by
``numerics.quantize_weight``, i.e. today's compression.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hwflow.calib import Calibration
from hwflow.config import CompressionMethod, LinearQuant
from hwflow.prune import prune
from hwflow.wquant import quantize

__all__ = ["CompressedWeight", "compress_weight", "needs_calibration"]


@dataclass(frozen=True)
class CompressedWeight:
    """``codes`` int8 [out, K] (0 where pruned), ``scales`` [out] or [out, K/group], ``keep``
    the N:M keep-mask (all True when dense)."""

    codes: np.ndarray
    scales: np.ndarray
    keep: np.ndarray


def needs_calibration(method: CompressionMethod) -> bool:
    """Whether ``method`` reads the statistics of the layer inputs (so the caller runs the
    calibration text layer by layer): everything but magnitude + RTN without smoothing.
    ``search`` runs without them too (plain MSE) but weighs the error by them when given."""
    return method.prune != "magnitude" or method.quant != "rtn" or method.smooth is not None


def compress_weight(
    w: np.ndarray,
    lq: LinearQuant,
    method: CompressionMethod | None = None,
    calib: Calibration | None = None,
) -> CompressedWeight:
    """Prune ``w[out, K]`` ``lq.n:lq.m`` with ``method.prune`` (dense: untouched), then
    quantize the result to ``lq.bits`` with ``method.quant`` and ``method.group``, pruned
    weights staying 0. SmoothQuant (``method.smooth``) is applied by the caller before this,
    where the factors fold (:mod:`hwflow.smooth`). ValueError if a data-aware method has no
    ``calib``."""
    method = method or CompressionMethod()
    pruned, keep = prune(method.prune, w, lq.n, lq.m, calib)
    codes, scales = quantize(
        method.quant, pruned, lq.bits, None if lq.dense else keep, method.group, calib
    )
    return CompressedWeight(codes=codes, scales=scales, keep=keep)
