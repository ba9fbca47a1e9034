"""Calibration statistics of a linear layer's input, and the OBS column sweep built on them.

The compression methods that look at data (Wanda, SparseGPT, GPTQ, scale search, SmoothQuant)
need only three statistics of the input ``X[tokens, K]`` of a linear layer: ``X^T X`` (the
Hessian of the layer's squared output error), the per-channel L2 norm and the per-channel
maximum magnitude. :class:`Calibration` holds them, so a caller runs the calibration text once
per layer input and hands the same object to every linear that reads that input (q/k/v share
one, gate/up share one).

:func:`obs_sweep` is the Optimal Brain Surgeon column sweep that SparseGPT (Frantar & Alistarh,
"SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot", ICML 2023, Alg. 1)
and GPTQ (Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers", ICLR 2023, Alg. 1) share: columns are fixed left to right and each
one's error is spread over the columns not yet fixed through the upper Cholesky factor of
``H^-1``. It follows the reference code (IST-DASLab/sparsegpt ``sparsegpt.py`` ``fasterprune``;
IST-DASLab/gptq ``gptq.py`` ``fasterquant``): dead inputs zeroed, dampening ``percdamp *
mean(diag H)``, lazy batched updates per block of columns. It adds one more level of lazy
batching (a block is swept in groups of ``inner`` columns, the rank-1 updates stay inside the
group and the rest of the block gets one matrix product per group), which is exact
reassociation and makes the pure-numpy sweep fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Calibration", "hessian_factor", "obs_sweep"]

PERCDAMP = 0.01  #: dampening as a fraction of mean(diag H), the reference code's default
BLOCKSIZE = 128  #: columns per lazy-update block, the reference code's default


@dataclass(frozen=True)
class Calibration:
    """Statistics of one linear layer's input over ``tokens`` calibration tokens.

    ``xtx`` is ``X^T X`` [K, K] (float64), ``absmax`` is ``max_t |X[t, j]|`` [K].
    """

    xtx: np.ndarray
    absmax: np.ndarray
    tokens: int
    _factors: dict[float, tuple[np.ndarray, np.ndarray]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def of(cls, x: np.ndarray) -> Calibration:
        """Statistics of the activations ``x[..., K]`` (leading axes are tokens)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim < 1 or x.shape[-1] == 0:
            raise ValueError(f"calibration input needs a feature axis, got shape {x.shape}")
        x = x.reshape(-1, x.shape[-1])
        if x.shape[0] == 0:
            raise ValueError("calibration input holds no tokens")
        if not np.all(np.isfinite(x)):
            raise ValueError("calibration input holds non-finite values")
        return cls(xtx=x.T @ x, absmax=np.abs(x).max(axis=0), tokens=x.shape[0])

    def __add__(self, other: Calibration) -> Calibration:
        """Statistics of both token sets (for calibration text run in batches)."""
        if other.xtx.shape != self.xtx.shape:
            raise ValueError(f"cannot merge calibrations of {self.dim} and {other.dim} channels")
        return Calibration(
            xtx=self.xtx + other.xtx,
            absmax=np.maximum(self.absmax, other.absmax),
            tokens=self.tokens + other.tokens,
        )

    @property
    def dim(self) -> int:
        """Number of input channels K."""
        return self.xtx.shape[0]

    @property
    def hessian(self) -> np.ndarray:
        """``H = 2 X^T X / tokens``: the reference code's normalisation (the scale cancels in
        every method; it only keeps magnitudes independent of the token count)."""
        return 2.0 * self.xtx / self.tokens

    def factor(self, percdamp: float = PERCDAMP) -> tuple[np.ndarray, np.ndarray]:
        """:func:`hessian_factor` of :attr:`hessian`, computed once per ``percdamp`` and shared
        by the linears that read this input (q/k/v, gate/up). Read-only arrays."""
        if percdamp not in self._factors:
            u, dead = hessian_factor(self.hessian, percdamp)
            u.flags.writeable = dead.flags.writeable = False
            self._factors[percdamp] = (u, dead)
        return self._factors[percdamp]

    @property
    def col_norm(self) -> np.ndarray:
        """``||X[:, j]||_2`` per input channel (Wanda's activation norm)."""
        return np.sqrt(np.maximum(np.diag(self.xtx), 0.0))


def hessian_factor(h: np.ndarray, percdamp: float = PERCDAMP) -> tuple[np.ndarray, np.ndarray]:
    """(U, dead): ``U`` upper triangular with ``U^T U = (H + damp I)^-1`` and ``dead`` the inputs
    with ``H_jj = 0`` (their diagonal set to 1 first, as the reference does).

    ``damp = percdamp * mean(diag H)``. Computed from the Cholesky factor of the index-reversed
    matrix: if ``J H J = L L^T`` then ``U = J L^-1 J`` (one factorisation, one triangular
    inverse). ValueError if H is not positive definite after dampening.
    """
    h = np.array(h, dtype=np.float64)
    if h.ndim != 2 or h.shape[0] != h.shape[1]:
        raise ValueError(f"Hessian must be square, got shape {h.shape}")
    if not np.all(np.isfinite(h)):
        raise ValueError("Hessian holds non-finite values")
    if percdamp < 0:
        raise ValueError(f"percdamp {percdamp!r} must be >= 0")
    idx = np.arange(h.shape[0])
    dead = h[idx, idx] == 0
    h[idx[dead], idx[dead]] = 1.0
    h[idx, idx] += percdamp * h[idx, idx].mean()
    try:
        low = np.linalg.cholesky(h[::-1, ::-1])
    except np.linalg.LinAlgError:
        raise ValueError(
            f"Hessian is not positive definite after dampening (percdamp {percdamp}); "
            "use more calibration tokens or a larger percdamp"
        ) from None
    inv = _inv_lower(low)
    return np.ascontiguousarray(inv[::-1, ::-1]), dead


def _inv_lower(low: np.ndarray) -> np.ndarray:
    """Inverse of a lower-triangular matrix by 2x2 blocks, ``[[A, 0], [C, D]]^-1 =
    [[A^-1, 0], [-D^-1 C A^-1, D^-1]]``: matrix products only, about a third of the work of
    a general inverse (numpy has no triangular solver)."""
    k = low.shape[0]
    if k <= 64:
        return np.tril(np.linalg.inv(low))
    h = k // 2
    ai, di = _inv_lower(low[:h, :h]), _inv_lower(low[h:, h:])
    out = np.zeros_like(low)
    out[:h, :h], out[h:, h:] = ai, di
    out[h:, :h] = -(di @ (low[h:, :h] @ ai))
    return out


#: ``on_group(j, cols, d)`` is told that columns j.. (``cols``, compensated so far) start; d is
#: their diagonal of U. ``on_column(j, col) -> q`` returns the value column j is fixed to.
GroupHook = Callable[[int, np.ndarray, np.ndarray], None]
ColumnHook = Callable[[int, np.ndarray], np.ndarray]


def obs_sweep(
    w: np.ndarray,
    u: np.ndarray,
    on_group: GroupHook,
    on_column: ColumnHook,
    blocksize: int = BLOCKSIZE,
    inner: int = 16,
) -> np.ndarray:
    """Fix the columns of ``w[rows, K]`` left to right and return the fixed matrix.

    Column j is replaced by ``q = on_column(j, w_j)``; its error ``(w_j - q) / U_jj`` is
    subtracted, times row j of ``U``, from the columns after it (OBS: the least-squares
    compensation under the Hessian whose inverse factor is ``u``). ``on_group`` sees each run
    of ``inner`` columns, compensated, before the first of them is fixed (SparseGPT chooses
    its N:M mask there, GPTQ its group scale). ``blocksize`` must be a multiple of ``inner``.
    """
    if blocksize % inner:
        raise ValueError(f"blocksize {blocksize} is not a multiple of inner {inner}")
    wt = np.array(np.asarray(w, dtype=np.float64).T, order="C")  # [K, rows]: columns contiguous
    k = wt.shape[0]
    out = np.zeros_like(wt)
    for i1 in range(0, k, blocksize):
        i2 = min(i1 + blocksize, k)
        blk = wt[i1:i2]  # a view: the block is compensated in place
        u1 = u[i1:i2, i1:i2]
        err = np.empty_like(blk)
        for j1 in range(0, i2 - i1, inner):
            j2 = min(j1 + inner, i2 - i1)
            on_group(i1 + j1, blk[j1:j2].T, np.diag(u1)[j1:j2])
            for j in range(j1, j2):
                q = on_column(i1 + j, blk[j])
                out[i1 + j] = q
                err[j] = (blk[j] - q) / u1[j, j]
                blk[j + 1 : j2] -= np.outer(u1[j, j + 1 : j2], err[j])
            blk[j2:] -= u1[j1:j2, j2:].T @ err[j1:j2]
        wt[i2:] -= u[i1:i2, i2:].T @ err
    return np.ascontiguousarray(out.T)
