"""SmoothQuant: move activation outliers into the weights before INT8 quantization.

Xiao, Lin, Seznec, Wu, Demouth & Han, "SmoothQuant: Accurate and Efficient Post-Training
Quantization for Large Language Models", ICML 2023, arXiv:2211.10438, Eq. 4:
``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)`` per input channel j, then ``Y = (X / s) (s W^T)``
is unchanged in real arithmetic while ``X / s`` has flatter channels (easier per-tensor INT8)
and ``W * s`` absorbs them (per-output-channel weight scales cope). ``max|W_j|`` is taken over
every linear that reads the same input (q/k/v together, gate/up together), as the reference
code does (mit-han-lab/smoothquant ``smooth.py`` ``smooth_ln_fcs``); the paper calls alpha 0.5
"a well-balanced point" (Sec. 3) and raises it for models with larger outliers.

Where the factors fold (so the accelerator runs no extra operation):

* input of q/k/v (after the attention norm) and of gate/up or fc1 (after the MLP norm): in
  HF models ``1/s`` divides the norm's gain (and LayerNorm's bias), the reference code's
  placement. hwflow folds the gain into the linears (``compress.fold_norms``) and runs a
  unit-gain norm, so its linears read ``x / rms(x)``: compute ``s`` from that input's
  ``absmax`` and the folded weights ``W * g``, multiply the folded weights by ``s``, and put
  ``1/s`` into the norm's output requantization as a per-channel multiplier
  (``numerics.requantize`` broadcasts ``mult`` over the last axis).
* input of o (attention output): ``1/s`` folds into the rows of v (per head channel; the
  attention probabilities mix tokens, not channels), and of down (gated MLP): into the rows
  of up (``silu(g) * u / s``). The reference applies SmoothQuant to q/k/v and fc1 only.

:func:`smooth_factors` and :func:`apply_smoothing` are the numerics; the caller decides where
each factor folds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["FLOOR", "apply_smoothing", "qk_factors", "smooth_factors"]

FLOOR = 1e-5  #: lower clamp of max|W_j| and of s_j, as in the reference code


def smooth_factors(
    act_absmax: np.ndarray, weights: Sequence[np.ndarray], alpha: float = 0.5
) -> np.ndarray:
    """``s[K]`` for the linears ``weights`` (each [out, K]) reading an input whose per-channel
    maximum magnitude over the calibration tokens is ``act_absmax[K]``.

    Guards: ``max|W_j|`` and ``s`` are clamped below at :data:`FLOOR`; a channel that never
    fires (``act_absmax`` 0) keeps ``s = 1`` (there is nothing to move).
    """
    a = np.asarray(act_absmax, dtype=np.float64)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"SmoothQuant alpha {alpha!r} must be in [0, 1]")
    if a.ndim != 1 or not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError("act_absmax must be a 1-D array of finite magnitudes >= 0")
    if not weights:
        raise ValueError("smoothing needs at least one weight matrix")
    for w in weights:
        if np.ndim(w) != 2 or np.shape(w)[1] != a.size:
            raise ValueError(f"weight shape {np.shape(w)} does not read {a.size} input channels")
    wmax = np.max([np.abs(np.asarray(w, dtype=np.float64)).max(axis=0) for w in weights], axis=0)
    s = a**alpha / np.maximum(wmax, FLOOR) ** (1.0 - alpha)
    return np.where(a > 0, np.maximum(s, FLOOR), 1.0)


def apply_smoothing(
    x: np.ndarray | None, weights: Sequence[np.ndarray], s: np.ndarray
) -> tuple[np.ndarray | None, list[np.ndarray]]:
    """``(x / s, [w * s ...])``: the smoothed input (None passes through) and weights; every
    product ``x @ w.T`` is unchanged up to rounding."""
    s = np.asarray(s, dtype=np.float64)
    xs = None if x is None else np.asarray(x, dtype=np.float64) / s
    return xs, [np.asarray(w, dtype=np.float64) * s[None, :] for w in weights]


def qk_factors(k_absmax: np.ndarray, q_absmax: np.ndarray, rotate_half: bool) -> np.ndarray:
    """Per-channel factors ``lam[hd]`` of one KV head's scores ``q . k``: ``q * lam`` and
    ``k / lam`` leave every score unchanged while the two INT8 operands get balanced channel
    ranges, ``max|q_c * lam_c| = max|k_c / lam_c|``.

    This is :func:`smooth_factors` at alpha 0.5 with K as the activation and Q as the weight
    (SmoothQuant Eq. 4 applied to the attention product, as QServe's *SmoothAttention* does:
    Lin et al., "QServe: W4A8KV4 Quantization and System Co-design for Efficient LLM Serving",
    arXiv:2405.04532). ``q_absmax`` is the maximum over the query heads sharing the KV head
    (GQA). With RoPE (``rotate_half``) channels ``c`` and ``c + hd/2`` rotate into each other,
    so they take one factor from their joint maxima (QServe's RoPE constraint).
    Why: trained LLaMA models put attention-sink channels into q and k (one channel of a head
    thousands of times the others); one INT8 scale per head then either clips the sink or
    rounds the ordinary channels away, and the scores carry the error (hwflow.numerics).
    """
    k = np.asarray(k_absmax, dtype=np.float64)
    q = np.asarray(q_absmax, dtype=np.float64)
    if rotate_half:
        k, q = (np.maximum(t, np.roll(t, t.size // 2)) for t in (k, q))
    return smooth_factors(k, [q[None, :]], 0.5)
