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


def _tiny_image_parts(max_len: int):
    """tiny-llama compiled for ``tiny`` at ``max_len`` and its quantized model (w8a8)."""
    from hwflow.compiler import compile_model
    from hwflow.compress import quantize_model, random_weights
    from hwflow.config import load_hw, load_model, load_plan

    cfg, plan = load_model("tiny-llama"), load_plan("w8a8")
    comp = compile_model(cfg, plan, load_hw("tiny"), max_len)
    return cfg, comp.layout, quantize_model(cfg, plan, random_weights(cfg, 1))


def test_rope_table_fills_its_region_and_nothing_after_it():
    """The model's RoPE tables have a row per position the model knows (tiny-llama: 512),
    the layout compiled for 64 positions a region of whole rows (``hd/2`` INT16 cos, then
    ``hd/2`` sin, each row) for 64 rounded up to the channel period. The image holds the
    first rows that fit there, read back by hand as little-endian int16; every byte after
    the region (KV cache, input, logits) stays 0."""
    from hwflow.compiler.layout import build_hbm_image

    cfg, layout, qm = _tiny_image_parts(64)
    half = cfg.head_dim // 2
    assert qm.rope_cos.shape == (cfg.max_positions, half) and cfg.max_positions == 512
    rb = layout.region("rope")
    row = 4 * half  # bytes: half int16 cos + half int16 sin
    assert layout.rope_row == row and 64 * row <= rb.size < 512 * row
    img = build_hbm_image(layout, qm)
    got = img[rb.base : rb.base + rb.size].view("<i2").reshape(-1, 2 * half)
    n = rb.size // row
    assert got.shape[0] == n >= 64
    assert got[:, :half].tolist() == qm.rope_cos[:n].tolist()
    assert got[:, half:].tolist() == qm.rope_sin[:n].tolist()
    assert not img[rb.base + rb.size :].any()


def test_output_width_refusal_names_both_widths():
    """A gate projection writes INT16 (the SiLU input, numerics contract); a model whose gate
    says 8-bit outputs is refused with both widths and the op named."""
    from dataclasses import replace

    import pytest

    from hwflow.compiler.layout import build_hbm_image
    from hwflow.errors import ConfigError

    _, layout, qm = _tiny_image_parts(64)
    linears = dict(qm.linears)
    linears["L0.gate"] = replace(linears["L0.gate"], out_bits=8)
    with pytest.raises(ConfigError) as err:
        build_hbm_image(layout, replace(qm, linears=linears))
    assert str(err.value) == "L0.gate: the program writes 16-bit outputs, the model 8-bit"
