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
        with pytest.raises(ValueError, match="tensor-parallel partial sum leaves INT32"):
            nx.reduce_partials(parts)
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
