"""SmoothQuant factors: the formula per channel, guards, exactness, and the INT8 gain."""

import numpy as np
import pytest

from hwflow.smooth import FLOOR, apply_smoothing, smooth_factors


def _outlier_acts(rng, tokens, k):
    """Activations with a few channels 50x the rest (LLM-style outlier channels)."""
    x = rng.normal(size=(tokens, k))
    x[:, [3, 17, 40]] *= 50.0
    return x


def test_factors_brute_force():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.1, 20.0, size=12)
    w1, w2 = rng.normal(size=(5, 12)), rng.normal(size=(7, 12))
    for alpha in (0.0, 0.5, 0.8, 1.0):
        s = smooth_factors(a, [w1, w2], alpha)
        for j in range(12):
            wmax = max(abs(w1[:, j]).max(), abs(w2[:, j]).max())
            assert s[j] == pytest.approx(a[j] ** alpha / wmax ** (1 - alpha), rel=1e-12)


def test_factors_guards():
    a = np.array([0.0, 2.0, 1e-30, 4.0])
    w = np.array([[1.0, 0.0, 1.0, 2.0]])
    s = smooth_factors(a, [w], 0.5)
    assert s[0] == 1.0  # a channel that never fires is left alone
    assert s[1] == pytest.approx(np.sqrt(2.0) / np.sqrt(FLOOR))  # zero weight column clamped
    assert s[2] == FLOOR  # tiny factor clamped
    assert np.all(np.isfinite(s)) and np.all(s > 0)


def test_bad_input():
    w = np.ones((2, 3))
    with pytest.raises(ValueError, match=r"alpha 1\.5 must be in"):
        smooth_factors(np.ones(3), [w], 1.5)
    with pytest.raises(ValueError, match=r"weight shape \(2, 3\) does not read 4"):
        smooth_factors(np.ones(4), [w], 0.5)
    with pytest.raises(ValueError, match="finite magnitudes"):
        smooth_factors(np.array([1.0, -1.0, 1.0]), [w], 0.5)


def test_smoothing_is_exact_and_helps_int8_activations():
    rng = np.random.default_rng(1)
    x = _outlier_acts(rng, 256, 64)
    ws = [rng.normal(size=(32, 64)), rng.normal(size=(48, 64))]
    s = smooth_factors(np.abs(x).max(axis=0), ws, 0.5)
    xs, wss = apply_smoothing(x, ws, s)
    for w, w2 in zip(ws, wss, strict=True):
        np.testing.assert_allclose(xs @ w2.T, x @ w.T, rtol=1e-10, atol=1e-9)

    def int8_err(xa, wa, w_ref):
        """Per-tensor INT8 activations, per-channel INT8 weights, error of the product."""
        sx = np.abs(xa).max() / 127
        sw = np.abs(wa).max(axis=1, keepdims=True) / 127
        y = (np.rint(xa / sx) * sx) @ (np.rint(wa / sw) * sw).T
        ref = x @ w_ref.T
        return np.linalg.norm(y - ref) / np.linalg.norm(ref)

    before = int8_err(x, ws[0], ws[0])
    after = int8_err(xs, wss[0], ws[0])
    assert after < 0.5 * before, (after, before)
    assert xs is not None and apply_smoothing(None, ws, s)[0] is None


def test_qk_factors_hand_computed():
    """lam = sqrt(max|K_c| / max|Q_c|); a channel K never uses keeps 1; with RoPE the pairs
    (c, c + hd/2) share the factor of their joint maxima."""
    from hwflow.smooth import qk_factors

    k = np.array([4.0, 1.0, 9.0, 0.0])
    q = np.array([1.0, 4.0, 1.0, 2.0])
    np.testing.assert_allclose(qk_factors(k, q, rotate_half=False), [2.0, 0.5, 3.0, 1.0])
    # pairs (0, 2) and (1, 3): k -> [9, 1, 9, 1], q -> [1, 4, 1, 4]
    np.testing.assert_allclose(qk_factors(k, q, rotate_half=True), [3.0, 0.5, 3.0, 0.5])
