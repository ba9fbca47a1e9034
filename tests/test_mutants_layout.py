"""Killing tests for compiler/layout.py mutants (tests/mutation/EQUIVALENT.md): values by hand."""

from __future__ import annotations

import numpy as np
import pytest

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


def _tiny_image_parts(max_len: int, plan: str = "w8a8", model_plan: str | None = None):
    """tiny-llama compiled for ``tiny`` at ``max_len`` under ``plan`` and quantized under
    ``model_plan`` (default: the same)."""
    from hwflow.compiler import compile_model
    from hwflow.compress import quantize_model, random_weights
    from hwflow.config import load_hw, load_model, load_plan

    cfg = load_model("tiny-llama")
    comp = compile_model(cfg, load_plan(plan), load_hw("tiny"), max_len)
    qm = quantize_model(cfg, load_plan(model_plan or plan), random_weights(cfg, 1))
    return cfg, comp.layout, qm


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


def test_kv_head_stride_is_a_granule_count_coprime_with_the_channels():
    """tiny: 256-byte granules over 4 channels. 512 bytes are 2 granules, 2 and 4 share a
    factor, so 3 granules (768 bytes); 1024 bytes: 4 -> 5 granules (1280); 767 bytes round up
    to 3 granules, already coprime (768)."""
    from hwflow.compiler.layout import _kv_head_stride
    from hwflow.config import load_hw

    tiny = load_hw("tiny")
    assert [_kv_head_stride(n, tiny) for n in (512, 1024, 767)] == [768, 1280, 768]


def test_a_tile_of_five_dense_rows_is_three_stripes():
    """Dense INT8, K = 16 (one block) on the tiny stripe of 2 rows: stripes of rows (0, 1),
    (2, 3) and (4): each row's 16 bytes in row order, then the uint16 multipliers and int8
    shifts."""
    codes = (np.arange(5 * 16).reshape(5, 16) * 7 % 255 - 127).astype(np.int64)
    mult, shift = np.arange(5) + 300, np.arange(5) - 2
    blob = encode_tile(codes, None, None, mult, shift, 1, 1, 8, GEO)
    want = np.concatenate(
        [codes.astype(np.int8).view(np.uint8).ravel(), mult.astype("<u2").view(np.uint8),
         shift.astype("i1").view(np.uint8)]
    )  # fmt: skip
    assert np.array_equal(blob, want)


def test_group_multipliers_of_a_tile_without_rows():
    """A tile of no rows with a weight group of 16 over K = 32 has an empty [0, 2] array of
    group multipliers (two groups per row)."""
    at = TileSpec.sections(0, 32, 1, 1, 8, False, GEO, 16)
    got = TileSpec.decode_groups(np.zeros(0, np.uint8), 0, 32, 1, 1, GEO, at, 16)
    assert got.shape == (0, 2) and got.dtype == np.int64


def _probe(out: int, bits: int, n: int, m: int) -> TileSpec:
    from hwflow.config.plan import LinearQuant

    q = LinearQuant(bits=bits, n=n, m=m)
    return TileSpec("gate", out, 16, q, False, True, 1, 0, GEO)


def test_tile_rows_by_hand():
    """Rows per tile on the tiny stripe, K = 16 (one block), no bias, by the format's sizes:
    * dense INT8: a row is 16 value bytes + 2 (mult) + 1 (shift) = 19 bytes. 5 rows in a
      1000-byte slot: all 5 (the whole op; no rounding to the 2-row chain groups);
    * 2:16 INT3: a tile of R <= 16 rows (one stripe) holds ceil(6 R / 8) value bytes and R
      index bytes, 19 bytes at R = 4: a 19-byte slot holds exactly 4 of 16 rows (the
      stripe average, 76 / 16 -> 5 bytes a row, guesses 3);
    * a 18-byte slot cannot hold one dense INT8 row: refused with both sizes."""
    from hwflow.compiler.layout import _tile_rows
    from hwflow.errors import CapacityError

    assert _tile_rows(_probe(5, 8, 1, 1), 1000, 2, "L0.gate") == 5
    assert _tile_rows(_probe(5, 8, 1, 1), 19, 2, "L0.gate") == 1  # one row fills the slot
    assert _probe(16, 3, 2, 16).tile_bytes(4) == 19
    assert _tile_rows(_probe(16, 3, 2, 16), 19, 1, "L0.gate") == 4
    with pytest.raises(CapacityError) as err:
        _tile_rows(_probe(5, 8, 1, 1), 18, 2, "L0.gate")
    assert str(err.value) == (
        "L0.gate: one weight row needs 19 bytes but a weight slot (1/2 of "
        "buffers.weight_kib) holds 18 bytes"
    )


@pytest.mark.parametrize("plan", ["w8a8", "flightllm"])
def test_every_weight_tile_in_the_image_holds_its_rows(plan):
    """tiny-llama w8a8 on tiny at 64 positions: gate, up and down need two tiles (122 + 6,
    122 + 6, 62 + 2 rows) and the head three (122, 122, 12); under flightllm the layers are
    8:16 sparse (each record a block's values, then its indices). Every tile decoded from the image
    (TileSpec.decode, the format's reader) holds exactly its rows' codes, multipliers and
    shifts: a tile written with more rows would put values where its multipliers go."""
    from hwflow.compiler.layout import build_hbm_image

    _, layout, qm = _tiny_image_parts(64, plan)
    img = build_hbm_image(layout, qm)
    shapes = {ts.name: [r for _, r, _ in ts.tiles] for ts in layout.tiles[0]}
    if plan == "w8a8":
        assert shapes["gate"] == shapes["up"] == [122, 6] and shapes["down"] == [62, 2]
    else:  # 8:16 sparse layers: values and indices, 4 blocks of K = 64 per row
        assert all(ts.quant.n == 8 and ts.quant.m == 16 for ts in layout.tiles[0])
    assert [r for _, r, _ in layout.head.tiles] == [122, 122, 12]
    placed = [(layout.region(f"L{li}").base, ts, f"L{li}.{ts.name}") for li in layout.tiles
              for ts in layout.tiles[li]]  # fmt: skip
    placed.append((layout.region("final").base, layout.head, "head"))
    for base, ts, name in placed:
        ql, q = qm.linears[name], ts.quant
        for r0, r, off in ts.tiles:
            codes, bias, mult, shift = TileSpec.decode(
                img[base + off :], r, ts.k, q.n, q.m, q.bits, ts.bias, GEO
            )
            assert np.array_equal(codes, ql.codes[r0 : r0 + r]), (name, r0)
            assert np.array_equal(mult, ql.mult[r0 : r0 + r]), (name, r0)
            assert np.array_equal(shift, ql.shift[r0 : r0 + r]), (name, r0)
            assert bias is None


def _templates():
    from hwflow.isa import Template, decode_stream, encode_stream, make

    def t(instrs):
        return Template("decode", 1, 64, decode_stream(encode_stream([*instrs, make("END")])))

    return [t([make("LOOP", count=3), make("ENDLOOP")]), t([make("SETI", rd=3, imm=-5)])]


def test_program_image_places_templates_at_aligned_offsets():
    """Two templates: the first's words from byte 0, the second's at the next multiple of 64;
    the words little-endian, the gap zero; the offsets returned are the templates' own."""
    from hwflow.compiler.layout import program_image

    ts = _templates()
    img, offs = program_image(ts)
    n0, n1 = 4 * len(ts[0].words), 4 * len(ts[1].words)
    assert n0 <= 64 and offs == [0, 64] and img.size == 64 + -(-n1 // 64) * 64
    for t, at in zip(ts, (0, 64), strict=True):
        raw = b"".join(w.to_bytes(4, "little") for w in t.words)
        assert img[at : at + len(raw)].tobytes() == raw
    assert not img[n0:64].any() and not img[64 + n1 :].any()


def test_program_region_fits_up_to_the_last_byte():
    """The program region starts at the next multiple of 64 and ends at most at the preset's
    HBM capacity (tiny: 1 GiB): placed to end exactly there it fits; 64 bytes later it is
    refused, naming its size, where it starts and the capacity."""
    from hwflow.compiler.layout import Region, place_program
    from hwflow.config import load_hw
    from hwflow.errors import CapacityError

    ts, tiny = _templates(), load_hw("tiny")
    size = 64 + -(-4 * len(ts[1].words) // 64) * 64
    cap = 2**30
    assert place_program(cap - size - 63, ts, tiny) == Region(
        "program", cap - size, size, "program"
    )
    with pytest.raises(CapacityError) as err:
        place_program(cap - size + 1, ts, tiny)
    assert str(err.value) == (
        f"the program ({size} bytes) does not fit after 1024.00 MiB of HBM data in preset "
        "tiny's 1.00 GiB (hbm.capacity_gib)"
    )


def test_weight_group_refusal_names_both_groups():
    """A layout compiled for 32-input weight groups refuses a model quantized with groups of
    64, at its first linear op, naming both."""
    from hwflow.compiler.layout import build_hbm_image
    from hwflow.errors import ConfigError

    _, layout, qm = _tiny_image_parts(64, "w4a8-gptq-g32", "w4a8-gptq-g64")
    with pytest.raises(ConfigError) as err:
        build_hbm_image(layout, qm)
    assert str(err.value) == "L0.q: the layout assumed weight group 32, the model has 64"


def test_capacity_refusal_word_for_word():
    """tiny-llama / flightllm at max_len 16: the layout that fits (tiny, 1 GiB) has 57 KiB of
    weight regions and a 2 KiB KV cache per sequence; with rope and I/O regions it needs
    65 KiB, 68 KiB for 2 sequences and 71 KiB for 3 (a KV cache and a row of logits each).
    Copies of tiny with 64, 66 and 68 KiB of HBM refuse, naming those sizes; with several
    sequences the refusal also says how many fit: (66 - (68 - 4)) KiB // 2 KiB = 1 and
    (68 - (71 - 6)) KiB // 2 KiB = 1."""
    from hwflow.compiler import compile_model
    from hwflow.config import load_hw, load_model, load_plan
    from hwflow.errors import CapacityError

    hw, cfg, plan = load_hw("tiny"), load_model("tiny-llama"), load_plan("flightllm")
    fits = compile_model(cfg, plan, hw, 16).layout
    assert sum(r.size for r in fits.regions if r.kind == "weights") == 57 * 1024
    assert fits.region("kv").size == 2 * 1024 and fits.total == 65 * 1024

    def refusal(kib: int, batch: int) -> str:
        small = hw.model_copy(
            update={"hbm": hw.hbm.model_copy(update={"capacity_gib": kib / 2**20})}
        )
        with pytest.raises(CapacityError) as err:
            compile_model(cfg, plan, small, 16, batch)
        return str(err.value)

    head = "tiny-llama / flightllm on preset tiny at max_len 16"
    assert refusal(64, 1) == (
        f"{head}: the model needs 65.00 KiB of HBM (57.00 KiB weights, 2.00 KiB KV cache at "
        "max_len 16) but preset tiny has 64.00 KiB (hbm.capacity_gib)"
    )
    assert refusal(66, 2) == (
        f"{head}, batch 2: the model needs 68.00 KiB of HBM (57.00 KiB weights, 4.00 KiB 2 "
        "sequences' KV caches at max_len 16) but preset tiny has 66.00 KiB (hbm.capacity_gib)"
        "; at max_len 16 1 sequences fit"
    )
    # on tiny itself two sequences fit: their KV caches 2 KiB apart (2 layers x K and V of
    # 2 kv heads x 16 positions x 16 dims, one byte each)
    two = compile_model(cfg, plan, hw, 16, 2).layout
    assert (two.batch, two.kv_seq_bytes, two.region("kv").size) == (2, 2048, 4096)
    assert refusal(68, 3) == (
        f"{head}, batch 3: the model needs 71.00 KiB of HBM (57.00 KiB weights, 6.00 KiB 3 "
        "sequences' KV caches at max_len 16) but preset tiny has 68.00 KiB (hbm.capacity_gib)"
        "; at max_len 16 1 sequences fit"
    )


def test_a_head_row_too_wide_for_a_weight_slot_is_named():
    """tiny-llama widened to hidden = intermediate = 768 under w4a8 (INT4 layers, INT8 head) on
    a copy of tiny with a 1 KiB weight buffer (two 512-byte slots): a layer row is 384 INT4
    bytes + 3, which fits; a head row is 768 INT8 bytes + 2 (mult) + 1 (shift) = 771, which
    does not: refused, naming the head."""
    from hwflow.compiler import compile_model
    from hwflow.config import load_hw, load_model, load_plan
    from hwflow.errors import CapacityError

    cfg = load_model("tiny-llama")
    wide = cfg.model_copy(update={"hidden": 768, "intermediate": 768, "head_dim": 768 // cfg.heads})
    hw = load_hw("tiny")
    hw = hw.model_copy(update={"buffers": hw.buffers.model_copy(update={"weight_kib": 1})})
    with pytest.raises(CapacityError) as err:
        compile_model(wide, load_plan("w4a8"), hw, 16)
    assert str(err.value) == (
        "tiny-llama / w4a8 on preset tiny at max_len 16: head: one weight row needs 771 bytes "
        "but a weight slot (1/2 of buffers.weight_kib) holds 512 bytes"
    )


def test_the_most_negative_code_unpacks_signed():
    """-8 (INT4), -4 (INT3) and -128 (INT8) are the codes whose raw field is exactly the sign
    bit: 0b1000, 0b100, 0x80; they read back negative, next to the largest positive code."""
    from hwflow.compiler.layout import pack_rows, unpack_rows

    for bits, lo in ((4, -8), (3, -4), (8, -128)):
        row = np.array([[lo, -lo - 1]])
        got = unpack_rows(pack_rows(row, bits), bits, 1, 2, signed=True)
        assert got.tolist() == [[lo, -lo - 1]], bits


def test_bias_refusal_names_the_op():
    """A layout without bias (tiny-llama) refuses a model whose q projection has one."""
    from dataclasses import replace

    from hwflow.compiler.layout import build_hbm_image
    from hwflow.errors import ConfigError

    _, layout, qm = _tiny_image_parts(64)
    linears = dict(qm.linears)
    q = linears["L0.q"]
    linears["L0.q"] = replace(q, bias=np.zeros(q.mult.shape[0], np.int64))
    with pytest.raises(ConfigError) as err:
        build_hbm_image(layout, replace(qm, linears=linears))
    assert str(err.value) == "L0.q: the layout assumed bias=False, the model disagrees"


def test_sparse_tiles_are_whole_row_groups():
    """flightllm runs the layers at 8:16 (INT4): the MV takes 2 chains x 16 / 8 = 4 rows a
    beat. With a 1 KiB weight buffer (two 512-byte slots), a K = 64 row holds 4 blocks of
    8 values and 8 indices (4 + 4 bytes) plus 3 bytes of scale: 35 bytes, 14 rows fit,
    rounded down to 12; a K = 128 row (down) is 67 bytes, 7 fit, rounded to 4."""
    from hwflow.compiler import compile_model
    from hwflow.config import load_hw, load_model, load_plan

    hw = load_hw("tiny")
    hw = hw.model_copy(update={"buffers": hw.buffers.model_copy(update={"weight_kib": 1})})
    layout = compile_model(load_model("tiny-llama"), load_plan("flightllm"), hw, 16).layout
    got = {ts.name: (ts.quant.n, ts.quant.m, ts.tile_bytes(1), ts.rows) for ts in layout.tiles[0]}
    want = dict.fromkeys(("q", "k", "v", "o", "gate", "up"), (8, 16, 35, 12))
    assert got == want | {"down": (8, 16, 67, 4)}


def test_decoded_tiles_are_integers():
    """The decoded codes are int8 (also of a tile without rows) and the bias, multipliers and
    shifts int64, as the reader documents: a reference multiply must not go float."""
    codes = np.array([[1, -2] * 8, [3, -4] * 8])
    bias, mult, shift = np.array([-70000, 5]), np.array([300, 301]), np.array([-2, 3])
    blob = encode_tile(codes, None, bias, mult, shift, 1, 1, 8, GEO)
    got = TileSpec.decode(blob, 2, 16, 1, 1, 8, True, GEO)
    assert [a.dtype for a in got] == [np.int8, np.int64, np.int64, np.int64]
    assert got[1].tolist() == [-70000, 5]
    empty = encode_tile(np.zeros((0, 16)), None, None, np.zeros(0), np.zeros(0), 1, 1, 8, GEO)
    assert TileSpec.decode(empty, 0, 16, 1, 1, 8, False, GEO)[0].dtype == np.int8


def test_a_biased_model_with_rms_norm_has_no_head_bias():
    """tiny-llama with biases on its linear ops (RMSNorm folds no beta): every layer op's
    tiles carry a bias section, the head's do not (the head has no bias of its own); the
    image of such a model builds, each tile decoded from it holding its rows' codes and
    biases."""
    from hwflow.compiler import compile_model
    from hwflow.compiler.layout import build_hbm_image
    from hwflow.compress import quantize_model, random_weights
    from hwflow.config import load_hw, load_model, load_plan

    cfg = load_model("tiny-llama").model_copy(update={"bias": True})
    plan = load_plan("w8a8")
    layout = compile_model(cfg, plan, load_hw("tiny"), 16).layout
    assert all(ts.bias for ts in layout.tiles[0]) and not layout.head.bias
    qm = quantize_model(cfg, plan, random_weights(cfg, 1))
    img = build_hbm_image(layout, qm)
    assert img.size == layout.total
    base = layout.region("L0").base
    for ts in layout.tiles[0]:  # each tile holds its rows' codes and INT32 biases
        ql, q = qm.linears[f"L0.{ts.name}"], ts.quant
        for r0, r, off in ts.tiles:
            codes, bias, _, _ = TileSpec.decode(
                img[base + off :], r, ts.k, q.n, q.m, q.bits, True, GEO
            )
            assert np.array_equal(codes, ql.codes[r0 : r0 + r]), ts.name
            assert np.array_equal(bias, ql.bias[r0 : r0 + r]), ts.name


def test_engines_with_different_chain_lengths_are_refused():
    """One weight tile format serves the MV and MM engines, so their chain lengths must agree:
    a copy of tiny whose MM engine has chains of 8 is refused, naming both."""
    from hwflow.compiler.layout import BeatGeometry
    from hwflow.config import load_hw
    from hwflow.errors import ConfigError

    hw = load_hw("tiny")
    odd = hw.model_copy(update={"mpe": hw.mpe.model_copy(update={"chain_length": 8})})
    with pytest.raises(ConfigError) as err:
        BeatGeometry.from_preset(odd)
    assert str(err.value) == (
        "preset tiny: mv.chain_length 16 and mpe.chain_length 8 differ; one weight tile format "
        "serves both engines"
    )


def test_biased_tiles_fit_their_slot():
    """tiny-llama with biases, w8a8, on a copy of tiny with a 3 KiB weight buffer (two
    1536-byte slots): a q row is 64 INT8 values + 4 (bias) + 2 (mult) + 1 (shift) = 71
    bytes, so 21 rows fit, 20 in whole 2-row groups (1420 bytes); sized without the bias
    (67 bytes a row) it would take 22 rows, 1562 bytes, more than the slot. Every tile fits."""
    from hwflow.compiler import compile_model
    from hwflow.config import load_hw, load_model, load_plan

    cfg = load_model("tiny-llama").model_copy(update={"bias": True})
    hw = load_hw("tiny")
    hw = hw.model_copy(update={"buffers": hw.buffers.model_copy(update={"weight_kib": 3})})
    layout = compile_model(cfg, load_plan("w8a8"), hw, 16).layout
    q = next(ts for ts in layout.tiles[0] if ts.name == "q")
    assert (q.tile_bytes(1), q.rows, q.tile_bytes(q.rows)) == (71, 20, 1420)
    assert all(ts.tile_bytes(ts.rows) <= 1536 for ts in layout.tiles[0])


def test_parameter_blob_offsets_by_hand():
    """The module doc's blob on tiny-llama (hidden 64, 4 heads, 7 linear ops): a norm record is
    an int32 pre-shift and 64 INT16 gains, 132 bytes; norm1 at 0, norm2 at 132, the seven
    int32 guards from 264, the scores' (mult, shift) per head from 264 + 28 = 292, the pv's
    (mult, shift, guard) per head from 292 + 32 = 324, the act's (mult, shift) at 324 + 48 =
    372, ending at 380: 384 bytes (whole 64-byte units). With one head: scores at 292, pv at
    300, act at 312, ending at exactly 320. The final blob: the norm record at 0, the head's
    guard at 132, 192 bytes; at hidden 28 the record is 60 bytes, the guard ends at exactly 64."""
    from hwflow.compiler.layout import final_blob, param_blob
    from hwflow.config import load_model

    cfg = load_model("tiny-llama")
    assert (cfg.hidden, cfg.heads, len(cfg.linear_ops)) == (64, 4, 7)
    blob = param_blob(cfg)
    guards = {f"{op}.guard": 264 + 4 * i for i, op in enumerate(cfg.linear_ops)}
    want = {"norm1": 0, "norm2": 132, **guards, "scores": 292, "pv": 324, "act": 372}
    assert (dict(blob.offsets), blob.size) == (want, 384)
    one = param_blob(cfg.model_copy(update={"heads": 1}))
    assert (one["scores"], one["pv"], one["act"], one.size) == (292, 300, 312, 320)
    fin = final_blob(cfg)
    assert (dict(fin.offsets), fin.size) == ({"norm": 0, "head.guard": 132}, 192)
    fin = final_blob(cfg.model_copy(update={"hidden": 28}))
    assert (dict(fin.offsets), fin.size) == ({"norm": 0, "head.guard": 60}, 64)


def test_a_missing_region_is_named():
    """Asking a layout for a region it does not have raises KeyError naming it."""
    from hwflow.compiler.layout import HbmLayout
    from hwflow.isa import Region

    lay = HbmLayout((Region("kv", 0, 64, "kv"),), (), {}, None, 0, 0, 0, 64)  # type: ignore[arg-type]
    assert lay.region("kv").size == 64
    with pytest.raises(KeyError) as err:
        lay.region("rope")
    assert err.value.args == ("rope",)


def _plan_layout(model: str, plan: str, hw=None, **update):
    """The layout of ``model`` (its config updated by ``update``) under ``plan`` on ``hw``
    (default tiny) at max_len 16, planned alone (no program placed after it)."""
    from hwflow.compiler.layout import plan_hbm
    from hwflow.config import load_hw, load_model, load_plan

    cfg = load_model(model).model_copy(update=update)
    p = load_plan(plan)
    return cfg, plan_hbm(cfg, p.resolve(cfg), p.head(), hw or load_hw("tiny"), 16)


def test_a_layout_planned_without_a_batch_holds_one_sequence():
    """plan_hbm's batch defaults to one sequence: one KV cache (tiny-llama at max_len 16:
    2 KiB, 2 layers x K and V of 2 kv heads x 16 positions x 16 dims) and one row of logits."""
    _, lay = _plan_layout("tiny-llama", "w8a8")
    assert (lay.batch, lay.kv_seq_bytes, lay.region("kv").size) == (1, 2048, 2048)


def test_layer_norm_betas_make_biased_tiles_of_the_ops_they_feed():
    """tiny-opt without its own biases: the LayerNorm betas fold into q, k, v (after norm1)
    and up (after norm2) as INT32 biases; o and down keep none."""
    _, lay = _plan_layout("tiny-opt", "w8a8", bias=False)
    got = {ts.name: ts.bias for ts in lay.tiles[0]}
    assert got == {"q": True, "k": True, "v": True, "o": False, "up": True, "down": False}


def test_a_layer_row_too_wide_for_a_weight_slot_is_named():
    """tiny-llama widened to hidden = intermediate = 768 (w8a8: INT8 everywhere) on a copy of
    tiny with a 1 KiB weight buffer (two 512-byte slots): the first layer op's row, 768 INT8
    bytes + 2 (mult) + 1 (shift) = 771, does not fit: refused, naming layer 0's q."""
    from hwflow.compiler import compile_model
    from hwflow.config import load_hw, load_model, load_plan
    from hwflow.errors import CapacityError

    cfg = load_model("tiny-llama")
    wide = cfg.model_copy(update={"hidden": 768, "intermediate": 768, "head_dim": 768 // cfg.heads})
    hw = load_hw("tiny")
    hw = hw.model_copy(update={"buffers": hw.buffers.model_copy(update={"weight_kib": 1})})
    with pytest.raises(CapacityError) as err:
        compile_model(wide, load_plan("w8a8"), hw, 16)
    assert str(err.value) == (
        "tiny-llama / w8a8 on preset tiny at max_len 16: L0.q: one weight row needs 771 bytes "
        "but a weight slot (1/2 of buffers.weight_kib) holds 512 bytes"
    )


def test_slot_factors_are_muli_immediates():
    """The factors go into MULI immediates: integers that encode and read back."""
    from hwflow.isa import decode_stream, encode_stream, make

    a, b = slot_factors(3 * 2**21)
    words = encode_stream([make("MULI", rd=4, ra=15, imm=a), make("MULI", rd=4, ra=4, imm=b)])
    assert [i.fields["imm"] for i in decode_stream(words)] == [6, 2**20]
    assert type(a) is int and type(b) is int


def test_readers_take_the_bytes_as_any_array():
    """The tile's bytes read back the same from a list of byte values (decode, unpack_rows)
    and from a signed view (decode_groups: multipliers of 128 and up stay unsigned);
    pack_rows packs fields of any integer dtype (uint64 too). unpack_rows refuses bytes that
    are not its rows x whole rows (4 INT4 fields: 2 bytes a row; 6 bytes for 2 rows)."""
    from hwflow.compiler.layout import pack_rows, unpack_rows

    codes = np.array([[1, -2] * 8, [3, -4] * 8])
    bias, mult, shift = np.array([-70000, 5]), np.array([300, 301]), np.array([-2, 3])
    blob = encode_tile(codes, None, bias, mult, shift, 1, 1, 8, GEO)
    got = TileSpec.decode(blob.tolist(), 2, 16, 1, 1, 8, True, GEO)
    assert [g.tolist() for g in got] == [codes.tolist(), [-70000, 5], [300, 301], [-2, 3]]
    assert unpack_rows([0x21, 0x43], 4, 1, 4, False).tolist() == [[1, 2, 3, 4]]
    assert pack_rows(np.array([[5, 250]], np.uint64), 8).tolist() == [[5, 250]]
    with pytest.raises(ValueError):
        unpack_rows(np.zeros(6, np.uint8), 4, 2, 4, False)
    gm = np.array([[200, 7], [130, 255]])
    g = encode_tile(codes[:, :16], None, None, mult, shift, 1, 1, 8, GEO, gm)
    at = TileSpec.sections(2, 16, 1, 1, 8, False, GEO, 8)
    got = TileSpec.decode_groups(g.view(np.int8), 2, 16, 1, 1, GEO, at, 8)
    assert got.dtype == np.int64 and got.tolist() == gm.tolist()


def test_group_multipliers_are_written_as_bytes():
    """encode_tile writes the group multipliers one byte each whatever array holds them
    (here int64): two rows (one stripe) of K = 16 in groups of 8, rows' multipliers group by
    group after the 32 code bytes, 4 multiplier and 2 shift bytes."""
    codes = np.zeros((2, 16), np.int64)
    mult, shift = np.array([1, 2]), np.array([0, 0])
    g = encode_tile(codes, None, None, mult, shift, 1, 1, 8, GEO, np.array([[200, 7], [130, 255]]))
    assert g.dtype == np.uint8 and g[38:].tolist() == [200, 130, 7, 255]


def test_a_dense_tile_of_m_columns_per_block_decodes():
    """Dense at N = M = 16 (the preset's sparsity.m, as the compiler stores dense ops): no
    index bits; the codes decode back."""
    codes = (np.arange(2 * 32).reshape(2, 32) % 200 - 100).astype(np.int64)
    mult, shift = np.array([3, 4]), np.array([5, 6])
    blob = encode_tile(codes, None, None, mult, shift, 16, 16, 8, GEO)
    got = TileSpec.decode(blob, 2, 32, 16, 16, 8, False, GEO)
    assert np.array_equal(got[0], codes)


def test_a_biased_head_is_sized_with_its_bias():
    """tiny-opt (LayerNorm: the final norm's beta folds into the head as an INT32 bias), w8a8,
    on a copy of tiny with a 3 KiB weight buffer (two 1536-byte slots): a head row is 64 INT8
    values + 4 + 2 + 1 = 71 bytes, 21 rows fit, 20 in whole 2-row groups; sized without the
    bias (67 bytes) it would take 22 rows, 1562 bytes, more than the slot."""
    from hwflow.config import load_hw

    hw = load_hw("tiny")
    hw = hw.model_copy(update={"buffers": hw.buffers.model_copy(update={"weight_kib": 3})})
    head = _plan_layout("tiny-opt", "w8a8", hw=hw)[1].head
    assert (head.bias, head.tile_bytes(1), head.rows, head.tile_bytes(head.rows)) == (
        True, 71, 20, 1420
    )  # fmt: skip


def test_a_model_with_learned_positions_has_no_rope_table():
    """tiny-opt learns its position embeddings: no RoPE rows, no rope region."""
    _, lay = _plan_layout("tiny-opt", "w8a8")
    assert lay.rope_row == 0
    assert [r.name for r in lay.regions] == ["L0", "L1", "final", "kv", "input", "logits"]


def test_v_heads_start_half_the_channels_after_their_k_heads():
    """tiny-llama with one kv head at max_len 16: a head is 16 positions x 16 dims = 256
    bytes, one granule; the V head starts half of tiny's 4 channels (2 granules, 512 bytes)
    after the K head, and a layer's K and V fit one 1024-byte period."""
    _, lay = _plan_layout("tiny-llama", "w8a8", kv_heads=1)
    assert (lay.kv_head_bytes, lay.kv_v_offset, lay.kv_layer_bytes) == (256, 512, 1024)


def test_a_layout_may_fill_the_hbm_to_its_last_byte():
    """tiny-llama / flightllm at max_len 16 needs 65 KiB (test_capacity_refusal_word_for_word):
    a copy of tiny with exactly 65 KiB of HBM holds it; with 64 KiB it is refused."""
    from hwflow.config import load_hw
    from hwflow.errors import CapacityError

    hw = load_hw("tiny")

    def sized(kib):
        return hw.model_copy(
            update={"hbm": hw.hbm.model_copy(update={"capacity_gib": kib / 2**20})}
        )

    assert _plan_layout("tiny-llama", "flightllm", hw=sized(65))[1].total == 65 * 1024
    with pytest.raises(CapacityError):
        _plan_layout("tiny-llama", "flightllm", hw=sized(64))


def test_a_tile_guess_above_the_slot_steps_down_one_row_at_a_time():
    """1:16 INT3 on the tiny stripe (32-row stripes), K = 16: a tile of R rows holds
    ceil(3 R / 8) value bytes, ceil(R / 2) index bytes and 3 R bytes of multipliers and
    shifts: 5, 8, 13 bytes for 1, 2, 3 rows; a whole stripe 12 + 16 + 96 = 124, 4 bytes a row
    on average. A 12-byte slot: the average guesses 3 rows (13 bytes, too many), so 2."""
    from hwflow.compiler.layout import _tile_rows

    p = _probe(32, 3, 1, 16)
    assert [p.tile_bytes(r) for r in (1, 2, 3)] == [5, 8, 13] and p.row_bytes == 4
    assert _tile_rows(p, 12, 1, "L0.gate") == 2


def test_a_record_of_a_whole_stripe_by_default():
    """The tiny stripe (2 chains of 16): without a row count a record is a whole stripe's:
    dense INT8, 2 rows of 16 values (32 bytes, no indices); 8:16 INT4, 4 rows of 8 values and
    8 four-bit indices (16 + 16 bytes)."""
    assert GEO.record_bytes(16, 16, 8) == (32, 0)
    assert GEO.record_bytes(8, 16, 4) == (16, 16)


def test_the_stripe_is_the_engines_common_chains():
    """A copy of tiny with 4 MV chains and 6 MM chains: stripes of gcd(4, 6) = 2 chains."""
    from hwflow.compiler.layout import BeatGeometry
    from hwflow.config import load_hw

    hw = load_hw("tiny")
    hw = hw.model_copy(update={"mv": hw.mv.model_copy(update={"chains": 4}),
                               "mpe": hw.mpe.model_copy(update={"chains": 6})})  # fmt: skip
    assert BeatGeometry.from_preset(hw) == BeatGeometry(2, hw.mv.chain_length, hw.sparsity.m)


def test_a_batch_of_which_no_sequence_fits_says_so():
    """tiny-llama / flightllm at max_len 16 with 2 sequences needs 68 KiB, 64 KiB without the
    KV caches (2 KiB each); a copy of tiny with 64 KiB of HBM has room for none."""
    from hwflow.compiler import compile_model
    from hwflow.config import load_hw, load_model, load_plan
    from hwflow.errors import CapacityError

    hw = load_hw("tiny")
    small = hw.model_copy(update={"hbm": hw.hbm.model_copy(update={"capacity_gib": 64 / 2**20})})
    with pytest.raises(CapacityError) as err:
        compile_model(load_model("tiny-llama"), load_plan("flightllm"), small, 16, 2)
    assert str(err.value).endswith("; at max_len 16 0 sequences fit")


def test_sparsity_of_another_block_size_is_refused_by_name():
    """The tiny stripe's blocks are 16 wide: 2:8 sparsity is refused, naming both."""
    from hwflow.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        GEO.per_block(2, 8)
    assert str(err.value) == "2:8 sparsity on a preset with sparsity.m = 16"
