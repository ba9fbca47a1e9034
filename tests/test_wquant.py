"""Weight quantization methods: RTN is numerics' rule, search and GPTQ beat it, GPTQ against
naive OBS, masks respected, codes in range."""

import numpy as np
import pytest

from hwflow.calib import Calibration
from hwflow.numerics import qmax, quantize_weight
from hwflow.prune import magnitude, sparsegpt
from hwflow.wquant import (
    CLIP_GRID,
    QUANT_METHODS,
    dequantize,
    gptq,
    quantize,
    quantize_grouped,
    rtn,
    search,
    search_scales,
)

PERCDAMP = 0.01


def _correlated(rng, tokens, k):
    """Low effective rank activations (rank k/4 plus noise) with unequal channel scales."""
    low = rng.normal(size=(tokens, k // 4)) @ rng.normal(size=(k // 4, k))
    return (low + 0.3 * rng.normal(size=(tokens, k))) * rng.uniform(0.2, 3.0, size=k)


def _rel_err(x, w, w2):
    ref = x @ w.T
    return np.linalg.norm(ref - x @ w2.T) / np.linalg.norm(ref)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(5)
    x = _correlated(rng, 256, 128)
    w = rng.normal(size=(64, 128))
    return x, w, Calibration.of(x)


def test_rtn_is_numerics_quantize_weight(data):
    _, w, _ = data
    for bits in (2, 3, 4, 8):
        codes, scale = rtn(w, bits)
        want_codes, want_scale = quantize_weight(w, bits)
        np.testing.assert_array_equal(codes, want_codes)
        np.testing.assert_array_equal(scale, want_scale)
    _, keep = magnitude(w, 2, 4)
    codes, scale = rtn(w, 4, keep)
    want_codes, want_scale = quantize_weight(w, 4, keep)
    np.testing.assert_array_equal(codes, want_codes)
    np.testing.assert_array_equal(scale, want_scale)


def test_rtn_groups_brute_force(data):
    _, w, _ = data
    codes, scales = rtn(w, 4, group=32)
    assert scales.shape == (64, 4)
    for r in range(64):
        for g in range(4):
            seg = w[r, 32 * g : 32 * (g + 1)]
            s = np.abs(seg).max() / 7
            assert scales[r, g] == s
            np.testing.assert_array_equal(codes[r, 32 * g : 32 * (g + 1)], np.rint(seg / s))


@pytest.mark.parametrize("method", QUANT_METHODS)
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group", [None, 32])
def test_codes_in_range_and_pruned_codes_zero(data, method, bits, group):
    _, w, calib = data
    _, keep = magnitude(w, 4, 16)
    codes, scales = quantize(method, w, bits, keep, group, calib)
    assert codes.dtype == np.int8 and codes.shape == w.shape
    assert np.abs(codes.astype(int)).max() <= qmax(bits)
    assert np.all(codes[~keep] == 0)
    assert scales.shape == ((64,) if group is None else (64, 128 // group))
    assert np.all(scales > 0)


def test_search_ratio_on_grid_and_never_worse_than_rtn(data):
    _, w, calib = data
    d = np.diag(calib.xtx)
    for bits in (3, 4):
        base = quantize_weight(w, bits)[1]
        codes, scale = search(w, bits, calib=calib)
        ratios = scale / base
        assert all(np.isclose(CLIP_GRID, r, rtol=0, atol=1e-12).any() for r in ratios)

        def err(c, s):
            return ((w - c * s[:, None]) ** 2) @ d

        e_search, e_rtn = err(codes, scale), err(*rtn(w, bits))
        assert np.all(e_search <= e_rtn + 1e-12)
        assert e_search.sum() < 0.9 * e_rtn.sum()


def test_search_all_zero_row_keeps_numerics_scale():
    w = np.zeros((2, 8))
    w[1] = np.linspace(-1, 1, 8)
    scale = search_scales(w, 4)
    assert scale[0] == 1.0  # every ratio ties at zero error: the first (RTN's) wins
    assert scale[1] <= 1 / 7


def test_search_scales_brute_force():
    rng = np.random.default_rng(3)
    w = rng.standard_t(df=3, size=(6, 40))  # heavy tails: clipping pays
    d = rng.uniform(0.5, 2.0, size=40)
    got = search_scales(w, 3, d)
    for r in range(6):
        m = np.abs(w[r]).max() / 3
        errs = [
            float(np.sum(d * (w[r] - q * m * np.clip(np.rint(w[r] / (q * m)), -3, 3)) ** 2))
            for q in CLIP_GRID
        ]
        assert got[r] == pytest.approx(CLIP_GRID[int(np.argmin(errs))] * m, rel=1e-12)
    assert np.any(got < np.abs(w).max(axis=1) / 3)  # some channel clips


def _naive_gptq(w, h, bits, scale=None, keep=None, group=None):
    """GPTQ from the paper with explicit inverses: quantize column j (0 where pruned), then
    the OBS update of the columns from j on. A fixed per-channel ``scale``, or with ``group``
    the scale ``max|kept w| / qmax`` of each group's compensated weights at its first column."""
    k = w.shape[1]
    hd = h + PERCDAMP * np.mean(np.diag(h)) * np.eye(k)
    keep = np.ones(w.shape, dtype=bool) if keep is None else keep
    w = np.where(keep, w, 0.0)
    q = qmax(bits)
    codes = np.zeros(w.shape, dtype=int)
    for j in range(k):
        if group is not None and j % group == 0:
            top = np.abs(np.where(keep[:, j : j + group], w[:, j : j + group], 0)).max(axis=1)
            scale = np.where(top > 0, top / q, 1.0)
        hinv = np.linalg.inv(hd[j:, j:])
        codes[:, j] = np.where(keep[:, j], np.clip(np.rint(w[:, j] / scale), -q, q), 0)
        err = w[:, j] - codes[:, j] * scale
        w[:, j:] -= np.outer(err / hinv[0, 0], hinv[0])
    return codes


def test_gptq_equals_naive_obs():
    rng = np.random.default_rng(9)
    x = _correlated(rng, 96, 40)
    w = rng.normal(size=(8, 40))
    calib = Calibration.of(x)
    codes, scale = gptq(w, 3, calib, blocksize=16)
    np.testing.assert_array_equal(scale, quantize_weight(w, 3)[1])
    np.testing.assert_array_equal(codes, _naive_gptq(w, calib.hessian, 3, scale))


@pytest.mark.parametrize("bits", [2, 4])
def test_gptq_groups_and_mask_equal_naive_obs(bits):
    """Few tokens (a near-singular Hessian) and INT2 make the compensation large enough that
    pruned positions would set a group's scale if they were not left out of it."""
    rng = np.random.default_rng(10)
    x = _correlated(rng, 24, 48)
    w = rng.normal(size=(8, 48))
    calib = Calibration.of(x)
    _, keep = magnitude(-1 / w, 2, 4)  # keeps the smallest weights of each group
    codes, _ = gptq(w, bits, calib, keep, group=16)
    np.testing.assert_array_equal(codes, _naive_gptq(w, calib.hessian, bits, keep=keep, group=16))


def test_gptq_with_identity_hessian_is_rtn(data):
    _, w, _ = data
    ident = Calibration(xtx=np.eye(128) * 10.0, absmax=np.ones(128), tokens=20)
    for group in (None, 32):
        got = gptq(w, 4, ident, group=group)
        want = rtn(w, 4, group=group)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("group", [None, 32])
def test_gptq_beats_rtn_on_correlated_data(data, bits, group):
    x, w, calib = data
    e_rtn = _rel_err(x, w, dequantize(*rtn(w, bits, group=group)))
    e_gptq = _rel_err(x, w, dequantize(*gptq(w, bits, calib, group=group)))
    e_both = _rel_err(x, w, dequantize(*quantize("gptq-search", w, bits, None, group, calib)))
    assert e_gptq < 0.7 * e_rtn, (e_gptq, e_rtn)
    assert e_both < e_rtn


def test_gptq_respects_sparsegpt_mask(data):
    """At 8:16 GPTQ still compensates well on the kept half (at 4:16 the gain shrinks to a few
    percent: three quarters of the columns cannot take compensation)."""
    x, w, calib = data
    pruned, keep = sparsegpt(w, 8, 16, calib)
    codes, scale = gptq(pruned, 4, calib, keep)
    assert np.all(codes[~keep] == 0)
    e_rtn = _rel_err(x, pruned, dequantize(*rtn(pruned, 4, keep)))
    e_gptq = _rel_err(x, pruned, dequantize(codes, scale))
    assert e_gptq < 0.8 * e_rtn, (e_gptq, e_rtn)


def test_sparsegpt_gptq_beats_magnitude_rtn_end_to_end(data):
    """The flightllm-sparsegpt recipe against today's, both measured against the dense layer."""
    x, w, calib = data
    pruned, keep = magnitude(w, 4, 16)
    e_today = _rel_err(x, w, dequantize(*rtn(pruned, 4, keep)))
    pruned, keep = sparsegpt(w, 4, 16, calib)
    e_new = _rel_err(x, w, dequantize(*quantize("gptq-search", pruned, 4, keep, None, calib)))
    assert e_new < 0.6 * e_today, (e_new, e_today)


def test_dequantize_groups():
    codes = np.array([[1, 2, 3, 4]], dtype=np.int8)
    np.testing.assert_array_equal(dequantize(codes, np.array([[0.5, 2.0]])), [[0.5, 1, 6, 8]])
    np.testing.assert_array_equal(dequantize(codes, np.array([0.5])), [[0.5, 1, 1.5, 2]])


def test_deterministic(data):
    x, w, calib = data
    a = gptq(w, 4, calib, group=32)
    b = gptq(w.copy(), 4, Calibration.of(x.copy()), group=32)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_bad_input(data):
    _, w, _ = data
    with pytest.raises(ValueError, match="weight bits 5 unsupported"):
        rtn(w, 5)
    with pytest.raises(ValueError, match="group 48 does not divide the reduction length 128"):
        rtn(w, 4, group=48)
    with pytest.raises(ValueError, match="'awq' unknown"):
        quantize("awq", w, 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'gptq' needs calibration"):
        quantize("gptq", w, 4)
    with pytest.raises(ValueError, match="mask shape"):
        rtn(w, 4, np.ones((2, 2), dtype=bool))


def test_grouped_rtn_by_hand():
    """w = [0.7, -0.35 | 0.1, 0.0499], INT4, groups of 2: RTN group scales 0.1 and 0.1/7; unit
    0.1/255, g = [255, rint(255/7 = 36.43) = 36]; codes against the snapped scales: 7,
    rint(-3.5) = -4 (to even); 0.1 / (36 * 0.1/255) = 7.08 -> 7, 0.0499 / ... = 3.53 -> 4
    (against the unsnapped 0.1/7 it would be 3.49 -> 3)."""
    codes, g, unit = quantize_grouped("rtn", np.array([[0.7, -0.35, 0.1, 0.0499]]), 4, 2)
    assert codes.tolist() == [[7, -4, 7, 4]]
    assert g.tolist() == [[255, 36]]
    assert unit.tolist() == pytest.approx([0.1 / 255])


@pytest.mark.parametrize("method", ["rtn", "search", "gptq", "gptq-search"])
def test_grouped_multipliers_are_the_scales_in_effect(data, method):
    """Integer multipliers in 1..255, every row's largest group (per-pass for GPTQ: up to the
    snap) near 255, and the codes within one step of the weights they stand for (RTN/search:
    half a step or clipped; GPTQ compensates, so only its range is checked)."""
    x, w, calib = data
    codes, g, unit = quantize_grouped(method, w, 4, 32, None, calib)
    assert g.shape == (64, 4) and g.min() >= 1 and g.max() <= 255
    assert np.all(np.abs(codes) <= 7)
    if method == "rtn":
        assert np.all(g.max(axis=1) == 255)
        step = np.repeat(g * unit[:, None], 32, axis=1)
        assert np.all(np.abs(w - codes * step) <= step / 2 + 1e-12)
    w_int = dequantize(codes, g * unit[:, None])
    w_rtn = dequantize(*rtn(w, 4))  # per channel
    assert _rel_err(x, w, w_int) < _rel_err(x, w, w_rtn)


def test_grouped_all_zero_group_sets_no_unit():
    """A pruned (all-zero) group must not become the row's unit (its RTN scale is 1.0)."""
    w = np.array([[0.0, 0.0, 0.02, -0.01]])
    codes, g, unit = quantize_grouped("rtn", w, 4, 2)
    assert unit.tolist() == pytest.approx([0.02 / 7 / 255])
    assert codes.tolist() == [[0, 0, 7, -4]] and g[0, 1] == 255
