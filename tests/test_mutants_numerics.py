"""Killing tests for numerics.py mutants (see tests/mutation/EQUIVALENT.md): values by hand."""

from __future__ import annotations

import numpy as np
import pytest

from hwflow import numerics as nx


def test_reduce_partials_sums_in_64_bits_and_refuses_int32_overflow():
    """Three boards' INT32 partials summed element by element; two INT32 halves of 2**31 - 1
    (1073741824 + 1073741823) sum past what int32 arithmetic holds but still fit INT32."""
    parts = [
        np.array([[1, 2], [3, 4]]),
        np.array([[10, 20], [30, 40]]),
        np.array([[-5, 0], [0, 7]]),
    ]
    out = nx.reduce_partials(parts)
    assert out.dtype == np.int64 and out.tolist() == [[6, 22], [33, 51]]
    big = [np.array([1 << 30], np.int32), np.array([(1 << 30) - 1], np.int32)]
    assert nx.reduce_partials(big).tolist() == [2**31 - 1]
    assert nx.reduce_partials([np.array([-(2**31)])]).tolist() == [-(2**31)]
    for parts in ([np.array([2**31 - 1]), np.array([1])], [np.array([-(2**31)]), np.array([-1])]):
        with pytest.raises(ValueError) as err:
            nx.reduce_partials(parts)
        assert str(err.value) == (
            "tensor-parallel partial sum leaves INT32 (the compiler's bound failed)"
        )
    assert nx.reduce_partials([np.zeros((0, 3), np.int32)] * 2).shape == (0, 3)


def test_reduce_max_of_row_maxima():
    parts = [np.array([1, -5, 0]), np.array([3, -7, 0]), np.array([2, -6, 9])]
    out = nx.reduce_max(parts)
    assert out.dtype == np.int64 and out.tolist() == [3, -5, 9]
    assert nx.reduce_max([np.array([4], np.int8)]).dtype == np.int64


def test_partial_bound_by_hand():
    """|acc| <= K x 127 x qmax(wbits), x 255 with group multipliers."""
    assert nx.partial_bound(64, 4, None) == 64 * 127 * 7 == 56896
    assert nx.partial_bound(64, 4, 32) == 56896 * 255
    assert nx.partial_bound(4096, 8, None) == 4096 * 127 * 127
    assert nx.partial_bound(10, 2, None) == 10 * 127 * 1


def test_group_multipliers_by_hand_and_refusals():
    """Row unit = max / 255; g = rint(scale / unit) clipped to 1..255: 0.4 / (1 / 255) = 102,
    0.05 -> 12.75 -> 13, 0.001 -> 0.255 -> 1 (at least 1). A float32 input is taken in
    float64 (the unit is a float64 scale). Anything but a positive finite 2-D array is refused
    with the one message."""
    g, unit = nx.group_multipliers(np.array([[1.0, 0.4, 0.05, 0.001]], np.float32))
    assert g.dtype == np.int64 and g.tolist() == [[255, 102, 13, 1]]
    assert unit.dtype == np.float64 and unit[0] == pytest.approx(1 / 255, rel=1e-7)
    for bad in (
        [1.0, 2.0],
        [[[1.0, 2.0]]],
        [[np.inf, 1.0]],
        [[np.nan, 1.0]],
        [[0.0, 1.0]],
        [[-1.0, 1.0]],
    ):
        with pytest.raises(ValueError, match=r"^group scales must be a positive finite \["):
            nx.group_multipliers(np.array(bad))


def test_group_partial_bits_at_a_power_of_two():
    """|p| <= G x 127 x qmax: INT8, G = 65: 65 x 16129 = 1048385 < 2**20 -> 20 bits + sign;
    INT4, G = 147: 147 x 889 = 130683 < 2**17 -> 18. (With 128 for 127 both would cross.)"""
    assert nx.group_partial_bits(8, 65) == 21
    assert nx.group_partial_bits(4, 147) == 18
    assert nx.group_partial_bits(8, 64) == 21  # 1032256 < 2**20


def test_row_max_of_int8_rows_at_minus_128():
    """|-128| is 128, which INT8 arithmetic cannot hold: M = max(max|v|, 1) per row."""
    out = nx.row_max(np.array([[-128, 5], [0, 0], [3, -7]], np.int8))
    assert out.tolist() == [128, 1, 7]


def test_quant_rows_with_a_given_row_maximum():
    """Tensor parallel: each board quantizes by the maximum over every board's columns. A
    board holding 127 and -64 of a row whose maximum elsewhere is 254: recip = (127 << 46) //
    254 = 2**45; 127 * 2**45 >> 46 = 63.5 -> 64 (round half up), -64 * 2**45 >> 46 = -32;
    without ``big`` the board's own maximum 127 maps 127 -> 127."""
    q, _ = nx.quant_rows(np.array([[127, -64]]), big=np.array([254]))
    assert q.tolist() == [[64, -32]]
    q, _ = nx.quant_rows(np.array([[127, -64]]))
    assert q.tolist() == [[127, -64]]
