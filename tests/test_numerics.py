"""The arithmetic contract, pinned by small exact cases and properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwflow import numerics as nx


def test_round_shift_is_half_up():
    x = np.array([-3, -2, -1, 0, 1, 2, 3])
    assert nx.round_shift(x, 1).tolist() == [-1, -1, 0, 0, 1, 1, 2]
    assert nx.round_shift(x, 0).tolist() == x.tolist()
    assert nx.round_shift(np.array([5, 6]), np.array([1, 2])).tolist() == [3, 2]


def test_requantize_saturates_and_rounds():
    assert nx.requantize(np.array([10**6, -(10**6)]), 1, 0).tolist() == [127, -128]
    # 100 * 3 / 8 = 37.5 -> 38 (half up); -37.5 -> -37
    assert nx.requantize(np.array([100, -100]), 3, 3).tolist() == [38, -37]
    assert nx.requantize(np.array([[4, 4]]), np.array([1, 2]), np.array([2, 2])).tolist() == [
        [1, 2]
    ]


@given(st.floats(min_value=1e-12, max_value=1000.0))
def test_quant_multiplier_accuracy(real):
    m, s = nx.quant_multiplier(real)
    assert 0 <= m < 2**nx.REQ_MULT_BITS and 0 <= s <= nx.REQ_SHIFT_MAX
    if s < nx.REQ_SHIFT_MAX:
        assert m >= 2 ** (nx.REQ_MULT_BITS - 2)
        assert abs(m / 2.0**s - real) <= real * 2.0 ** -(nx.REQ_MULT_BITS - 2)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), 2.0**16])
def test_quant_multiplier_rejects(bad):
    with pytest.raises(ValueError):
        nx.quant_multiplier(bad)


def test_pack_bits_known_layout():
    # little-endian bit stream: 1 -> 0b0001 in bits 0..3, -1 -> 0b1111 in bits 4..7
    assert nx.pack_bits(np.array([1, -1]), 4).tolist() == [0xF1]
    # three 3-bit fields 1, 2, -1: bits 001 010 111 -> stream 1,0,0, 0,1,0, 1,1,1
    assert nx.pack_bits(np.array([1, 2, -1]), 3).tolist() == [0b11010001, 0b1]


@settings(max_examples=50)
@given(st.sampled_from([2, 3, 4, 8]), st.integers(1, 70), st.randoms(use_true_random=False))
def test_pack_unpack_roundtrip(bits, count, rnd):
    q = nx.qmax(bits)
    vals = np.array([rnd.randint(-q - 1, q) for _ in range(count)])
    packed = nx.pack_bits(vals, bits)
    assert packed.size == math.ceil(count * bits / 8)
    assert nx.unpack_bits(packed, bits, count).tolist() == vals.tolist()
    idx = np.array([rnd.randint(0, 2**bits - 1) for _ in range(count)])
    assert (
        nx.unpack_bits(nx.pack_bits(idx, bits), bits, count, signed=False).tolist() == idx.tolist()
    )


@pytest.mark.parametrize(
    ("n", "m"), [(1, 4), (2, 4), (3, 4), (4, 16), (8, 16), (2, 16), (16, 16), (5, 8)]
)
def test_nm_prune_compress_roundtrip(n, m):
    rng = np.random.default_rng(n * 100 + m)
    w = rng.normal(size=(6, 4 * m))
    mask = nm_mask = nx.nm_prune_mask(w, n, m)
    assert (nm_mask.reshape(6, 4, m).sum(-1) == n).all()
    kept = np.abs(w).reshape(6, 4, m)
    # every kept magnitude >= every pruned magnitude in its group
    km = np.where(mask.reshape(6, 4, m), kept, np.inf).min(-1)
    pm = np.where(~mask.reshape(6, 4, m), kept, -np.inf).max(-1)
    assert (km >= pm).all()
    codes, _ = nx.quantize_weight(w, 4, mask)
    vals, idx = nx.nm_compress(codes, mask, n, m)
    assert vals.shape == (6, 4 * n) and idx.max() < m
    assert (nx.nm_expand(vals, idx, n, m) == codes).all()


def test_nm_ties_keep_lower_index():
    w = np.ones((1, 4))
    assert nx.nm_prune_mask(w, 2, 4).tolist() == [[True, True, False, False]]


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_quantize_weight_symmetric(bits):
    w = np.random.default_rng(bits).normal(size=(5, 32))
    codes, scale = nx.quantize_weight(w, bits)
    q = nx.qmax(bits)
    assert codes.min() >= -q and codes.max() <= q
    assert (np.abs(codes).max(axis=1) == q).all()
    assert np.abs(codes * scale[:, None] - w).max() <= scale.max() / 2 + 1e-12


def test_matmul_int_exact():
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, size=(7, 300)).astype(np.int8)
    w = rng.integers(-128, 128, size=(9, 300)).astype(np.int8)
    assert (nx.matmul_int(x, w) == x.astype(np.int64) @ w.astype(np.int64).T).all()


def test_softmax_int():
    table = nx.exp_table(0.05)
    assert table[0] == 2**nx.EXP_FRAC
    s = np.array([[10, 10, 10, 10], [40, 20, 0, 40]])
    p = nx.softmax_int(s, table)
    assert p[0].tolist() == [32, 32, 32, 32]  # 127/4 = 31.75 -> 32
    assert p[1, 0] == p[1, 3] and p[1, 0] > p[1, 1] > p[1, 2]
    m = nx.softmax_int(s, table, np.array([[True, False, False, False], [True, True, True, False]]))
    assert m[0].tolist() == [127, 0, 0, 0] and m[1, 3] == 0
    with pytest.raises(ValueError, match="every entry masked"):
        nx.softmax_int(s, table, np.zeros((2, 4), bool))


@pytest.mark.parametrize("center", [False, True])
def test_norm_int_matches_float(center):
    rng = np.random.default_rng(3)
    x = rng.integers(-100, 100, size=(4, 64))
    s_out = 4.0 / 127
    mult, shift = nx.quant_multiplier(2.0**-nx.NORM_FRAC / s_out)
    y = nx.norm_int(x, center, int(mult), int(shift))
    xf = x - x.mean(-1, keepdims=True) if center else x.astype(float)
    ref = xf / np.sqrt((xf**2).mean(-1, keepdims=True)) / s_out
    assert np.abs(y - np.clip(ref, -128, 127)).max() <= 1.0


def test_rope_identity_at_position_zero_and_rotation():
    c, s = nx.rope_tables(4, 8, 10000.0)
    x = np.random.default_rng(0).integers(-100, 100, size=(4, 8))
    y = nx.rope_int(x, c, s)
    assert (y[0] == x[0]).all()
    # rotation preserves the norm of each pair to within rounding
    h = 4
    n_in = x[:, :h] ** 2 + x[:, h:] ** 2
    n_out = y[:, :h].astype(float) ** 2 + y[:, h:].astype(float) ** 2
    assert np.abs(np.sqrt(n_in) - np.sqrt(n_out)).max() < 1.5


def test_lut_and_eltwise():
    lut = nx.lut_from_fn(lambda v: np.maximum(v, 0), 0.1, 0.1)
    assert nx.apply_lut(np.array([-128, -1, 0, 5, 127]), lut).tolist() == [0, 0, 0, 5, 127]
    assert nx.add_requant(np.array([100]), np.array([100]), 1 << 14, 1 << 14, 15).tolist() == [100]
    assert nx.mul_requant(np.array([127]), np.array([127]), 1, 7).tolist() == [126]


def test_quality_metrics():
    a = np.array([1.0, -2.0, 3.0])
    assert nx.sqnr_db(a, a) == math.inf
    assert nx.sqnr_db(a, a * 1.1) == pytest.approx(20.0)
    assert nx.max_abs_error(a, a + np.array([0, 0.5, -0.25])) == 0.5
