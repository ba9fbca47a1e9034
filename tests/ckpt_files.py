"""Small checkpoints written by the tests themselves (safetensors folders, GGUF files), named as
transformers and llama.cpp name them; spelled out here, apart from hwflow's own name tables."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from hwflow.config import MAPPINGS

LLAMA_OPS = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}
OPT_OPS = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.out_proj",
    "up": "fc1",
    "down": "fc2",
}
GGUF_OPS = {
    "q": "attn_q",
    "k": "attn_k",
    "v": "attn_v",
    "o": "attn_output",
    "gate": "ffn_gate",
    "up": "ffn_up",
    "down": "ffn_down",
}


def shipped_config(name: str) -> dict:
    return json.loads((MAPPINGS / "models" / f"{name}.json").read_text())


def hf_llama(w: dict[str, np.ndarray], layers: int) -> dict[str, np.ndarray]:
    """hwflow-layout weights under transformers' LlamaForCausalLM names."""
    out = {
        "model.embed_tokens.weight": w["embed"],
        "model.norm.weight": w["final.norm.g"],
        "lm_head.weight": w["head.w"],
    }
    for li in range(layers):
        p = f"model.layers.{li}."
        out[p + "input_layernorm.weight"] = w[f"L{li}.norm1.g"]
        out[p + "post_attention_layernorm.weight"] = w[f"L{li}.norm2.g"]
        for op, hf in LLAMA_OPS.items():
            out[p + hf + ".weight"] = w[f"L{li}.{op}.w"]
    return out


def hf_opt(w: dict[str, np.ndarray], layers: int) -> dict[str, np.ndarray]:
    """hwflow-layout weights under transformers' OPTForCausalLM names (tied head: no lm_head)."""
    out = {
        "model.decoder.embed_tokens.weight": w["embed"],
        "model.decoder.embed_positions.weight": w["pos"],
        "model.decoder.final_layer_norm.weight": w["final.norm.g"],
        "model.decoder.final_layer_norm.bias": w["final.norm.b"],
    }
    for li in range(layers):
        p = f"model.decoder.layers.{li}."
        for i, norm in ((1, "self_attn_layer_norm"), (2, "final_layer_norm")):
            out[p + norm + ".weight"] = w[f"L{li}.norm{i}.g"]
            out[p + norm + ".bias"] = w[f"L{li}.norm{i}.b"]
        for op, hf in OPT_OPS.items():
            out[p + hf + ".weight"] = w[f"L{li}.{op}.w"]
            out[p + hf + ".bias"] = w[f"L{li}.{op}.b"]
    return out


def write_hf(
    folder: Path,
    config: dict,
    tensors: dict[str, np.ndarray],
    dtype: type = np.float32,
    shards: int = 1,
    tokenizer: bool = True,
) -> Path:
    """A Hugging Face folder: config.json, one model.safetensors or ``shards`` shards with
    model.safetensors.index.json, and a byte-level tokenizer.json."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    names = sorted(tensors)
    cast = {k: np.ascontiguousarray(tensors[k], dtype) for k in names}
    if shards == 1:
        save_file(cast, folder / "model.safetensors", metadata={"format": "pt"})
    else:
        weight_map = {}
        for i in range(shards):
            fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            part = {k: cast[k] for k in names[i::shards]}
            save_file(part, folder / fname, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(part, fname))
        index = {"metadata": {}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    if tokenizer:
        byte_tokenizer().save(str(folder / "tokenizer.json"))
    return folder


def byte_tokenizer() -> Tokenizer:
    """Byte-level BPE without merges: one token per UTF-8 byte (a 256-token vocabulary)."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab, []))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute, as published."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def write_gguf(
    path: Path,
    config: dict,
    w: dict[str, np.ndarray],
    arch: str = "llama",
    types: dict[str, gguf.GGMLQuantizationType] | None = None,
    tied: bool = True,
    tokenizer: dict | None = None,
) -> Path:
    """A llama GGUF as llama.cpp's converter writes it: q/k rows permuted, F32 tensors unless
    ``types`` names a quantization for a tensor."""
    types = types or {}
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    wr = gguf.GGUFWriter(path, arch)
    wr.add_block_count(config["num_hidden_layers"])
    wr.add_context_length(config["max_position_embeddings"])
    wr.add_embedding_length(config["hidden_size"])
    wr.add_feed_forward_length(config["intermediate_size"])
    wr.add_head_count(heads)
    wr.add_head_count_kv(kv)
    wr.add_layer_norm_rms_eps(config["rms_norm_eps"])
    wr.add_rope_freq_base(config["rope_theta"])
    wr.add_rope_dimension_count(config["hidden_size"] // heads)
    if tokenizer:
        wr.add_tokenizer_model(tokenizer.get("model", "gpt2"))
        if "pre" in tokenizer:
            wr.add_tokenizer_pre(tokenizer["pre"])
        wr.add_token_list(tokenizer["tokens"])
        if "merges" in tokenizer:
            wr.add_token_merges(tokenizer["merges"])
        if "scores" in tokenizer:
            wr.add_token_scores(tokenizer["scores"])
            wr.add_bos_token_id(1)
            wr.add_unk_token_id(0)
        wr.add_token_types(tokenizer["types"])

    def add(name: str, t: np.ndarray) -> None:
        qt = types.get(name)
        t = np.ascontiguousarray(t, np.float32)
        if qt is None:
            wr.add_tensor(name, t)
        else:
            wr.add_tensor(name, gguf.quants.quantize(t, qt), raw_dtype=qt)

    add("token_embd.weight", w["embed"])
    for li in range(config["num_hidden_layers"]):
        add(f"blk.{li}.attn_norm.weight", w[f"L{li}.norm1.g"])
        add(f"blk.{li}.ffn_norm.weight", w[f"L{li}.norm2.g"])
        for op, name in GGUF_OPS.items():
            t = w[f"L{li}.{op}.w"]
            t = llama_permute(t, heads) if op == "q" else llama_permute(t, kv) if op == "k" else t
            add(f"blk.{li}.{name}.weight", t)
    add("output_norm.weight", w["final.norm.g"])
    if not tied:
        add("output.weight", w["head.w"])
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return path
