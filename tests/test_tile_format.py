"""The weight tile format (hwflow.compiler.layout): beat-major records, written by encode_tile
and read by TileSpec.decode, checked byte by byte against hand-built expectations."""

from __future__ import annotations

import numpy as np
import pytest

from hwflow.compiler.layout import BeatGeometry, TileSpec, encode_tile
from hwflow.config import load_hw
from hwflow.numerics import nm_expand

GEO = BeatGeometry(chains=2, chain_length=16, m=16)  # the tiny preset's stripe


def _params(rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    bias = np.arange(rows) * 1000 - 7
    mult = np.arange(rows) + 300
    shift = np.arange(rows) % 9 - 2
    return bias, mult, shift


def _tail(bias: np.ndarray, mult: np.ndarray, shift: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [bias.astype("<i4").view(np.uint8), mult.astype("<u2").view(np.uint8),
         shift.astype("i1").view(np.uint8)]
    )  # fmt: skip


def test_geometry_of_the_tiny_preset() -> None:
    assert BeatGeometry.from_preset(load_hw("tiny")) == GEO


def test_dense_int8_records_are_two_rows_per_block() -> None:
    """Dense INT8 on 2 chains of 16: a record is the block of 2 rows (one per chain); 3 rows
    make two stripes, the second of one row (its records one row long)."""
    codes = (np.arange(3 * 32).reshape(3, 32) % 251 - 125).astype(np.int64)
    bias, mult, shift = _params(3)
    blob = encode_tile(codes, None, bias, mult, shift, 1, 1, 8, GEO)
    u = codes.astype(np.int8).view(np.uint8)
    want = np.concatenate(
        [u[0, :16], u[1, :16], u[0, 16:], u[1, 16:], u[2, :16], u[2, 16:],
         _tail(bias, mult, shift)]
    )  # fmt: skip
    assert np.array_equal(blob, want)
    assert TileSpec.sections(3, 32, 1, 1, 8, True, GEO) == {
        "beats": 0, "bias": 96, "mult": 108, "shift": 114, "gmult": 117, "end": 117
    }  # fmt: skip
    got, b, mu, sh = TileSpec.decode(blob, 3, 32, 1, 1, 8, True, GEO)
    assert np.array_equal(got, codes) and np.array_equal(b, bias)
    assert np.array_equal(mu, mult) and np.array_equal(sh, shift)


def test_dense_partial_block_is_zero_padded() -> None:
    codes = np.arange(2 * 20).reshape(2, 20) - 20
    _, mult, shift = _params(2)
    blob = encode_tile(codes, None, None, mult, shift, 1, 1, 8, GEO)
    u = codes.astype(np.int8).view(np.uint8)
    z = np.zeros(12, np.uint8)
    want = np.concatenate([u[0, :16], u[1, :16], u[0, 16:], z, u[1, 16:], z])
    assert np.array_equal(blob[:64], want)
    assert np.array_equal(TileSpec.decode(blob, 2, 20, 1, 1, 8, False, GEO)[0], codes)


def test_partial_stripe_records_hold_only_its_rows() -> None:
    """5 rows at 8:16 INT3 (stripes of 4 rows): a whole stripe's record is 4 x 8 values (12
    bytes) + 4 x 8 indices (16 bytes); the last stripe's one row 3 + 4 bytes."""
    vals = np.arange(5 * 8).reshape(5, 8) % 7 - 3
    idx = np.tile(np.arange(0, 16, 2), (5, 1))
    _, mult, shift = _params(5)
    blob = encode_tile(vals, idx, None, mult, shift, 8, 16, 3, GEO)
    assert TileSpec.sections(5, 16, 8, 16, 3, False, GEO)["bias"] == 12 + 16 + 3 + 4
    last = int.from_bytes(blob[28:31].tobytes(), "little")
    assert [(last >> (3 * i)) & 7 for i in range(8)] == [int(v) & 7 for v in vals[4]]
    assert blob[31:35].tolist() == [idx[4, 2 * i] | idx[4, 2 * i + 1] << 4 for i in range(4)]
    got = TileSpec.decode(blob, 5, 16, 8, 16, 3, False, GEO)[0]
    assert np.array_equal(got, nm_expand(vals.astype(np.int8), idx.astype(np.uint8), 8, 16))


def test_sparse_int4_record_packs_sixteen_rows_then_their_indices() -> None:
    """2:16 INT4: a stripe is 16 rows (8 per chain, one per 2-value segment); one block gives
    a record of 32 values (16 bytes) then 32 indices (16 bytes)."""
    rng = np.random.default_rng(3)
    vals = rng.integers(-7, 8, (16, 2))
    idx = np.sort(np.stack([rng.choice(16, 2, replace=False) for _ in range(16)]), axis=1)
    _, mult, shift = _params(16)
    blob = encode_tile(vals, idx, None, mult, shift, 2, 16, 4, GEO)
    want_v = [(vals[r, 0] & 15) | (vals[r, 1] & 15) << 4 for r in range(16)]
    want_i = [idx[r, 0] | idx[r, 1] << 4 for r in range(16)]
    assert blob[:16].tolist() == want_v and blob[16:32].tolist() == want_i
    assert blob.size == 32 + 3 * 16
    codes = TileSpec.decode(blob, 16, 16, 2, 16, 4, False, GEO)[0]
    assert np.array_equal(codes, nm_expand(vals.astype(np.int8), idx.astype(np.uint8), 2, 16))


@pytest.mark.parametrize("bits", [2, 3])
def test_narrow_values_fill_whole_records(bits: int) -> None:
    """32 slots of 2 or 3 bits are 8 or 12 bytes a record; the little-endian bit stream runs
    row by row through the stripe."""
    codes = (np.arange(2 * 16).reshape(2, 16) % 3) - 1
    blob = encode_tile(codes, None, None, np.ones(2), np.zeros(2), 16, 16, bits, GEO)
    stream = 0
    for i, v in enumerate(codes.ravel()):
        stream |= (int(v) & ((1 << bits) - 1)) << (i * bits)
    assert blob[: 4 * bits].tobytes() == stream.to_bytes(4 * bits, "little")


def test_a_tile_of_no_rows_decodes_empty() -> None:
    blob = encode_tile(np.zeros((0, 16)), None, None, np.zeros(0), np.zeros(0), 1, 1, 8, GEO)
    codes, bias, mult, shift = TileSpec.decode(blob, 0, 16, 1, 1, 8, False, GEO)
    assert codes.shape == (0, 16) and bias is None and mult.size == shift.size == 0


def test_group_multipliers_are_the_trailing_section() -> None:
    """G = 16 over K = 32: two uint8 multipliers per row after the shifts, per stripe (two
    dense rows on the tiny stripe) group by group; the sections before them are those of the
    same tile without a group."""
    codes = (np.arange(3 * 32).reshape(3, 32) % 17 - 8).astype(np.int64)
    bias, mult, shift = _params(3)
    gm = np.array([[1, 2], [250, 3], [7, 255]])
    plain = encode_tile(codes, None, bias, mult, shift, 1, 1, 8, GEO)
    blob = encode_tile(codes, None, bias, mult, shift, 1, 1, 8, GEO, gm)
    assert np.array_equal(blob, np.concatenate([plain, [1, 250, 2, 3, 7, 255]]))
    at = TileSpec.sections(3, 32, 1, 1, 8, True, GEO, 16)
    assert (at["gmult"], at["end"]) == (117, 123)
    assert np.array_equal(TileSpec.decode_groups(blob, 3, 32, 1, 1, GEO, at, 16), gm)
    assert TileSpec.decode_groups(blob, 3, 32, 1, 1, GEO, at, None) is None
