"""A GGUF file of the llama architecture, read with the ``gguf`` package (llama.cpp's own
Python reader; the file is memory-mapped and a tensor is dequantized when looked up).

The config comes from the file's ``llama.*`` metadata. llama.cpp's converter
(``convert_hf_to_gguf.py``, ``LlamaModel.permute``) reorders the rows of ``attn_q`` (with the
head count) and ``attn_k`` (with the KV head count) so that RoPE rotates adjacent pairs;
:func:`unpermute` undoes it, so the weights match Hugging Face's ``rotate_half`` convention that
:mod:`hwflow.reference` implements.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache, partial
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize
from tokenizers import Tokenizer

from hwflow.checkpoint.layout import LazyWeights, expected_shapes, is_optional
from hwflow.checkpoint.tokenizer import gguf_tokenizer
from hwflow.config import ModelConfig
from hwflow.errors import ConfigError, UnsupportedError

__all__ = ["gguf_config", "gguf_names", "open_gguf", "permute", "supported_types", "unpermute"]

ARCHS = ("llama",)

_OPS = {
    "q": "attn_q",
    "k": "attn_k",
    "v": "attn_v",
    "o": "attn_output",
    "gate": "ffn_gate",
    "up": "ffn_up",
    "down": "ffn_down",
}


def permute(w: np.ndarray, n: int) -> np.ndarray:
    """llama.cpp's reordering of the rows of a q (``n`` = heads) or k (``n`` = KV heads)
    projection: within each head, rows (pair i of the first half, pair i of the second half)
    become adjacent."""
    rows = w.shape[0]
    return w.reshape(n, 2, rows // n // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w: np.ndarray, n: int) -> np.ndarray:
    """The inverse of :func:`permute`."""
    rows = w.shape[0]
    return w.reshape(n, rows // n // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@cache
def supported_types() -> tuple[str, ...]:
    """The GGML tensor types ``gguf.quants.dequantize`` implements, found by dequantizing one
    zero block of each (so the list follows the installed ``gguf`` package)."""
    ok = []
    for t in GGMLQuantizationType:
        _block, size = GGML_QUANT_SIZES.get(t, (0, 0))
        if not size:
            continue
        try:
            dequantize(np.zeros((1, size), np.uint8), t)
        except (NotImplementedError, ValueError, TypeError):
            continue
        ok.append(t.name)
    return tuple(ok)


def _reader(path: Path) -> GGUFReader:
    try:
        return GGUFReader(path)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    except (ValueError, IndexError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: not a readable GGUF file ({e})") from None


def _meta(reader: GGUFReader, key: str, default: Any = None) -> Any:
    """A metadata value; a float32 as the shortest decimal that rounds to it (GGUF stores
    ``1e-05`` as float32: read back as 1e-05, not 9.99999974e-06)."""
    field = reader.get_field(key)
    if field is None:
        return default
    value = field.contents()
    return float(str(np.float32(value))) if isinstance(value, float) else value


def gguf_config(path: Path, reader: GGUFReader | None = None) -> ModelConfig:
    """The :class:`ModelConfig` of a llama-architecture GGUF, from its metadata (validated by
    the same code as a Hugging Face config.json)."""
    reader = reader or _reader(path)
    arch = _meta(reader, "general.architecture")
    if arch not in ARCHS:
        raise UnsupportedError(
            f"{path}: GGUF architecture {arch!r} unsupported (supported: {', '.join(ARCHS)})"
        )
    if _meta(reader, f"{arch}.expert_count", 0):
        raise UnsupportedError(f"{path}: mixture-of-experts llama unsupported (supported: dense)")
    scaling = _meta(reader, f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        raise UnsupportedError(f"{path}: RoPE scaling {scaling!r} unsupported (supported: none)")

    def need(key: str) -> Any:
        value = _meta(reader, f"{arch}.{key}")
        if value is None:
            raise ConfigError(f"{path}: GGUF metadata lacks {arch}.{key}")
        return value

    heads = need("attention.head_count")
    hidden = need("embedding_length")
    tokens = _meta(reader, "tokenizer.ggml.tokens")
    embed = reader.get_tensor(_index(reader, path, "token_embd.weight"))
    hf = {
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": need("feed_forward_length"),
        "num_hidden_layers": need("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": _meta(reader, f"{arch}.attention.head_count_kv", heads),
        "head_dim": _meta(reader, f"{arch}.attention.key_length"),
        "vocab_size": _meta(reader, f"{arch}.vocab_size")
        or (len(tokens) if tokens else int(embed.shape[-1])),
        "max_position_embeddings": _meta(reader, f"{arch}.context_length", 2048),
        "rms_norm_eps": _meta(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5),
        "rope_theta": _meta(reader, f"{arch}.rope.freq_base", 10000.0),
        "tie_word_embeddings": _tensor_index(reader).get("output.weight") is None,
    }
    cfg = ModelConfig.from_hf(hf, path.stem, str(path))
    if "rope_freqs.weight" in _tensor_index(reader):
        raise UnsupportedError(
            f"{path}: per-frequency RoPE factors (rope_freqs.weight, LLaMA-3.1 style) "
            "unsupported (supported: plain RoPE)"
        )
    rot = _meta(reader, f"{arch}.rope.dimension_count", cfg.head_dim)
    if rot != cfg.head_dim:
        raise UnsupportedError(
            f"{path}: partial RoPE ({rot} of {cfg.head_dim} dims per head) unsupported "
            "(supported: rope.dimension_count equal to the head size)"
        )
    return cfg


def _tensor_index(reader: GGUFReader) -> dict[str, int]:
    return {t.name: i for i, t in enumerate(reader.tensors)}


def _index(reader: GGUFReader, path: Path, name: str) -> int:
    idx = _tensor_index(reader).get(name)
    if idx is None:
        raise ConfigError(f"{path}: no tensor {name} in the GGUF file")
    return idx


def gguf_names(cfg: ModelConfig) -> dict[str, str]:
    """hwflow name -> GGUF tensor name (llama.cpp's ``LLM_TENSOR_NAMES``)."""
    names = {"embed": "token_embd.weight", "final.norm.g": "output_norm.weight"}
    for li in range(cfg.layers):
        names[f"L{li}.norm1.g"] = f"blk.{li}.attn_norm.weight"
        names[f"L{li}.norm2.g"] = f"blk.{li}.ffn_norm.weight"
        for op in cfg.linear_ops:
            names[f"L{li}.{op}.w"] = f"blk.{li}.{_OPS[op]}.weight"
            names[f"L{li}.{op}.b"] = f"blk.{li}.{_OPS[op]}.bias"
    names["head.w"] = "token_embd.weight" if cfg.tie_word_embeddings else "output.weight"
    return names


def _load(reader: GGUFReader, index: int, heads: int | None) -> np.ndarray:
    """One tensor, dequantized to float64 (and its q/k rows put back in HF order). The reader
    memory-maps the file: the page cache, not the process, holds what is not in use."""
    t = reader.tensors[index]
    w = np.asarray(dequantize(t.data, t.tensor_type), np.float64)
    w = w.reshape(tuple(int(d) for d in reversed(t.shape.tolist())))
    return unpermute(w, heads) if heads else w


def open_gguf(path: Path) -> tuple[ModelConfig, LazyWeights, Callable[[], Tokenizer]]:
    """The config, lazy weights and tokenizer builder of a GGUF file, every tensor's type and
    shape checked."""
    reader = _reader(path)
    cfg = gguf_config(path, reader)
    index = _tensor_index(reader)
    names = gguf_names(cfg)
    supported = supported_types()
    perm = {"q": cfg.heads, "k": cfg.kv_heads}
    aliases = {"head.w": "embed"} if cfg.tie_word_embeddings else {}
    loaders = {}
    for ours, want in expected_shapes(cfg).items():
        if ours in aliases:
            continue
        i = index.get(names.get(ours, ""))
        if i is None:
            if is_optional(ours) or ours.endswith(".b"):
                continue
            raise ConfigError(f"{path}: no tensor {names[ours]} in the GGUF file (hwflow's {ours})")
        t = reader.tensors[i]
        if t.tensor_type.name not in supported:
            raise UnsupportedError(
                f"{path}: tensor {t.name} has type {t.tensor_type.name}, which gguf cannot "
                f"dequantize (supported: {', '.join(supported)})"
            )
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        if shape != want:
            raise ConfigError(
                f"{path}: tensor {t.name} has shape {list(shape)}, the metadata implies {list(want)}"
            )
        op = ours.split(".")[1] if ours.startswith("L") else ""
        loaders[ours] = partial(_load, reader, i, perm.get(op))  # q/k biases are permuted too
    meta = {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.ggml.")}
    return cfg, LazyWeights(loaders, aliases), partial(gguf_tokenizer, path, meta)
