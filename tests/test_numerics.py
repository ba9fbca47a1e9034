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
    # INT8 is symmetric (-127..127: the dual-INT8 DSP packing); wider outputs use the full range
    assert nx.requantize(np.array([10**6, -(10**6)]), 1, 0).tolist() == [127, -127]
    assert nx.requantize(np.array([10**6, -(10**6)]), 1, 0, 16).tolist() == [32767, -32768]
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


def test_round_shift_negative_is_exact_left_shift():
    assert nx.round_shift(np.array([5, -5, 3, -3]), np.array([1, 1, -2, -3])).tolist() == [
        3,
        -2,
        12,
        -24,
    ]


def test_row_factor_and_recip_factor():
    v = np.array([1, 3, 100_000, 2**40 + 12_345])
    m, e = nx.row_factor(v)
    assert ((m >= 2**14) & (m < 2**15)).all()
    assert np.allclose(m * 2.0**-e, v, rtol=2**-14)
    assert (m[:2] * 2.0 ** -e[:2] == v[:2]).all()  # small integers are exact
    t = np.array([1, 3, 255, 1000, 4096, 255 * 4096])
    m, e = nx.recip_factor(t)
    assert ((m > 2**14) | (m == 2**14)).all() and (m < 2**15).all()
    assert np.allclose(m * 2.0**-e * t, 1.0, rtol=2**-14)


def test_quant_rows_hand_computed():
    q, (m, e) = nx.quant_rows(np.array([[1000, -500, 3, 4], [0, 0, 0, 0], [-7, 7, 1, 0]]))
    # 127 * v / max|v|, rounded half up: 127, -63.5 -> -63, 0.381 -> 0, 0.508 -> 1
    assert q.tolist() == [[127, -63, 0, 1], [0, 0, 0, 0], [-127, 127, 18, 0]]
    assert (m * 2.0**-e).tolist() == [1000.0, 1.0, 7.0]


def test_linear_out_two_stages():
    acc = np.array([[1000, -1000], [1000, -1000]])
    row = (np.array([1 << 14, 3 << 13]), np.array([14, 14]))  # factors 1 and 1.5
    out = nx.linear_out(acc, np.array([1, 1]), np.array([4, 4]), 8, row, 0, np.array([8, 8]))
    # row 0: (1000 + 8) / 16 = 63; row 1: (1500 + 8) / 16 = 94.25 -> 94, (-1500 + 8) / 16 -> -93
    assert out.tolist() == [[63, -62], [94, -93]]
    # the guard scales the row stage by 2**G; the INT32 row stage saturates
    big = nx.linear_out(np.array([[2**30]]), np.array([1]), np.array([0]), 32, nx.unit_rows(1), 4)
    assert big.tolist() == [[2**31 - 1]]


def test_softmax_rows_against_float():
    rng = np.random.default_rng(2)
    z = rng.integers(-4000, 200, size=(3, 50))  # Q8 log2 units
    mask = np.ones_like(z, bool)
    mask[1, 10:] = False
    p, total = nx.softmax_rows(z, mask)
    ref = np.where(mask, np.exp2((z - np.where(mask, z, -(10**9)).max(-1, keepdims=True)) / 256), 0)
    assert (p[np.arange(3), np.argmax(np.where(mask, z, -(10**9)), -1)] == 255).all()
    # relative to the row maximum: half a step, plus the Q15 table and shift truncation
    assert np.abs(p - 255 * ref).max() <= 0.52
    assert (p[~mask] == 0).all() and (total == p.astype(np.int64).sum(-1)).all()
    with pytest.raises(ValueError, match="every entry masked"):
        nx.softmax_rows(z, np.zeros_like(mask))


@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("pre", [0, 11])
def test_norm_rows_matches_float(center, pre):
    rng = np.random.default_rng(3)
    x = rng.integers(-(2 ** (19 + pre)), 2 ** (19 + pre), size=(4, 64))
    x[0, 5] = 2 ** (19 + pre)  # a massive channel
    gamma = rng.integers(100, 32000, size=64)
    q, (m, e) = nx.norm_rows(x, gamma, center, pre)
    xf = x.astype(float)
    xf = xf - xf.mean(-1, keepdims=True) if center else xf
    ref = xf / np.sqrt((xf**2).mean(-1, keepdims=True)) * gamma
    got = q * (m * 2.0**-e)[:, None] / 127
    assert np.abs(got - ref).max() <= 0.51 / 127 * np.abs(ref).max(-1).max() * 1.01


def test_silu_int16_against_float():
    scale = 0.002
    m, s = nx.quant_multiplier(nx.SIG_STEPS * scale)
    g = np.arange(-32768, 32768, 97)
    got = nx.silu_int16(g, int(m), int(s)) * scale
    x = g * scale
    ref = x / (1 + np.exp(-x))
    # table steps of 1/64: |x| * max|sigmoid'| / 128 plus half an output step
    assert (np.abs(got - ref) <= np.abs(x) * 0.25 / 128 + scale).all()


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


def test_residual_add_and_gated_product():
    a = np.array([2**31 - 10, -5, 7])
    assert nx.add_residual(a, np.array([100, -10, 3])).tolist() == [2**31 - 1, -15, 10]
    q, (m, e) = nx.mul_rows(np.array([[300, -2, 0]]), np.array([[100, 5, 9]]))
    assert q.tolist() == [[127, 0, 0]] and (m * 2.0**-e).tolist() == [30000.0]
    assert nx.relu(np.array([-3, 0, 4], np.int16)).tolist() == [0, 0, 4]


def test_quality_metrics():
    a = np.array([1.0, -2.0, 3.0])
    assert nx.sqnr_db(a, a) == math.inf
    assert nx.sqnr_db(a, a * 1.1) == pytest.approx(20.0)
    assert nx.max_abs_error(a, a + np.array([0, 0.5, -0.25])) == 0.5


# --------------------------------------------------------------------------------------------
# Group-wise weight scales


def test_group_scaled_dot_product_by_hand():
    """Groups of 2 along K = 4: acc = sum_j g[o, j] * (partial sum of group j), worked out by
    hand: row 0: 3 * (1*1 + 2*-1) + 5 * (3*2 + 4*0) = -3 + 30 = 27;
    row 1: 1 * (1*7 + 2*7) + 255 * (3*-7 + 4*1) = 21 - 4335 = -4314."""
    x = np.array([[1, 2, 3, 4]], np.int8)
    codes = np.array([[1, -1, 2, 0], [7, 7, -7, 1]], np.int8)
    g = np.array([[3, 5], [1, 255]])
    assert nx.weight_matmul(x, codes, g, 2).tolist() == [[27, -4314]]
    assert nx.weight_matmul(x, codes).tolist() == [[-1 + 6, 21 - 21 + 4]]  # no group: g = 1
    with pytest.raises(ValueError, match="do not tile"):
        nx.weight_matmul(x, codes, g, 4)


def test_group_multipliers_by_hand():
    """u = max / 255; g = rint(s / u) clipped to 1..255: 0.5 -> 127.5 -> 128 (rint: to even),
    1.0 -> 255, 0.25 -> 63.75 -> 64, 0.001 -> 0.255 -> 0 -> clipped to 1."""
    g, u = nx.group_multipliers(np.array([[0.5, 1.0, 0.25, 0.001]]))
    assert g.tolist() == [[128, 255, 64, 1]]
    assert u.tolist() == pytest.approx([1 / 255])
    with pytest.raises(ValueError, match="positive finite"):
        nx.group_multipliers(np.array([[1.0, 0.0]]))


def test_group_partial_widths_by_hand():
    """INT4 at G = 128: 128 * 127 * 7 = 113,792 < 2**17 -> 18 signed bits; INT8: 128 * 127 *
    127 = 2,064,512 < 2**21 -> 22 bits (both fit the DSP48E2's 27-bit port)."""
    assert nx.group_partial_bits(4, 128) == 18
    assert nx.group_partial_bits(8, 128) == 22
    assert nx.group_partial_bits(4, 32) == 16  # 28,448 < 2**15
