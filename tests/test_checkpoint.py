"""Checkpoint loading: HF safetensors folders (single, sharded; fp32/fp16/bf16; LLaMA and OPT)
and llama GGUF files, against the weights the tests wrote; the bad-input errors."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import safetensors
from ckpt_files import (
    byte_tokenizer,
    hf_llama,
    hf_opt,
    shipped_config,
    write_gguf,
    write_hf,
)
from safetensors.numpy import save_file

from hwflow.checkpoint import is_checkpoint, load_checkpoint
from hwflow.compress import random_weights
from hwflow.config import load_model
from hwflow.errors import ConfigError, UnsupportedError


def _tiny(name: str) -> tuple[dict, dict[str, np.ndarray]]:
    config = shipped_config(name)
    return config, random_weights(load_model(name), 3)


def _same(loaded, expected: dict[str, np.ndarray], dtype=np.float32) -> None:
    assert set(loaded) == set(expected)
    for k, v in expected.items():
        got = loaded[k]
        assert got.dtype == np.float64 and got.shape == v.shape, k
        np.testing.assert_array_equal(got, v.astype(dtype).astype(np.float64), err_msg=k)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("shards", [1, 3])
def test_hf_llama_folder(tmp_path, dtype, shards):
    config, w = _tiny("tiny-llama")
    folder = write_hf(tmp_path / "m", config, hf_llama(w, 2), dtype, shards)
    assert is_checkpoint(folder) and is_checkpoint(folder / "config.json")
    ck = load_checkpoint(folder)
    assert ck.cfg == load_model(folder)
    _same(ck.weights, w, dtype)


def test_hf_bf16(tmp_path):
    """BF16 tensors (numpy has no bfloat16) read exactly: values chosen representable."""
    config, w = _tiny("tiny-llama")
    # keep 8 significant bits: exactly representable in bfloat16
    w = {k: np.float32(v).view(np.uint32) & np.uint32(0xFFFF0000) for k, v in w.items()}
    w = {k: v.view(np.float32).astype(np.float64) for k, v in w.items()}
    folder = write_hf(tmp_path / "m", config, hf_llama(w, 2))
    tensors = hf_llama(w, 2)
    specs, keep = {}, []
    for name, t in tensors.items():
        half = (np.ascontiguousarray(t, np.float32).view(np.uint32) >> 16).astype(np.uint16)
        keep.append(half)
        specs[name] = safetensors.TensorSpec(
            dtype="bfloat16", shape=list(t.shape), data_ptr=half.ctypes.data, data_len=half.nbytes
        )
    safetensors.serialize_file(specs, str(folder / "model.safetensors"))
    _same(load_checkpoint(folder).weights, w)


def test_hf_opt_tied_head(tmp_path):
    config, w = _tiny("tiny-opt")
    w["head.w"] = w["embed"]  # OPT ties its head; the checkpoint has no lm_head
    folder = write_hf(tmp_path / "opt", config, hf_opt(w, 2))
    ck = load_checkpoint(folder)
    assert ck.cfg.tie_word_embeddings
    _same(ck.weights, w)
    m = ck.weights.materialize()
    assert m["head.w"] is m["embed"]  # one array for the tied pair
    _same(m, w)


def test_hf_untied_head_without_lm_head_uses_embed(tmp_path):
    config, w = _tiny("tiny-llama")
    tensors = hf_llama(w, 2)
    del tensors["lm_head.weight"]
    ck = load_checkpoint(write_hf(tmp_path / "m", config, tensors))
    np.testing.assert_array_equal(ck.weights["head.w"], w["embed"].astype(np.float32))


def test_hf_tokenizer(tmp_path):
    config, w = _tiny("tiny-llama")
    ck = load_checkpoint(write_hf(tmp_path / "m", config, hf_llama(w, 2)))
    ids = ck.tokenizer().encode("Hi é").ids
    assert ids == [ord("H") - 33, ord("i") - 33, *byte_ids(" é")]
    assert ck.tokenizer().decode(ids) == "Hi é"


def byte_ids(text: str) -> list[int]:
    """Ids of the byte tokenizer: its vocabulary is the sorted byte-level alphabet."""
    alphabet = sorted(byte_tokenizer().get_vocab())
    table = {}  # byte value -> GPT-2's printable stand-in character
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    n = 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return [alphabet.index(table[b]) for b in text.encode()]


def test_hf_bad_input(tmp_path):
    config, w = _tiny("tiny-llama")
    tensors = hf_llama(w, 2)

    f = write_hf(tmp_path / "trunc", config, tensors) / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(ConfigError, match=r"trunc/model.safetensors: not a readable safetensors"):
        load_checkpoint(f.parent)

    d = write_hf(tmp_path / "shard", config, tensors, shards=2)
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ConfigError, match=r"shard model-00002-of-00002.safetensors is missing"):
        load_checkpoint(d)

    d = write_hf(tmp_path / "index", config, tensors, shards=2)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    wm = index["weight_map"]
    wm["model.norm.weight"] = next(f for f in set(wm.values()) if f != wm["model.norm.weight"])
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ConfigError, match=r"tensor model.norm.weight listed in .* is not in"):
        load_checkpoint(d)

    ints = dict(tensors, **{"model.norm.weight": np.ones(64, np.int32)})
    d = write_hf(tmp_path / "int", config, {})
    save_file(
        {k: np.asarray(v, v.dtype if v.dtype == np.int32 else np.float32) for k, v in ints.items()},
        d / "model.safetensors",
    )
    with pytest.raises(
        UnsupportedError, match=r"tensor model.norm.weight has dtype I32 \(supported: F64, F32"
    ):
        load_checkpoint(d)

    bad = dict(tensors, **{"model.layers.1.mlp.up_proj.weight": np.zeros((64, 64), np.float32)})
    d = write_hf(tmp_path / "shape", config, bad)
    with pytest.raises(
        ConfigError,
        match=r"model.layers.1.mlp.up_proj.weight has shape \[64, 64\], config.json implies \[128, 64\]",
    ):
        load_checkpoint(d)

    gone = {k: v for k, v in tensors.items() if k != "model.layers.0.self_attn.k_proj.weight"}
    with pytest.raises(ConfigError, match=r"no tensor model.layers.0.self_attn.k_proj.weight"):
        load_checkpoint(write_hf(tmp_path / "gone", config, gone))

    d = write_hf(tmp_path / "notok", config, tensors, tokenizer=False)
    with pytest.raises(ConfigError, match=r"notok: no tokenizer.json"):
        load_checkpoint(d).tokenizer()


def test_gguf_unpermutes_to_the_hf_weights(tmp_path):
    """A GGUF written as llama.cpp writes it (q/k permuted, no output.weight: tied) loads to
    exactly the HF weights, with the config of the HF config.json."""
    config, w = _tiny("tiny-llama")
    config = {**config, "tie_word_embeddings": True}
    w["head.w"] = w["embed"]
    path = write_gguf(tmp_path / "m.gguf", config, w)
    assert is_checkpoint(path)
    ck = load_checkpoint(path)
    hf = load_model(write_hf(tmp_path / "hf", config, hf_llama(w, 2)))
    assert ck.cfg.model_dump(exclude={"name"}) == hf.model_dump(exclude={"name"})
    assert load_model(path) == ck.cfg
    _same(ck.weights, w)
    _same(ck.weights.materialize(), w)


def test_gguf_quantized_tensors(tmp_path):
    """Q8_0 and Q4_1 tensors dequantize as gguf's own reference does; an untied output."""
    config, w = _tiny("tiny-llama")
    q = gguf.GGMLQuantizationType
    types = {"blk.0.attn_v.weight": q.Q8_0, "blk.1.ffn_down.weight": q.Q4_1}
    ck = load_checkpoint(write_gguf(tmp_path / "m.gguf", config, w, types=types, tied=False))
    for name, ours in (("blk.0.attn_v.weight", "L0.v.w"), ("blk.1.ffn_down.weight", "L1.down.w")):
        x = np.float32(w[ours])
        want = gguf.quants.dequantize(gguf.quants.quantize(x, types[name]), types[name])
        np.testing.assert_array_equal(ck.weights[ours], want)
        assert 0 < np.abs(ck.weights[ours] - w[ours]).max() < 0.2 * np.abs(w[ours]).max()
    np.testing.assert_array_equal(ck.weights["head.w"], np.float32(w["head.w"]))


def test_gguf_tokenizer(tmp_path):
    config, w = _tiny("tiny-llama")
    tokens = ["a", "b", "Ġ", "ab", "Ġab", "1", "2", "<|end|>", "12"]
    tokens += [f"unused{i}" for i in range(256 - len(tokens))]  # the model's vocabulary: 256
    tok = {
        "tokens": tokens,
        "merges": ["a b", "Ġ ab", "1 2"],  # "1 2" never applies: smollm splits digits first
        "types": [1] * 7 + [3] + [1] * (256 - 8),
        "pre": "smollm",
    }
    ck = load_checkpoint(write_gguf(tmp_path / "m.gguf", config, w, tokenizer=tok))
    t = ck.tokenizer()
    enc = t.encode("ab ab12<|end|>")
    assert enc.tokens == ["ab", "Ġab", "1", "2", "<|end|>"]
    assert t.decode(enc.ids, skip_special_tokens=False) == "ab ab12<|end|>"


def test_gguf_sentencepiece_tokenizer(tmp_path):
    """llama.cpp's ``llama`` vocabulary (scores, no merges): merges by score, a space prefix,
    ``▁`` for spaces, unknown bytes as <0xNN> tokens, BOS prepended."""
    config, w = _tiny("tiny-llama")
    tokens = ["<unk>", "<s>", "</s>", "<0xC3>", "<0xA9>", "▁", "h", "e", "l", "o"]
    merged = {"he": -1.0, "ll": -2.0, "llo": -3.0, "hello": -4.0, "▁hello": -5.0}
    tokens += list(merged)
    scores = [0.0] * 10 + list(merged.values())
    types = [2, 3, 3, 6, 6] + [1] * (len(tokens) - 5)
    pad = 256 - len(tokens)
    tok = {
        "model": "llama",
        "tokens": tokens + [f"unused{i}" for i in range(pad)],
        "scores": scores + [-100.0] * pad,
        "types": types + [1] * pad,
    }
    t = load_checkpoint(write_gguf(tmp_path / "m.gguf", config, w, tokenizer=tok)).tokenizer()
    enc = t.encode("hello hé")
    assert enc.tokens == ["<s>", "▁hello", "▁", "h", "<0xC3>", "<0xA9>"]
    assert t.decode(enc.ids) == "hello hé"


def test_gguf_bad_input(tmp_path):
    config, w = _tiny("tiny-llama")
    with pytest.raises(UnsupportedError, match=r"m.gguf: GGUF architecture 'gpt2' unsupported"):
        load_checkpoint(write_gguf(tmp_path / "m.gguf", config, w, arch="gpt2"))

    # an integer tensor type that gguf cannot dequantize
    w8 = dict(w)
    path = write_gguf(tmp_path / "i8.gguf", config, w8)
    data = bytearray(path.read_bytes())
    r = gguf.GGUFReader(path)
    t = next(t for t in r.tensors if t.name == "blk.0.attn_norm.weight")
    # the tensor-info record: name, n_dims, dims, type (u32), offset; patch the type F32 -> I32
    field = t.field
    type_part = field.parts[-2]
    offset = field.offset + sum(p.nbytes for p in field.parts[:-2])
    assert int(type_part[0]) == gguf.GGMLQuantizationType.F32
    data[offset : offset + 4] = int(gguf.GGMLQuantizationType.I32).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(
        UnsupportedError, match=r"tensor blk.0.attn_norm.weight has type I32, .*supported: F32"
    ):
        load_checkpoint(path)

    path = write_gguf(tmp_path / "t.gguf", config, w)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ConfigError, match=r"t.gguf: not a readable GGUF file"):
        load_checkpoint(path)

    with pytest.raises(ConfigError, match=r"holds no tokenizer"):
        load_checkpoint(write_gguf(tmp_path / "n.gguf", config, w)).tokenizer()


def test_gguf_metadata_shapes_disagree(tmp_path):
    config, w = _tiny("tiny-llama")
    path = write_gguf(tmp_path / "m.gguf", {**config, "intermediate_size": 96}, w)
    with pytest.raises(
        ConfigError,
        match=r"blk.0.ffn_gate.weight has shape \[128, 64\], the metadata implies \[96, 64\]",
    ):
        load_checkpoint(path)


def test_lazy_weights_read_on_lookup(tmp_path):
    """The mapping holds loaders, not arrays: a file changed after opening is read anew."""
    config, w = _tiny("tiny-llama")
    folder = write_hf(tmp_path / "m", config, hf_llama(w, 2))
    ck = load_checkpoint(folder)
    w2 = {k: v * 2 for k, v in w.items()}
    write_hf(folder, config, hf_llama(w2, 2))
    np.testing.assert_array_equal(ck.weights["L1.up.w"], np.float32(w2["L1.up.w"]))
    assert json.loads((folder / "config.json").read_text())["hidden_size"] == 64
