"""Killing tests for compiler/layout.py mutants (tests/mutation/EQUIVALENT.md): values by hand."""

from __future__ import annotations

import numpy as np

from hwflow.compiler.layout import BeatGeometry, TileSpec, _size, encode_tile, slot_factors

GEO = BeatGeometry(chains=2, chain_length=16, m=16)  # the tiny preset's stripe


def test_sizes_in_binary_units():
    """The unit is the largest that keeps a digit before the point."""
    assert _size(1023) == "1023 bytes"
    assert _size(1536) == "1.50 KiB"
    assert _size(2**20) == "1.00 MiB"
    assert _size(2**30) == "1.00 GiB"
    assert _size(5 * 2**29) == "2.50 GiB"


def test_slot_factors_by_hand():
    """KV bytes per sequence = a x b, b its largest power-of-two divisor up to 1 MiB: 96 = 3 x
    32; 3 x 2**21 = 6 x 2**20 (b capped); no KV at all: (0, 1)."""
    assert slot_factors(96) == (3, 32)
    assert slot_factors(3 * 2**21) == (6, 2**20)
    assert slot_factors(0) == (0, 1)


def test_dense_codes_decode_as_int8():
    """The decoded codes of a dense INT8 tile are int8 (the rest of the tile int64)."""
    codes = np.arange(2 * 20).reshape(2, 20) - 20
    mult, shift = np.array([3, 4]), np.array([5, 6])
    blob = encode_tile(codes, None, None, mult, shift, 1, 1, 8, GEO)
    got, bias, m, s = TileSpec.decode(blob, 2, 20, 1, 1, 8, False, GEO)
    assert got.dtype == np.int8 and np.array_equal(got, codes) and bias is None
    assert m.dtype == s.dtype == np.int64 and m.tolist() == [3, 4] and s.tolist() == [5, 6]
