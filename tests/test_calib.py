"""Calibration statistics and the OBS column sweep, against closed forms."""

import numpy as np
import pytest

from hwflow.calib import Calibration, hessian_factor, obs_sweep


def _correlated(rng, tokens, k):
    mix = rng.normal(size=(k, k)) / np.sqrt(k) * 1.5 + np.eye(k)
    return rng.normal(size=(tokens, k)) @ mix


def _damped(h, percdamp=0.01):
    return h + percdamp * np.mean(np.diag(h)) * np.eye(len(h))


def test_calibration_statistics_and_merge():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 6))
    c = Calibration.of(x)
    flat = x.reshape(10, 6)
    assert c.tokens == 10 and c.dim == 6
    np.testing.assert_allclose(c.col_norm, np.linalg.norm(flat, axis=0))
    np.testing.assert_allclose(c.absmax, np.abs(flat).max(axis=0))
    np.testing.assert_allclose(c.hessian, 2 * flat.T @ flat / 10)
    both = Calibration.of(x[0]) + Calibration.of(x[1])
    np.testing.assert_allclose(both.xtx, c.xtx)
    np.testing.assert_array_equal(both.absmax, c.absmax)
    assert both.tokens == 10


def test_calibration_bad_input():
    with pytest.raises(ValueError, match="no tokens"):
        Calibration.of(np.zeros((0, 4)))
    with pytest.raises(ValueError, match="non-finite"):
        Calibration.of(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="4 and 3 channels"):
        Calibration.of(np.ones((2, 4))) + Calibration.of(np.ones((2, 3)))


@pytest.mark.parametrize("k", [24, 131, 300])  # 131 and 300: the blocked inverse recurses
def test_hessian_factor_is_upper_cholesky_of_damped_inverse(k):
    rng = np.random.default_rng(1)
    h = Calibration.of(_correlated(rng, 2 * k, k)).hessian
    u, dead = hessian_factor(h)
    assert not dead.any()
    assert np.allclose(u, np.triu(u)) and np.all(np.diag(u) > 0)
    np.testing.assert_allclose(u.T @ u, np.linalg.inv(_damped(h)), rtol=1e-9, atol=1e-12)


def test_factor_is_computed_once_per_calibration():
    calib = Calibration.of(np.random.default_rng(4).normal(size=(40, 8)))
    u, _ = calib.factor()
    assert calib.factor()[0] is u
    np.testing.assert_array_equal(u, hessian_factor(calib.hessian)[0])
    assert not u.flags.writeable
    assert calib.factor(0.1)[0] is not u


def test_hessian_factor_dead_inputs():
    x = np.random.default_rng(2).normal(size=(32, 5))
    x[:, 3] = 0
    h = Calibration.of(x).hessian
    u, dead = hessian_factor(h)
    np.testing.assert_array_equal(dead, [False, False, False, True, False])
    fixed = h.copy()
    fixed[3, 3] = 1.0
    np.testing.assert_allclose(u.T @ u, np.linalg.inv(_damped(fixed)), rtol=1e-9)


def test_hessian_factor_not_positive_definite():
    with pytest.raises(ValueError, match="not positive definite"):
        hessian_factor(np.array([[1.0, 2.0], [2.0, 1.0]]), percdamp=0.0)


@pytest.mark.parametrize(("blocksize", "inner"), [(4, 2), (8, 8), (128, 16)])
def test_obs_sweep_equals_closed_form_least_squares(blocksize, inner):
    """Fixing the first s columns to 0 and keeping the rest: the sweep must give the
    least-squares optimum ``w_R + H_RR^-1 H_RS w_S`` (OBS removal of a set, path-independent)
    whatever the block and group sizes."""
    rng = np.random.default_rng(3)
    k, s = 20, 7
    h = Calibration.of(_correlated(rng, 80, k)).hessian
    w = rng.normal(size=(5, k))
    u, _ = hessian_factor(h)
    out = obs_sweep(
        w,
        u,
        lambda j, cols, d: None,
        lambda j, col: np.zeros_like(col) if j < s else col.copy(),
        blocksize=blocksize,
        inner=inner,
    )
    hd = _damped(h)
    want = w[:, s:] + (np.linalg.solve(hd[s:, s:], hd[s:, :s]) @ w[:, :s].T).T
    np.testing.assert_array_equal(out[:, :s], 0.0)
    np.testing.assert_allclose(out[:, s:], want, rtol=1e-9, atol=1e-9)


def test_obs_sweep_block_must_hold_whole_groups():
    with pytest.raises(ValueError, match="not a multiple of inner 16"):
        obs_sweep(np.ones((1, 4)), np.eye(4), None, None, blocksize=24, inner=16)  # type: ignore[arg-type]
