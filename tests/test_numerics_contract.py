"""The numerics contract v2 (hwflow/numerics.py docstring) pinned by hand-worked values.

Every expected number here is derived by hand from the contract's formulas (the derivation
is in the comment next to it) or from a float computation of the real function, never by
calling the code under test. Added for issue 13: each test kills mutants of numerics.py that
tests/test_numerics.py (properties and float tolerances) let through.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from hwflow import numerics as nx

# --------------------------------------------------------------------------------------------
# saturate / round_shift / requantize


@pytest.mark.parametrize(
    ("bits", "lo", "hi", "dtype"),
    [
        (4, -8, 7, np.int8),  # only INT8 is symmetric; narrower widths keep the full range
        (8, -127, 127, np.int8),
        (16, -32768, 32767, np.int16),
        (17, -65536, 65535, np.int32),
        (32, -(2**31), 2**31 - 1, np.int32),
        (33, -(2**32), 2**32 - 1, np.int64),
    ],
)
def test_saturate_range_and_smallest_dtype(bits, lo, hi, dtype):
    out = nx.saturate(np.array([-(2**40), lo - 1, lo, 0, hi, hi + 1, 2**40]), bits)
    assert out.tolist() == [lo, lo, lo, 0, hi, hi, hi]
    assert out.dtype == dtype


def test_saturate_default_is_symmetric_int8():
    out = nx.saturate(np.array([-128, 128, -5]))
    assert out.tolist() == [-127, 127, -5] and out.dtype == np.int8


def test_round_shift_half_up_at_shift_two_and_twenty():
    # (x + 2) >> 2: -1.5 -> -1, -0.5 -> 0, 0.5 -> 1, 1.5 -> 2 (halves towards +infinity)
    x = np.array([-6, -5, -3, -2, 2, 3, 5, 6])
    assert nx.round_shift(x, 2).tolist() == [-1, -1, -1, 0, 1, 1, 1, 2]
    # 64-bit operands: 2**40 + 2**19 is 2**20 + 0.5 units of 2**20 -> 2**20 + 1; one less -> 2**20
    big = np.array([2**40 + 2**19, 2**40 + 2**19 - 1, -(2**40) - 2**19])
    assert nx.round_shift(big, 20).tolist() == [2**20 + 1, 2**20, -(2**20)]
    # a scalar value against per-element shifts: 7 / 2 = 3.5 -> 4, 7 / 4 = 1.75 -> 2, 7 << 3
    assert nx.round_shift(7, np.array([1, 2, 0, -3])).tolist() == [4, 2, 7, 56]


def test_requantize_per_channel_and_wide_outputs():
    # channel 0: 1000 * 3 / 2**4 = 187.5 -> 188 saturates to 127; channel 1: 1000 * 5 / 2**6 =
    # 78.125 -> 78
    acc = np.array([[1000, 1000], [-1000, -1000]])
    out = nx.requantize(acc, np.array([3, 5]), np.array([4, 6]))
    assert out.tolist() == [[127, 78], [-127, -78]] and out.dtype == np.int8
    # INT16: 187.5 -> 188 stays; INT32: 2**40 * 1 >> 0 saturates to 2**31 - 1
    assert nx.requantize(acc, np.array([3, 5]), np.array([4, 6]), 16).tolist() == [
        [188, 78],
        [-187, -78],
    ]
    assert nx.requantize(np.array([2**40, -(2**40)]), 1, 0, 32).tolist() == [2**31 - 1, -(2**31)]


# --------------------------------------------------------------------------------------------
# quant_multiplier


@pytest.mark.parametrize(
    ("real", "mult", "shift"),
    [
        (1.0, 16384, 14),  # 2**14 / 2**14, the multiplier normalised to 15 bits (top bit 14)
        (0.5, 16384, 15),
        (0.75, 24576, 15),  # 0.75 * 2**15
        (3.0, 24576, 13),  # 3 * 2**13
        (32767.0, 32767, 0),  # the largest scale, shift 0
        (1 - 2**-20, 16384, 14),  # rint(32767.97) = 2**15 overflows 15 bits: halved, shift - 1
        (2.0**-40, 128, 47),  # shift capped at 47: 2**-40 * 2**47 = 128
        (1e-20, 0, 47),  # too small for the cap: multiplier 0
    ],
)
def test_quant_multiplier_hand_values(real, mult, shift):
    m, s = nx.quant_multiplier(real)
    assert (int(m), int(s)) == (mult, shift)
    assert np.ndim(m) == 0 and np.ndim(s) == 0  # a scalar in, scalars out


def test_quant_multiplier_per_channel_arrays():
    m, s = nx.quant_multiplier(np.array([0.5, 0.75, 3.0]))
    assert m.tolist() == [16384, 24576, 24576] and s.tolist() == [15, 15, 13]
    m, s = nx.quant_multiplier(np.array([0.5]))  # a one-element array stays an array
    assert m.shape == (1,) and s.shape == (1,)


def test_quant_multiplier_refusals_name_the_value():
    with pytest.raises(ValueError, match=r"must be positive and finite, got \[-2\.\]"):
        nx.quant_multiplier(-2.0)
    with pytest.raises(ValueError, match=r"must be positive and finite, got \[0\.\]"):
        nx.quant_multiplier(np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match=r"scale 65536 too large \(must be < 32768\)"):
        nx.quant_multiplier(65536.0)
    with pytest.raises(ValueError, match=r"scale 32768 too large"):
        nx.quant_multiplier(32768.0)


# --------------------------------------------------------------------------------------------
# weights: qmax, quantize_weight, N:M, packing


def test_qmax_per_width():
    assert [nx.qmax(b) for b in (2, 3, 4, 8)] == [1, 3, 7, 127]


def test_quantize_weight_hand_values():
    # INT4, row 0: scale 1/7, codes rint(7, -3.5, 1.75, 0) = (7, -4, 2, 0) (rint: half to
    # even); an all-zero row keeps scale 1 and codes 0 (no division by zero)
    w = np.array([[1.0, -0.5, 0.25, 0.0], [0.0, 0.0, 0.0, 0.0]])
    codes, scale = nx.quantize_weight(w, 4)
    assert codes.tolist() == [[7, -4, 2, 0], [0, 0, 0, 0]] and codes.dtype == np.int8
    assert scale.tolist() == pytest.approx([1 / 7, 1.0])
    # the mask drops the 1.0: scale 0.5 / 7, codes (0, -7, rint(3.5) = 4, 0)
    mask = np.array([[False, True, True, True], [True, True, True, True]])
    codes, scale = nx.quantize_weight(w, 4, mask)
    assert codes.tolist() == [[0, -7, 4, 0], [0, 0, 0, 0]]
    assert scale[0] == pytest.approx(0.5 / 7)
    # INT2 is ternary: scale 1, 0.6 -> 1, 0.4 -> 0, never -2
    codes, _ = nx.quantize_weight(np.array([[1.0, -1.0, 0.4, 0.6]]), 2)
    assert codes.tolist() == [[1, -1, 0, 1]]


def test_nm_compress_and_expand_by_hand():
    # 2:4 on two groups: keep positions 1, 3 of the first and 0, 3 of the second
    codes = np.array([[1, 2, 3, 4, 5, 6, 7, 8]], np.int8)
    mask = np.array([[False, True, False, True, True, False, False, True]])
    vals, idx = nx.nm_compress(codes, mask, 2, 4)
    assert vals.tolist() == [[2, 4, 5, 8]] and idx.tolist() == [[1, 3, 0, 3]]
    assert vals.dtype == np.int8 and idx.dtype == np.uint8
    assert nx.nm_expand(vals, idx, 2, 4).tolist() == [[0, 2, 0, 4, 5, 0, 0, 8]]


def test_nm_refusals_name_the_fault():
    with pytest.raises(ValueError, match=r"reduction length 10 is not a multiple of M = 4"):
        nx.nm_prune_mask(np.ones((2, 10)), 2, 4)
    bad = np.array([[True, True, True, False]])
    with pytest.raises(ValueError, match=r"mask does not keep exactly 2 of every 4"):
        nx.nm_compress(np.ones((1, 4), np.int8), bad, 2, 4)


def test_pack_int2_and_int8_by_hand():
    # INT2 1, -1, 0, -2 -> fields 01, 11, 00, 10 -> stream bits 1,0, 1,1, 0,0, 0,1 -> 0x8D
    assert nx.pack_bits(np.array([1, -1, 0, -2]), 2).tolist() == [0x8D]
    out = nx.unpack_bits(np.array([0x8D], np.uint8), 2, 4)
    assert out.tolist() == [1, -1, 0, -2] and out.dtype == np.int8
    assert nx.unpack_bits(np.array([0x8D], np.uint8), 2, 4, signed=False).tolist() == [1, 3, 0, 2]
    # INT8: bytes are the two's complement codes; INT4 -8 is 1000
    assert nx.pack_bits(np.array([-1, 127, -128]), 8).tolist() == [0xFF, 0x7F, 0x80]
    assert nx.unpack_bits(np.array([0x78], np.uint8), 4, 2).tolist() == [-8, 7]
    u = nx.unpack_bits(np.array([0x78], np.uint8), 4, 2, signed=False)
    assert u.tolist() == [8, 7] and u.dtype == np.uint8


def test_unpack_refuses_too_few_bytes():
    with pytest.raises(ValueError, match=r"2 bytes hold fewer than 5 fields of 4 bits"):
        nx.unpack_bits(np.zeros(2, np.uint8), 4, 5)
    # exactly enough is fine: 5 fields of 3 bits need 15 bits, 2 bytes hold 16
    assert nx.unpack_bits(np.zeros(2, np.uint8), 3, 5).tolist() == [0] * 5


# --------------------------------------------------------------------------------------------
# matmul_int: exact however large the operands


def test_matmul_int_exact_beyond_float32_and_float64_mantissas():
    # 4097 * 4097 = 16785409: odd and above 2**24, not a float32 (float32 gives 16785408)
    assert nx.matmul_int(np.array([[4097]]), np.array([[4097]])).tolist() == [[16785409]]
    # (2**27 + 1)(2**26 + 1) = 2**53 + 2**27 + 2**26 + 1: odd and above 2**53, not a float64
    a, b = 2**27 + 1, 2**26 + 1
    assert nx.matmul_int(np.array([[a]]), np.array([[b]])).tolist() == [[a * b]]
    # float64 but not int64: 2**25 * 2**26 + 1 = 2**51 + 1 (exact in float64)
    out = nx.matmul_int(np.array([[2**25, 1]]), np.array([[2**26, 1]]))
    assert out.tolist() == [[2**51 + 1]] and out.dtype == np.int64
    # negative operands: |x| bounds the sum, not x: -4097 * 4097
    assert nx.matmul_int(np.array([[-4097]]), np.array([[4097]])).tolist() == [[-16785409]]
    assert nx.matmul_int(np.zeros((2, 0), np.int8), np.zeros((3, 0), np.int8)).shape == (2, 3)


# --------------------------------------------------------------------------------------------
# row factors and two-stage requantization


def test_unit_rows_is_the_factor_one():
    m, e = nx.unit_rows(3)
    assert m.tolist() == [16384] * 3 and e.tolist() == [14] * 3  # 2**14 * 2**-14 = 1


@pytest.mark.parametrize(
    ("v", "m", "e"),
    [
        (0, 16384, 14),  # clipped to 1 = 2**14 * 2**-14
        (1, 16384, 14),
        (3, 24576, 13),  # 3 = 3 * 2**13 * 2**-13
        (32767, 32767, 0),  # 15 bits: the mantissa itself
        (100000, 25000, -2),  # 17 bits: 100000 / 4 exactly
        (100001, 25000, -2),  # 25000.25 -> 25000
        (100002, 25001, -2),  # 25000.5 -> 25001 (half up)
        (65535, 16384, -2),  # 32767.5 -> 32768 overflows 15 bits: 2**14 * 2**2 = 65536
    ],
)
def test_row_factor_hand_values(v, m, e):
    got_m, got_e = nx.row_factor(np.array([v]))
    assert (got_m.tolist(), got_e.tolist()) == ([m], [e])


@pytest.mark.parametrize(
    ("t", "m", "e"),
    [
        (1, 16384, 14),  # 2**15 / 1 overflows: halved, e - 1
        (0, 16384, 14),  # clipped to 1
        (3, 21845, 16),  # 2**16 / 3 = 21845.33 -> 21845
        (7, 18725, 17),  # 2**17 / 7 = 18724.57 -> 18725 (rounded, not floored)
        (255, 16448, 22),  # 2**22 / 255 = 16448.25
        (4096, 16384, 26),  # a power of two: 2**27 / 2**12 = 2**15 halved
    ],
)
def test_recip_factor_hand_values(t, m, e):
    got_m, got_e = nx.recip_factor(np.array([t]))
    assert (got_m.tolist(), got_e.tolist()) == ([m], [e])


def test_row_factors_keep_the_shape():
    m, e = nx.row_factor(np.array([[1, 3], [100000, 65535]]))
    assert m.tolist() == [[16384, 24576], [25000, 16384]] and e.tolist() == [[14, 13], [-2, -2]]
    m, e = nx.recip_factor(np.array([[3, 7], [255, 4096]]))
    assert m.tolist() == [[21845, 18725], [16448, 16384]]
    assert e.tolist() == [[16, 17], [22, 26]]


def test_linear_out_without_row_factors_is_the_channel_stage():
    # acc + bias, then * mult >> shift: (100 + 4) * 3 / 8 = 39; (-100 + 4) * 3 / 8 = -36
    acc = np.array([[100, -100]])
    out = nx.linear_out(acc, np.array([3, 3]), np.array([3, 3]), 8, bias=np.array([4, 4]))
    assert out.tolist() == [[39, -36]]
    assert nx.linear_out(acc, 3, 3, 8).tolist() == [[38, -37]]  # 37.5 -> 38, -37.5 -> -37


def test_linear_out_row_stage_with_guard():
    # row factor 3 * 2**-1 = 1.5, guard 2: y = round(acc * 1.5 * 4) = 600 for acc 100, then
    # * 1 >> 3 = 75; a second row with factor 2**14 * 2**-14 = 1: 400 >> 3 = 50; bias 8 on y
    acc = np.array([[100], [100]])
    row = (np.array([3, 1 << 14]), np.array([1, 14]))
    out = nx.linear_out(acc, np.array([1]), np.array([3]), 16, row, 2, np.array([8]))
    assert out.tolist() == [[76], [51]] and out.dtype == np.int16
    # the row stage saturates to INT32 before the bias: 2**31 - 1 + (-(2**31) + 1) = 0
    out = nx.linear_out(
        np.array([[2**31]]),
        np.array([1]),
        np.array([0]),
        32,
        nx.unit_rows(1),
        0,
        np.array([-(2**31) + 1]),
    )
    assert out.tolist() == [[0]]


def test_quant_rows_negative_and_saturating_rows():
    # M = 10: -5 -> -63.5 (the reciprocal is floored, so just above -63.5) -> -63; -10 -> -127
    q, (m, e) = nx.quant_rows(np.array([[-5, -10, 1]]))
    assert q.tolist() == [[-63, -127, 13]] and q.dtype == np.int8  # 12.7 -> 13
    assert (m * 2.0**-e).tolist() == [10.0]
    # a row of 2**45 (|v| < 2**46 is the contract's bound) still gives 127
    q, (m, e) = nx.quant_rows(np.array([[2**45, -(2**44)]]))
    assert q.tolist() == [[127, -63]] and (m * 2.0**-e).tolist() == [2.0**45]


# --------------------------------------------------------------------------------------------
# rsqrt_fixed and norm_rows


def test_rsqrt_fixed_powers_of_two():
    """d = 64. ss = 1: sqrt(64) = 8 = 2**33 * 2**-30. ss = 2**40 (41 bits): k = (41 - 31) // 2
    = 5, 2**40 >> 10 = 2**30, sqrt(64 / 2**30) * 2**30 = 2**18 (8 / 2**20 = 2**18 * 2**-35).
    ss = 2**32 (33 bits): k = 1, 2**30 left: 2**18 * 2**-31 = 2**-13. ss = 2**31 (32 bits
    fit): k = 0, sqrt(2**66 / 2**31) = 2**17.5 = 185363.8 -> 185363. ss = 0 counts as 1."""
    inv, k = nx.rsqrt_fixed(np.array([1, 2**40, 2**32, 2**31, 0]), 64)
    assert inv.tolist() == [2**33, 2**18, 2**18, 185363, 2**33]
    assert k.tolist() == [0, 5, 1, 0, 0]


def test_rsqrt_fixed_is_the_floor_and_keeps_the_shape():
    # d = 3, ss = 2: inv = floor(sqrt(1.5) * 2**30), the largest integer whose square is <=
    # 3 * 2**59; a 2-D input keeps its shape
    inv, k = nx.rsqrt_fixed(np.array([[2, 2], [2, 2]]), 3)
    assert inv.shape == (2, 2) and k.shape == (2, 2)
    i = int(inv[0, 0])
    assert i * i <= 3 * 2**59 < (i + 1) ** 2 and k.max() == 0
    assert abs(i * 2.0**-30 - math.sqrt(1.5)) < 2**-30


def test_rms_norm_rows_by_hand():
    """x = (3, 4, 0, 0), gain 1: ss = 25, M = 4; q = round(127 * (3, 4) / 4) = (95.25 -> 95,
    127); factor M * sqrt(d / ss) = 4 * sqrt(4 / 25) = 1.6 = 26214.4 * 2**-14 -> (26214, 14)."""
    q, (m, e) = nx.norm_rows(np.array([[3, 4, 0, 0]]), np.ones(4, np.int64), False, 0)
    assert q.tolist() == [[95, 127, 0, 0]]
    assert (m.tolist(), e.tolist()) == ([26214], [14])


def test_layer_norm_rows_by_hand():
    """x = (1, 2, 3, 6): d * x - sum = (-8, -4, 0, 12), >> ceil(log2 4) = 2 half up:
    (-2, -1, 0, 3) (the mean-centred row, exact here); ss = 14, M = 3;
    q = 127 * (-2, -1, 0, 3) / 3 = (-84.67, -42.33, 0, 127) -> (-85, -42, 0, 127);
    factor 3 * sqrt(4 / 14) = 1.603567 = 26272.85 * 2**-14 -> (26273, 14)."""
    q, (m, e) = nx.norm_rows(np.array([[1, 2, 3, 6]]), np.ones(4, np.int64), True, 0)
    assert q.tolist() == [[-85, -42, 0, 127]]
    assert (m.tolist(), e.tolist()) == ([26273], [14])


def test_layer_norm_centring_of_a_non_power_of_two_row():
    """d = 3, x = (0, 0, 3): 3 * x - 3 = (-3, -3, 6), shift ceil(log2 3) = 2: (-3 + 2) >> 2 =
    -1, (6 + 2) >> 2 = 2: (-1, -1, 2) (the centred row (-1, -1, 2), scaled by 3 / 4 and
    rounded); ss = 6, M = 2, q = (-63.5 -> -63, -63, 127); factor 2 * sqrt(3 / 6) = 1.41421
    = 23170.48 * 2**-14 -> 23170 (from below: the isqrt truncates)."""
    q, (m, e) = nx.norm_rows(np.array([[0, 0, 3]]), np.ones(3, np.int64), True, 0)
    assert q.tolist() == [[-63, -63, 127]]
    assert (m.tolist(), e.tolist()) == ([23170], [14])


def test_norm_pre_shift_rounds_and_saturates_to_21_bits():
    """pre = 5: 112 / 32 = 3.5 -> 4 and 128 / 32 = 4: the row (4, 4, 0, 0), q = (127, 127);
    factor 4 * sqrt(4 / 32) = 1.41421 (as above, 23170, but M = 4: e = 14).
    pre = 0 with a channel of 2**25: it saturates to 2**20 - 1, so the 2**19 next to it is
    127 * 2**19 / (2**20 - 1) = 63.5001 -> 64 (unsaturated it would be 1.98 -> 2)."""
    q, (m, e) = nx.norm_rows(np.array([[112, 128, 0, 0]]), np.ones(4, np.int64), False, 5)
    assert q.tolist() == [[127, 127, 0, 0]]
    assert (m.tolist(), e.tolist()) == ([23170], [14])
    q, _ = nx.norm_rows(np.array([[2**25, 2**19, 0, 0]]), np.ones(4, np.int64), False, 0)
    assert q.tolist() == [[127, 64, 0, 0]]


def test_norm_gain_is_per_channel():
    """x = (2, 2, 2, 2), gamma = (1, 2, 3, 4): y = (2, 4, 6, 8), M = 8, q = 127 * y / 8 =
    (31.75, 63.5, 95.25, 127) -> (32, 64, 95, 127); factor 8 * sqrt(4 / 16) = 4 = 2**14 * 2**-12."""
    q, (m, e) = nx.norm_rows(np.array([[2, 2, 2, 2]]), np.array([1, 2, 3, 4]), False, 0)
    assert q.tolist() == [[32, 64, 95, 127]]
    assert (m.tolist(), e.tolist()) == ([16384], [12])


# --------------------------------------------------------------------------------------------
# residual, gated product, ReLU


def test_residual_saturates_both_ways_to_int32():
    out = nx.add_residual(np.array([-(2**31) + 5, 2**31 - 1]), np.array([-10, 1]))
    assert out.tolist() == [-(2**31), 2**31 - 1] and out.dtype == np.int32


def test_gated_product_is_int16_times_int16_without_wrap():
    # 32767 * 32767 = 1073676289 (M) does not wrap; -32767 * 16384 / M = -16384 / 32767 =
    # -0.5000153, * 127 = -63.502 -> -64
    q, (m, e) = nx.mul_rows(np.array([[32767, -32767]]), np.array([[32767, 16384]]))
    assert q.tolist() == [[127, -64]]
    # the factor is M = 32767**2 = 1073676289, within 2**-15 relative
    assert m[0] * 2.0 ** -e[0] == pytest.approx(32767**2, rel=2**-15)


def test_relu_keeps_the_width():
    out = nx.relu(np.array([-32768, -1, 0, 32767], np.int16))
    assert out.tolist() == [0, 0, 0, 32767] and out.dtype == np.int16


# --------------------------------------------------------------------------------------------
# tables and non-linear functions


def test_sigmoid_table_entries():
    """Q15 sigmoid at (i - 1024) / 64: i = 0 is sigmoid(-16) = 1.1e-7 -> 0; 960 is
    sigmoid(-1) = 0.268941 -> 8812.67 -> 8813; 1024 is 1/2 -> 16384; 1056 is sigmoid(0.5) =
    0.622459 -> 20396.75 -> 20397; 1088 is sigmoid(1) = 0.731059 -> 23955.33 -> 23955; 2047 is
    sigmoid(15.98) -> 32768."""
    t = nx.sigmoid_table()
    assert t.shape == (2048,) and t.dtype == np.int64
    assert [int(t[i]) for i in (0, 960, 1024, 1056, 1088, 2047)] == [
        0,
        8813,
        16384,
        20397,
        23955,
        32768,
    ]


def test_exp2_table_entries():
    """Q15 2**(-i/256): 1 -> 32768; i = 1: 32679.40 -> 32679; 64: 27554.49 -> 27554;
    128: 2**15 / sqrt(2) = 23170.48 -> 23170; 255: 16428.42 -> 16428."""
    t = nx.exp2_table()
    assert t.shape == (256,) and t.dtype == np.int64
    assert [int(t[i]) for i in (0, 1, 64, 128, 255)] == [32768, 32679, 27554, 23170, 16428]


def test_silu_at_scale_one_64th():
    """mult / 2**shift = 1 = 64 * scale: the index is g itself. g = 64 is x = 1:
    64 * SIG[1088] = 64 * 23955 / 2**15 = 46.79 -> 47; g = -64: -64 * 8813 / 2**15 = -17.21
    -> -17; beyond the table (|x| >= 16) the sigmoid is 1 (g = 2000 -> 2000) or 0."""
    g = np.array([64, -64, 0, 2000, -2000, 32767, -32768])
    out = nx.silu_int16(g, 1, 0)
    assert out.tolist() == [47, -17, 0, 2000, 0, 32767, 0] and out.dtype == np.int16


def test_silu_index_rounds_half_up():
    """mult 3, shift 1: the index of g = 21 is 31.5 -> 32 (x = 0.5: 21 * 20397 / 2**15 =
    13.07 -> 13); of g = -21 it is -31.5 -> -31 (half up), x = -31/64: sigmoid = 0.381222,
    Q15 12492.0 -> -21 * 12492 / 2**15 = -8.006 -> -8."""
    assert round(2**15 / (1 + math.exp(31 / 64))) == 12492  # the table entry used
    assert nx.silu_int16(np.array([21, -21]), 3, 1).tolist() == [13, -8]


def test_softmax_by_hand():
    """z = (0, -256, -512, -128) in Q8 log2: d = (0, 256, 512, 128); e = 32768, 32768 >> 1,
    32768 >> 2, EXP2[128] = 23170; p = (255 e + 2**14) >> 15 = 255, 128 (127.5 + .5),
    64 (63.75 + .5), 180 (180.3 + .5); S = 627."""
    p, s = nx.softmax_rows(np.array([[0, -256, -512, -128]]))
    assert p.tolist() == [[255, 128, 64, 180]] and p.dtype == np.uint8
    assert s.tolist() == [627]


def test_softmax_is_relative_to_the_kept_maximum():
    """A masked entry larger than the rest is ignored: the maximum is the kept -1000, so
    (-1000, -1256) give 255 and 128; the masked one is 0. A score 2**20 below the maximum
    is shifted out entirely (d >> 8 = 4096, capped at 31): 0."""
    z = np.array([[5000, -1000, -1256, -1000 - 2**20]])
    mask = np.array([[False, True, True, True]])
    p, s = nx.softmax_rows(z, mask)
    assert p.tolist() == [[0, 255, 128, 0]] and s.tolist() == [383]


def test_softmax_huge_gap_is_zero_not_wrapped():
    """d = 10**6: d >> 8 = 3906, capped at 31: EXP2[64] >> 31 = 0, so p = 0."""
    p, s = nx.softmax_rows(np.array([[0, -(10**6)]]))
    assert p.tolist() == [[255, 0]] and s.tolist() == [255]


def test_rope_tables_by_hand():
    """head_dim 4, theta 10000: inverse frequencies 1 and 10000**-0.5 = 0.01. Position 1:
    cos 1 = 0.540302 -> 8852.31 -> 8852, sin 1 = 0.841471 -> 13786.66 -> 13787, cos 0.01 ->
    16383.18 -> 16383, sin 0.01 -> 163.84 -> 164; position 0 is (16384, 0)."""
    c, s = nx.rope_tables(2, 4, 10000.0)
    assert c.tolist() == [[16384, 16384], [8852, 16383]]
    assert s.tolist() == [[0, 0], [13787, 164]]
    assert c.dtype == np.int64 and s.dtype == np.int64


def test_rope_int_by_hand():
    """x = (100, 0 | 0, 50) rotated by the position-1 rows above: y1 = (100 * 8852 / 2**14,
    -50 * 164 / 2**14) = (54.03 -> 54, -0.5005 -> -1); y2 = (100 * 13787 / 2**14,
    50 * 16383 / 2**14) = (84.15 -> 84, 49.997 -> 50). At 45 degrees (11585 = 2**14 /
    sqrt 2) (127, 0 | 127, 0) gives y2 = 179.6, saturated to 127."""
    c, s = np.array([[8852, 16383]]), np.array([[13787, 164]])
    y = nx.rope_int(np.array([[100, 0, 0, 50]]), c, s)
    assert y.tolist() == [[54, -1, 84, 50]] and y.dtype == np.int8
    y = nx.rope_int(
        np.array([[127, 0, 127, 0]]), np.array([[11585, 11585]]), np.array([[11585, 11585]])
    )
    assert y.tolist() == [[0, 0, 127, 0]]


# --------------------------------------------------------------------------------------------
# quality metrics


def test_quality_metric_edges():
    zero = np.zeros(3)
    assert nx.sqnr_db(zero, zero) == math.inf
    assert nx.sqnr_db(zero, np.array([1.0, 0, 0])) == -math.inf
    # signal 1 + 4 = 5, noise 0.25 + 0.25 = 0.5: 10 dB
    assert nx.sqnr_db(np.array([1.0, 2.0]), np.array([1.5, 1.5])) == pytest.approx(10.0)
    assert nx.max_abs_error(np.array([]), np.array([])) == 0.0
    assert nx.max_abs_error(np.array([1.0, -1.0]), np.array([1.25, -1.5])) == 0.5


# --------------------------------------------------------------------------------------------
# narrow input dtypes (what the executors hold: INT8 codes, INT16 gate outputs, INT32 scores)


def test_silu_of_an_int16_array_does_not_wrap():
    """g is INT16 in the contract. mult 3, shift 1 (x = 1.5 g / 64): g * 3 must not wrap in
    16 bits: 20000 -> index 30000 -> clipped to 1023, sigmoid 1 -> 20000; -20000 -> 0.
    g = 64 is x = 1.5: SIG[1120] = 32768 * sigmoid(1.5) = 26790.3 -> 26790,
    64 * 26790 / 2**15 = 52.3 -> 52."""
    assert round(2**15 / (1 + math.exp(-1.5))) == 26790
    out = nx.silu_int16(np.array([20000, -20000, 64], np.int16), 3, 1)
    assert out.tolist() == [20000, 0, 52]


def test_softmax_of_int32_scores_at_the_extremes():
    """INT32 scores 2**31 - 1 and -2**31: the difference 2**32 - 1 does not fit INT32: the
    small one is 0. Ordinary and masked INT32 scores as in the hand cases above."""
    p, s = nx.softmax_rows(np.array([[2**31 - 1, -(2**31)]], np.int32))
    assert p.tolist() == [[255, 0]] and s.tolist() == [255]
    p, s = nx.softmax_rows(np.array([[0, -256, -512, -128]], np.int32))
    assert p.tolist() == [[255, 128, 64, 180]] and s.tolist() == [627]
    # masked INT32 scores, every kept one negative: the maximum is the kept -1000 (a masked
    # entry must not count as 0, nor as any value an INT32 can hold)
    z = np.array([[5000, -1000, -1256]], np.int32)
    p, s = nx.softmax_rows(z, np.array([[False, True, True]]))
    assert p.tolist() == [[0, 255, 128]] and s.tolist() == [383]


def test_rope_of_int8_rows_with_int16_tables():
    """The Q14 tables fit INT16 (as stored in HBM) and x is INT8: products such as
    100 * 8852 must not wrap in 16 bits (same hand values as test_rope_int_by_hand)."""
    c, s = np.array([[8852, 16383]], np.int16), np.array([[13787, 164]], np.int16)
    y = nx.rope_int(np.array([[100, 0, 0, 50]], np.int8), c, s)
    assert y.tolist() == [[54, -1, 84, 50]]


def test_quant_rows_of_int16_with_the_most_negative_value():
    """|-32768| is 32768 (not INT16's wrapped -32768): M = 32768, 100 -> 127 * 100 / 32768 =
    0.39 -> 0."""
    q, (m, e) = nx.quant_rows(np.array([[-32768, 100]], np.int16))
    assert q.tolist() == [[-127, 0]] and (m * 2.0**-e).tolist() == [32768.0]


def test_quant_rows_reciprocal_is_floored():
    """The contract's reciprocal is ``(127 << 46) // M``, floored: v = 3 of M = 6 is 63.5
    exactly, but 127 * 2**46 is 4 mod 6, so 3 * floor(127 * 2**46 / 6) = 63.5 * 2**46 - 2,
    and adding the half 2**45 gives 64 * 2**46 - 2: >> 46 = 63, not 64. The maximum stays 127."""
    assert 3 * ((127 << 46) // 6) == 127 * 2**45 - 2
    q, _ = nx.quant_rows(np.array([[3, 6]]))
    assert q.tolist() == [[63, 127]]


def test_integer_weights_by_magnitude():
    """INT8 -128 is the largest magnitude (|int8(-128)| must not wrap): it sets the scale
    128 / 127 and becomes -127; 1 -> rint(0.99) = 1. N:M pruning keeps it as the largest."""
    w = np.array([[-128, 1, 2, 3]], np.int8)
    codes, scale = nx.quantize_weight(w, 8)
    assert codes.tolist() == [[-127, 1, 2, 3]] and scale.tolist() == pytest.approx([128 / 127])
    assert nx.nm_prune_mask(w, 1, 4).tolist() == [[True, False, False, False]]
    # unsigned magnitudes (e.g. scores): 0 is the smallest, 5 and 3 are kept
    scores = np.array([[0, 5, 3, 1]], np.uint8)
    assert nx.nm_prune_mask(scores, 2, 4).tolist() == [[False, True, True, False]]


def test_sqnr_of_integer_arrays():
    """INT8 outputs compared directly: signal 100**2 + 100**2 = 20000 (not wrapped in 8 bits),
    noise 10**2 + 10**2 = 200: 20 dB. A signal below 1 is still a signal: 0.25 / 0.0625 =
    4 -> 6.02 dB."""
    ref, test = np.array([100, -100], np.int8), np.array([90, -90], np.int8)
    assert nx.sqnr_db(ref, test) == pytest.approx(20.0)
    assert nx.sqnr_db(np.array([0.5]), np.array([0.25])) == pytest.approx(10 * math.log10(4))


def test_unpack_takes_a_byte_list():
    assert nx.unpack_bits([0x8D], 2, 4).tolist() == [1, -1, 0, -2]


# --------------------------------------------------------------------------------------------
# leading axes: heads x tokens x channels (the ops work on the last axis)


def test_row_ops_on_three_axes():
    """[2 heads, 1 token, n] stacks of the hand rows above give the same rows."""
    q, (m, e) = nx.quant_rows(np.array([[[1000, -500, 3, 4]], [[-7, 7, 1, 0]]]))
    assert q.tolist() == [[[127, -63, 0, 1]], [[-127, 127, 18, 0]]]
    assert (m * 2.0**-e).tolist() == [[1000.0], [7.0]]
    p, s = nx.softmax_rows(np.array([[[0, -256, -512, -128]], [[-256, -512, 0, -128]]]))
    assert p.tolist() == [[[255, 128, 64, 180]], [[128, 64, 255, 180]]]
    assert s.tolist() == [[627], [627]]
    c, sn = np.array([[8852, 16383]]), np.array([[13787, 164]])
    # head 1 = (0, 100 | 50, 0): y1 = (-50 * 13787, 100 * 16383) / 2**14 = (-42.07, 99.99),
    # y2 = (50 * 8852, 100 * 164) / 2**14 = (27.01, 1.001)
    y = nx.rope_int(np.array([[[100, 0, 0, 50]], [[0, 100, 50, 0]]]), c, sn)
    assert y.tolist() == [[[54, -1, 84, 50]], [[-42, 100, 27, 1]]]


def test_norm_rows_on_three_axes():
    """LayerNorm of [2, 1, 4]: (1, 2, 3, 6) as in test_layer_norm_rows_by_hand; (0, 0, 0, 4):
    4 x - 4 = (-4, -4, -4, 12) >> 2 half up = (-1, -1, -1, 3), ss = 12, M = 3, q = (-42.3,
    ..., 127) -> (-42, -42, -42, 127), factor 3 * sqrt(4 / 12) = 1.73205 = 28377.9 * 2**-14
    -> (28378, 14)."""
    x = np.array([[[1, 2, 3, 6]], [[0, 0, 0, 4]]])
    q, (m, e) = nx.norm_rows(x, np.ones(4, np.int64), True, 0)
    assert q.tolist() == [[[-85, -42, 0, 127]], [[-42, -42, -42, 127]]]
    assert m.tolist() == [[26273], [28378]] and e.tolist() == [[14], [14]]
    # RMSNorm: (3, 4, 0, 0) -> (26214, 14); (2, 2, 2, 2) -> factor 2 * sqrt(4 / 16) = 1
    x = np.array([[[3, 4, 0, 0]], [[2, 2, 2, 2]]])
    q, (m, e) = nx.norm_rows(x, np.ones(4, np.int64), False, 0)
    assert q.tolist() == [[[95, 127, 0, 0]], [[127, 127, 127, 127]]]
    assert m.tolist() == [[26214], [16384]] and e.tolist() == [[14], [14]]


def test_matmul_int_bound_uses_the_reduction_length_of_batched_inputs():
    """x [1, 1, K = 2]: 3001 * 3001 + 3001 * 3000 = 18009001, odd and above 2**24 (not a
    float32), although each product (9006001) is below 2**24."""
    out = nx.matmul_int(np.array([[[3001, 3001]]]), np.array([[3001, 3000]]))
    assert out.tolist() == [[[18009001]]]


def test_softmax_refuses_one_fully_masked_row_among_kept_ones():
    z = np.zeros((1, 2, 2), np.int64)
    mask = np.array([[[True, True], [False, False]]])
    with pytest.raises(ValueError, match=r"^softmax row with every entry masked$"):
        nx.softmax_rows(z, mask)
    with pytest.raises(ValueError, match=r"^softmax row with every entry masked$"):
        nx.softmax_rows(z[0], mask[0])


# --------------------------------------------------------------------------------------------
# defaults, dtypes and messages


def test_linear_out_guard_defaults_to_zero():
    # row factor 3 * 2**-1 = 1.5 and no guard: 100 * 1.5 = 150 (a guard of 1 would give 300)
    row = (np.array([3]), np.array([1]))
    assert nx.linear_out(np.array([[100]]), 1, 0, 32, row).tolist() == [[150]]


def test_quant_multiplier_arrays_are_int64_and_the_refusal_shows_three_values():
    m, s = nx.quant_multiplier(np.array([0.5, 3.0]))
    assert m.dtype == np.int64 and s.dtype == np.int64
    with pytest.raises(ValueError, match=r"got \[-1\. -2\. -3\.\]$"):
        nx.quant_multiplier(np.array([-1.0, -2.0, -3.0, -4.0]))


def test_nm_expand_gives_int8_codes():
    out = nx.nm_expand(np.array([[2, -4]], np.int8), np.array([[1, 3]], np.uint8), 2, 4)
    assert out.tolist() == [[0, 2, 0, -4]] and out.dtype == np.int8


def test_nm_ties_keep_the_lower_index_in_long_groups():
    """Groups of 64 with many equal magnitudes (1, 2 or 3): the kept set is the N largest,
    ties to the lower index (Python's sorted() is stable)."""
    rng = np.random.default_rng(5)
    w = rng.integers(1, 4, size=(3, 128)) * rng.choice([-1, 1], size=(3, 128))
    keep = nx.nm_prune_mask(w.astype(np.float64), 20, 64)
    for r in range(3):
        for g in range(2):
            grp = [abs(int(v)) for v in w[r, 64 * g : 64 * (g + 1)]]
            want = sorted(sorted(range(64), key=lambda i: -grp[i])[:20])
            assert np.flatnonzero(keep[r, 64 * g : 64 * (g + 1)]).tolist() == want


def test_factors_of_an_empty_batch_are_int64():
    """No rows (an empty batch) still gives int64 mantissas and exponents."""
    none = np.zeros(0, np.int64)
    for m, e in (nx.row_factor(none), nx.recip_factor(none), nx.rsqrt_fixed(none, 4)):
        assert m.shape == e.shape == (0,) and m.dtype == e.dtype == np.int64


def test_unpack_refuses_one_bit_short():
    # 17 one-bit fields need 17 bits; 2 bytes hold 16
    with pytest.raises(ValueError, match=r"^2 bytes hold fewer than 17 fields of 1 bits$"):
        nx.unpack_bits(np.zeros(2, np.uint8), 1, 17)


def test_quant_multiplier_saturates_a_scale_that_rounds_to_two_to_the_15() -> None:
    """32767.7 at shift 0 rounds to 32768, which needs 16 bits; no shift is left to take back,
    so the pair saturates to (32767, 0) (error 0.7 / 32767.7) instead of a shift of -1.
    32767.4 rounds down to 32767 and 16383.9 takes shift 1 (32767.8 -> 32768 -> 16384, 0)."""
    assert tuple(int(v) for v in nx.quant_multiplier(32767.7)) == (32767, 0)
    assert tuple(int(v) for v in nx.quant_multiplier(32767.4)) == (32767, 0)
    assert tuple(int(v) for v in nx.quant_multiplier(16383.9)) == (16384, 0)
