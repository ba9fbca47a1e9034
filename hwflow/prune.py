"""N:M pruning of a linear layer's float weights ``w[out, K]`` along the reduction axis K.

In every aligned group of M consecutive inputs of a row exactly N weights are kept (the
layout :func:`hwflow.numerics.nm_compress` stores); the methods differ in which N:

* ``magnitude``: the N largest ``|W_ij|`` (:func:`hwflow.numerics.nm_prune_mask`).
* ``wanda``: the N largest ``|W_ij| * ||X_j||_2`` over the calibration tokens (Sun, Liu, Bair &
  Kolter, "A Simple and Effective Pruning Approach for Large Language Models", ICLR 2024,
  arXiv:2306.11695, Eq. 1, compared per group of M for N:M). No weight update.
* ``sparsegpt``: OBS with the calibration Hessian (Frantar & Alistarh, ICML 2023,
  arXiv:2301.00774, Alg. 1 and its N:M extension): columns are swept left to right; at
  the start of each group of M columns the N largest OBS saliencies ``w_j^2 / [H_F^-1]_jj``
  (F the columns from j on, w compensated so far; the reference writes it ``w^2 / U_jj^2``
  with U the Cholesky factor of ``H^-1``) are kept, and each pruned weight's error is spread
  over the columns not yet swept (:func:`hwflow.calib.obs_sweep`).

Ties go to the lower index in every method (the scores are ranked by ``nm_prune_mask``).
Each function returns ``(pruned float64 weights, keep-mask)``; pruned weights are exactly 0.
"""

from __future__ import annotations

from typing import get_args

import numpy as np

from hwflow.calib import BLOCKSIZE, PERCDAMP, Calibration, obs_sweep
from hwflow.config import PruneMethod
from hwflow.numerics import nm_prune_mask

__all__ = ["PRUNE_METHODS", "magnitude", "prune", "sparsegpt", "wanda"]

PRUNE_METHODS: tuple[str, ...] = get_args(PruneMethod)


def _check(w: np.ndarray, n: int, m: int) -> np.ndarray:
    """``w`` as float64 [out, K]; ValueError unless 1 <= n <= m and M divides K."""
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 2:
        raise ValueError(f"weights must be 2-D [out, K], got shape {w.shape}")
    if not 1 <= n <= m:
        raise ValueError(f"N:M sparsity needs 1 <= N <= M, got {n}:{m}")
    if w.shape[1] % m:
        raise ValueError(f"reduction length {w.shape[1]} is not a multiple of M = {m}")
    if not np.all(np.isfinite(w)):
        raise ValueError("weights hold non-finite values")
    return w


def _check_calib(w: np.ndarray, calib: Calibration) -> None:
    if calib.dim != w.shape[1]:
        raise ValueError(
            f"calibration has {calib.dim} input channels, the weights {w.shape[1]} (K)"
        )


def magnitude(w: np.ndarray, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the N largest magnitudes of every group of M (today's method)."""
    w = _check(w, n, m)
    keep = nm_prune_mask(w, n, m)
    return np.where(keep, w, 0.0), keep


def wanda(w: np.ndarray, n: int, m: int, calib: Calibration) -> tuple[np.ndarray, np.ndarray]:
    """Keep the N largest ``|W_ij| * ||X_j||_2`` of every group of M; kept weights unchanged."""
    w = _check(w, n, m)
    _check_calib(w, calib)
    keep = nm_prune_mask(np.abs(w) * calib.col_norm[None, :], n, m)
    return np.where(keep, w, 0.0), keep


def sparsegpt(
    w: np.ndarray,
    n: int,
    m: int,
    calib: Calibration,
    percdamp: float = PERCDAMP,
    blocksize: int = BLOCKSIZE,
) -> tuple[np.ndarray, np.ndarray]:
    """SparseGPT N:M pruning: mask by ``|w_j| / U_jj`` per group, OBS update of the rest.

    ``U`` is the upper Cholesky factor of ``(H + damp I)^-1``; ``U_jj^2 = [H_F^-1]_jj`` for F
    the columns from j on, so ``|w_j| / U_jj`` ranks as the OBS saliency. Inputs that never fire in the
    calibration data (``H_jj = 0``) have their weights zeroed first, as the reference does.
    """
    w = _check(w, n, m)
    _check_calib(w, calib)
    u, dead = calib.factor(percdamp)
    w = np.where(dead[None, :], 0.0, w)
    keep = np.zeros(w.shape, dtype=bool)

    def on_group(j: int, cols: np.ndarray, d: np.ndarray) -> None:
        keep[:, j : j + m] = nm_prune_mask(cols / d[None, :], n, m)

    def on_column(j: int, col: np.ndarray) -> np.ndarray:
        return np.where(keep[:, j], col, 0.0)

    block = max(m, blocksize - blocksize % m)
    pruned = obs_sweep(w, u, on_group, on_column, blocksize=block, inner=m)
    return pruned, keep


def prune(
    method: PruneMethod,
    w: np.ndarray,
    n: int,
    m: int,
    calib: Calibration | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Prune ``w`` N:M with ``method``; dense (n == m) returns ``w`` and an all-True mask.

    ``wanda`` and ``sparsegpt`` need ``calib`` (the statistics of the layer's input).
    """
    if method not in PRUNE_METHODS:
        raise ValueError(f"prune method {method!r} unknown (allowed: {', '.join(PRUNE_METHODS)})")
    w = _check(w, n, m)
    if n == m:
        return w.copy(), np.ones(w.shape, dtype=bool)
    if method == "magnitude":
        return magnitude(w, n, m)
    if calib is None:
        raise ValueError(f"prune method {method!r} needs calibration data")
    if method == "wanda":
        return wanda(w, n, m, calib)
    return sparsegpt(w, n, m, calib)
