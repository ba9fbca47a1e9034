"""A Hugging Face model folder: config.json plus ``*.safetensors`` (one file, or shards listed
in ``model.safetensors.index.json``), read with the ``safetensors`` library.

Tensor names are those of transformers' ``LlamaForCausalLM``/``MistralForCausalLM``
(``model.layers.N.self_attn.q_proj.weight`` ...) and ``OPTForCausalLM``
(``model.decoder.layers.N.fc1.weight`` ...); checkpoints saved without the leading ``model.``
are read too.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open

from hwflow.checkpoint.layout import LazyWeights, expected_shapes, is_optional
from hwflow.config import ModelConfig, load_model
from hwflow.errors import ConfigError, UnsupportedError

__all__ = ["hf_names", "open_hf"]

INDEX = "model.safetensors.index.json"
#: safetensors dtypes hwflow reads (BF16 is widened by hand: numpy has no bfloat16).
DTYPES = ("F64", "F32", "F16", "BF16")

_LLAMA_OPS = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}
_OPT_OPS = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.out_proj",
    "up": "fc1",
    "down": "fc2",
}


def hf_names(cfg: ModelConfig) -> dict[str, str]:
    """hwflow name -> Hugging Face tensor name, for every tensor of ``cfg`` but the head."""
    llama = cfg.family == "llama"
    base, ops = ("model.", _LLAMA_OPS) if llama else ("model.decoder.", _OPT_OPS)
    norms = ("input_layernorm", "post_attention_layernorm", "norm")
    if not llama:
        norms = ("self_attn_layer_norm", "final_layer_norm", "final_layer_norm")
    names = {"embed": base + "embed_tokens.weight"}
    if cfg.positions == "learned":
        names["pos"] = base + "embed_positions.weight"
    for li in range(cfg.layers):
        lay = f"{base}layers.{li}."
        for i in (1, 2):
            names[f"L{li}.norm{i}.g"] = lay + norms[i - 1] + ".weight"
            names[f"L{li}.norm{i}.b"] = lay + norms[i - 1] + ".bias"
        for op in cfg.linear_ops:
            names[f"L{li}.{op}.w"] = lay + ops[op] + ".weight"
            names[f"L{li}.{op}.b"] = lay + ops[op] + ".bias"
    names["final.norm.g"] = base + norms[2] + ".weight"
    names["final.norm.b"] = base + norms[2] + ".bias"
    return names


def _shard_map(folder: Path) -> dict[str, Path]:
    """Tensor name -> the file holding it (from the shard index, or every ``*.safetensors``)."""
    index = folder / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = {name: folder / f for name, f in weight_map.items()}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ConfigError(
                f"{index}: malformed shard index (expected weight_map): {e}"
            ) from None
        for f in sorted(set(files.values())):
            if not f.is_file():
                raise ConfigError(f"{index}: shard {f.name} is missing from {folder}")
        return files
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise ConfigError(
            f"{folder}: no *.safetensors file (expected model.safetensors or {INDEX})"
        )
    return {name: f for f in shards for name in _header(f)}


def _header(path: Path) -> dict[str, dict]:
    """The dtype, shape and file of every tensor of one file, checked readable by
    ``safetensors`` (a truncated file or a malformed header fails here)."""
    try:
        with safe_open(path, framework="np") as f:
            meta = {}
            for name in f.keys():  # noqa: SIM118 - safe_open is not a dict
                s = f.get_slice(name)
                meta[name] = {"dtype": s.get_dtype(), "shape": tuple(s.get_shape()), "file": path}
            return meta
    except (SafetensorError, OSError) as e:
        raise ConfigError(f"{path}: not a readable safetensors file ({e})") from None


def _read(path: Path, name: str, dtype: str) -> np.ndarray:
    """One tensor as float64. BF16 is the upper half of an IEEE float32."""
    with safe_open(path, framework="np") as f:
        if dtype != "BF16":
            return f.get_tensor(name).astype(np.float64)
    return _read_bf16(path, name)


def _read_bf16(path: Path, name: str) -> np.ndarray:
    """A BF16 tensor through a memory map of the file (safetensors' format: an 8-byte header
    length, the JSON header with each tensor's byte range, then the data)."""
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        entry = json.loads(fh.read(n))[name]
    a, b = entry["data_offsets"]
    raw = np.memmap(path, np.uint16, "r", offset=8 + n + a, shape=((b - a) // 2,))
    wide = raw.astype(np.uint32) << 16
    return wide.view(np.float32).reshape(entry["shape"]).astype(np.float64)


def _resolve(name: str, files: dict[str, Path]) -> str | None:
    """The checkpoint's spelling of ``name``: as given, or without the leading ``model.``."""
    if name in files:
        return name
    short = name.removeprefix("model.")
    return short if short in files else None


def open_hf(folder: Path) -> tuple[ModelConfig, LazyWeights]:
    """The config and lazy weights of a Hugging Face folder, every tensor checked."""
    cfg = load_model(folder)
    files = _shard_map(folder)
    meta: dict[str, dict] = {}
    for f in sorted(set(files.values())):
        meta.update(_header(f))
    for name, f in files.items():
        if meta.get(name, {}).get("file") != f:
            raise ConfigError(f"{f}: tensor {name} listed in {INDEX} is not in the file")
    shapes = expected_shapes(cfg)
    names = hf_names(cfg)
    head = None if cfg.tie_word_embeddings else _resolve("lm_head.weight", files)
    names["head.w"] = head or names["embed"]
    aliases = {} if head else {"head.w": "embed"}  # tied, or no lm_head in the checkpoint
    loaders = {}
    for ours, want in shapes.items():
        if ours in aliases:
            continue
        theirs = _resolve(names[ours], files)
        if theirs is None:
            if is_optional(ours):
                continue
            raise ConfigError(
                f"{folder}: no tensor {names[ours]} in the checkpoint (hwflow's {ours})"
            )
        m = meta[theirs]
        if m["dtype"] not in DTYPES:
            raise UnsupportedError(
                f"{m['file']}: tensor {theirs} has dtype {m['dtype']} "
                f"(supported: {', '.join(DTYPES)})"
            )
        if m["shape"] != want:
            raise ConfigError(
                f"{m['file']}: tensor {theirs} has shape {list(m['shape'])}, "
                f"config.json implies {list(want)}"
            )
        loaders[ours] = partial(_read, m["file"], theirs, m["dtype"])
    return cfg, LazyWeights(loaders, aliases)
