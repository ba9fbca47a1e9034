"""N:M pruning methods: exact masks, brute-force scores, and SparseGPT against naive OBS."""

import json

import numpy as np
import pytest

from hwflow.calib import Calibration
from hwflow.numerics import nm_prune_mask
from hwflow.prune import PRUNE_METHODS, magnitude, prune, sparsegpt, wanda

PERCDAMP = 0.01


def _correlated(rng, tokens, k):
    """Activations of low effective rank (rank k/4 plus noise: strongly correlated channels,
    as in trained LLMs) with unequal channel scales: where data-aware pruning must win."""
    low = rng.normal(size=(tokens, k // 4)) @ rng.normal(size=(k // 4, k))
    return (low + 0.3 * rng.normal(size=(tokens, k))) * rng.uniform(0.2, 3.0, size=k)


def _rel_err(x, w, w2):
    ref = x @ w.T
    return np.linalg.norm(ref - x @ w2.T) / np.linalg.norm(ref)


def _keep_top(scores, n, m):
    """Brute force: in each group keep the n highest scores, lower index first on ties."""
    rows, k = scores.shape
    keep = np.zeros((rows, k), dtype=bool)
    for r in range(rows):
        for g in range(0, k, m):
            order = sorted(range(g, g + m), key=lambda j: (-scores[r, j], j))
            keep[r, order[:n]] = True
    return keep


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    x = _correlated(rng, 256, 128)
    w = rng.normal(size=(48, 128))
    return x, w, Calibration.of(x)


@pytest.mark.parametrize("method", PRUNE_METHODS)
@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 16), (1, 8), (8, 16)])
def test_exactly_n_of_m_and_pruned_exactly_zero(data, method, n, m):
    _, w, calib = data
    pruned, keep = prune(method, w, n, m, calib)
    assert keep.dtype == bool and keep.shape == w.shape
    assert np.all(keep.reshape(48, -1, m).sum(axis=-1) == n)
    assert np.all(pruned[~keep] == 0.0)
    if method != "sparsegpt":  # only SparseGPT updates the kept weights
        np.testing.assert_array_equal(pruned[keep], w[keep])


def test_magnitude_is_numerics_mask(data):
    _, w, _ = data
    _, keep = magnitude(w, 4, 16)
    np.testing.assert_array_equal(keep, nm_prune_mask(w, 4, 16))
    np.testing.assert_array_equal(keep, _keep_top(np.abs(w), 4, 16))


def test_wanda_keeps_top_n_of_weight_times_activation_norm(data):
    x, w, calib = data
    _, keep = wanda(w, 4, 16, calib)
    norms = np.sqrt((x**2).sum(axis=0))
    np.testing.assert_array_equal(keep, _keep_top(np.abs(w) * norms, 4, 16))
    assert not np.array_equal(keep, nm_prune_mask(w, 4, 16))  # the activations matter


def test_wanda_ties_go_to_the_lower_index():
    w = np.array([[1.0, -2.0, 2.0, 1.0, 4.0, 1.0, 1.0, 0.5]])
    calib = Calibration.of(np.array([[1.0, 1.0, 1.0, 2.0, 0.5, 2.0, 2.0, 1.0]]))
    _, keep = wanda(w, 2, 4, calib)
    # scores 1,2,2,2 | 2,2,2,0.5: keep indices 1,2 and 4,5
    np.testing.assert_array_equal(keep[0], [0, 1, 1, 0, 1, 1, 0, 0])


def _naive_sparsegpt(w, h, n, m):
    """SparseGPT written from the paper with explicit inverses (no Cholesky, no lazy batches):
    at a group start keep the n largest OBS saliencies w_j^2 / [H_F^-1]_jj (F = the columns
    from j on),
    then fix each column and apply the OBS update over F."""
    k = w.shape[1]
    hd = h + PERCDAMP * np.mean(np.diag(h)) * np.eye(k)
    w = w.copy()
    keep = np.zeros(w.shape, dtype=bool)
    for j in range(k):
        hinv = np.linalg.inv(hd[j:, j:])
        if j % m == 0:
            d = np.array([np.linalg.inv(hd[i:, i:])[0, 0] for i in range(j, j + m)])
            keep[:, j : j + m] = _keep_top(w[:, j : j + m] ** 2 / d, n, m)
        err = np.where(keep[:, j], 0.0, w[:, j])
        w[:, j:] -= np.outer(err / hinv[0, 0], hinv[0])
        w[:, j] = np.where(keep[:, j], w[:, j], 0.0)
    return w, keep


def test_sparsegpt_equals_naive_obs():
    rng = np.random.default_rng(11)
    x = _correlated(rng, 96, 32)
    w = rng.normal(size=(6, 32))
    calib = Calibration.of(x)
    got, keep = sparsegpt(w, 2, 8, calib, blocksize=16)
    want, want_keep = _naive_sparsegpt(w, calib.hessian, 2, 8)
    np.testing.assert_array_equal(keep, want_keep)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_sparsegpt_with_identity_hessian_is_magnitude(data):
    _, w, _ = data
    k = w.shape[1]
    ident = Calibration(xtx=np.eye(k) * 50.0, absmax=np.ones(k), tokens=100)
    got, keep = sparsegpt(w, 4, 16, ident)
    want, want_keep = magnitude(w, 4, 16)
    np.testing.assert_array_equal(keep, want_keep)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_sparsegpt_beats_magnitude_and_wanda_on_correlated_data(data):
    x, w, calib = data
    errs = {meth: _rel_err(x, w, prune(meth, w, 4, 16, calib)[0]) for meth in PRUNE_METHODS}
    assert errs["sparsegpt"] < 0.75 * errs["wanda"], errs
    assert errs["wanda"] < 0.9 * errs["magnitude"], errs


def test_sparsegpt_dead_inputs_zeroed(data):
    x, w, _ = data
    x = x.copy()
    x[:, 5] = 0.0
    pruned, keep = sparsegpt(w, 4, 16, Calibration.of(x))
    assert np.all(pruned[:, 5] == 0.0)
    assert np.all(keep.reshape(48, -1, 16).sum(axis=-1) == 4)


def test_deterministic(data):
    x, w, calib = data
    a = sparsegpt(w, 2, 4, calib)
    b = sparsegpt(w.copy(), 2, 4, Calibration.of(x.copy()))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_dense_returns_weights_unchanged(data):
    _, w, calib = data
    pruned, keep = prune("sparsegpt", w, 16, 16, calib)
    assert keep.all()
    np.testing.assert_array_equal(pruned, w)


def test_bad_input(data):
    _, w, _ = data
    with pytest.raises(ValueError, match="not a multiple of M = 3"):
        prune("magnitude", w, 1, 3)
    with pytest.raises(ValueError, match="1 <= N <= M, got 5:4"):
        prune("magnitude", w, 5, 4)
    with pytest.raises(ValueError, match="'obs' unknown"):
        prune("obs", w, 2, 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'wanda' needs calibration"):
        prune("wanda", w, 2, 4)
    with pytest.raises(ValueError, match="calibration has 64 input channels, the weights 128"):
        sparsegpt(w, 2, 4, Calibration.of(np.ones((4, 64))))


def test_bench_prune_runs_on_tiny(capsys):
    from hwflow.cli import main

    args = ["bench", "prune", "--model", "tiny-llama", "--layers", "1", "--tokens", "64"]
    assert main([*args, "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    err = r["mean_rel_output_error"]
    assert set(err) == {f"prune:{p}" for p in PRUNE_METHODS} | {
        "quant:rtn",
        "quant:search",
        "quant:gptq",
        "quant:gptq-search",
    }
    assert err["prune:sparsegpt"] < err["prune:magnitude"]
    assert err["quant:gptq"] < err["quant:rtn"]
    assert r["seconds"]["prune:sparsegpt"] > 0 and r["linear_params"] > 0
    assert main([*args, "--group", "48"]) == 2
    assert "--group 48 does not divide q's reduction length 64" in capsys.readouterr().err
