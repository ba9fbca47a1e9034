"""Config loading: shipped files validate; bad input gives one clear error."""

from __future__ import annotations

import json

import pytest

from hwflow.config import available, load_hw, load_model, load_plan
from hwflow.errors import ConfigError, UnsupportedError


@pytest.mark.parametrize("name", available("hw"))
def test_shipped_presets_validate(name):
    hw = load_hw(name)
    assert hw.dsps_used <= hw.board.dsp_count
    assert len(hw.digest) == 64


@pytest.mark.parametrize("name", available("models"))
def test_shipped_models_validate(name):
    m = load_model(name)
    assert m.heads % m.kv_heads == 0


@pytest.mark.parametrize("name", available("plans"))
def test_shipped_plans_resolve(name):
    plan = load_plan(name)
    r = plan.resolve(load_model("llama2-7b"))
    assert len(r) == 32 * 7


def test_llama_facts():
    m = load_model("llama2-7b")
    assert (m.hidden, m.intermediate, m.layers, m.heads, m.vocab) == (4096, 11008, 32, 32, 32000)
    assert m.linear_shape("down") == (4096, 11008)
    g = load_model("mistral-7b")
    assert g.kv_heads == 8 and g.linear_shape("k") == (1024, 4096)


def test_flightllm_plan_per_layer():
    r = load_plan("flightllm").resolve(load_model("llama2-7b"))
    assert (r[(0, "q")].n, r[(0, "q")].m) == (8, 16)
    assert (r[(31, "up")].n, r[(5, "up")].n) == (8, 4)
    assert r[(5, "o")].n == 8


def test_unsupported_architecture(tmp_path):
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(
        UnsupportedError,
        match=r"unsupported architecture: GPT2LMHeadModel \(supported: .*LlamaForCausalLM",
    ):
        load_model(p)


def test_hf_extra_keys_accepted(tmp_path):
    cfg = json.loads(
        load_model.__globals__["MAPPINGS"].joinpath("models/tiny-llama.json").read_text()
    )
    cfg["some_new_hf_key"] = {"x": 1}
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    assert load_model(p).hidden == 64


def test_malformed_yaml(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nweights: {bits: 4\n")
    with pytest.raises(ConfigError, match="malformed YAML at line"):
        load_plan(p)


def test_unknown_key(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("name: x\nweigths: {bits: 4}\n")
    with pytest.raises(ConfigError, match="unknown key 'weigths'"):
        load_plan(p)


def test_bad_nm(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("name: x\nweights: {bits: 4, sparsity: '5:12'}\n")
    with pytest.raises(ConfigError, match="M a power of two, got 5:12"):
        load_plan(p).resolve(load_model("tiny-llama"))


def test_preset_number_without_source(tmp_path):
    text = (load_hw.__globals__["MAPPINGS"] / "hw/tiny.yaml").read_text()
    text = text.replace('    lanes: "simulation preset"\n', "")
    p = tmp_path / "t.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=r"sfu.lanes = 4 has no source"):
        load_hw(p)


def test_preset_plan_support():
    hw = load_hw("u280")
    hw.check_plan_support(4, 4, 16)
    with pytest.raises(UnsupportedError, match=r"2:4 sparsity \(allowed: 2:16, 4:16, 8:16, 16:16"):
        hw.check_plan_support(4, 2, 4)


def test_unknown_name():
    with pytest.raises(ConfigError, match="hardware preset 'u999' not found"):
        load_hw("u999")


# --------------------------------------------------------------------------------------------
# Hugging Face config.json files as they are published (issue 2: accepted as they are)

#: TinyLlama-1.1B-Chat-v1.0: grouped-query attention (4 kv heads), rope_scaling null, dtype keys
TINYLLAMA_1B = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 5632,
    "max_position_embeddings": 2048,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 22,
    "num_key_value_heads": 4,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.35.0",
    "use_cache": True,
    "vocab_size": 32000,
}
#: Mistral-7B-v0.1: GQA (8 kv heads), a 4096-token sliding window
MISTRAL_7B = {
    "architectures": ["MistralForCausalLM"],
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 32768,
    "model_type": "mistral",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "sliding_window": 4096,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.34.0.dev0",
    "use_cache": True,
    "vocab_size": 32000,
}
#: facebook/opt-125m
OPT_125M = {
    "_name_or_path": "facebook/opt-125m",
    "_remove_final_layer_norm": False,
    "activation_dropout": 0.0,
    "activation_function": "relu",
    "architectures": ["OPTForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 2,
    "do_layer_norm_before": True,
    "dropout": 0.1,
    "eos_token_id": 2,
    "ffn_dim": 3072,
    "hidden_size": 768,
    "init_std": 0.02,
    "layerdrop": 0.0,
    "max_position_embeddings": 2048,
    "model_type": "opt",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "prefix": "</s>",
    "torch_dtype": "float16",
    "transformers_version": "4.21.0.dev0",
    "use_cache": True,
    "vocab_size": 50272,
    "word_embed_proj_dim": 768,
}
#: facebook/opt-350m: embeddings projected 512 -> 1024 and post-LayerNorm blocks
OPT_350M = {
    **OPT_125M,
    "_name_or_path": "facebook/opt-350m",
    "do_layer_norm_before": False,
    "ffn_dim": 4096,
    "hidden_size": 1024,
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "word_embed_proj_dim": 512,
}
#: a LLaMA-family config naming head_dim explicitly (heads * head_dim != hidden_size)
LLAMA_HEAD_DIM = {**TINYLLAMA_1B, "num_attention_heads": 16, "head_dim": 256, "extra": {"a": 1}}

HF_ACCEPTED = {
    "tinyllama-1.1b": (TINYLLAMA_1B, (2048, 32, 4, 64, 22)),
    "mistral-7b-v0.1": (MISTRAL_7B, (4096, 32, 8, 128, 32)),
    "opt-125m": (OPT_125M, (768, 12, 12, 64, 12)),
    "llama-head-dim": (LLAMA_HEAD_DIM, (2048, 16, 4, 256, 22)),
    "llama-no-model-type": (
        {k: v for k, v in TINYLLAMA_1B.items() if k != "model_type"},
        (2048, 32, 4, 64, 22),
    ),
    "llama-rope-default": (
        {**TINYLLAMA_1B, "rope_scaling": {"rope_type": "default"}},
        (2048, 32, 4, 64, 22),
    ),
    "llama-mha": ({**TINYLLAMA_1B, "num_key_value_heads": None}, (2048, 32, 32, 64, 22)),
}
HF_REFUSED = {
    "opt-350m": (OPT_350M, UnsupportedError, "word_embed_proj_dim 512 != hidden_size 1024"),
    "opt-post-ln": (
        {**OPT_125M, "do_layer_norm_before": False},
        UnsupportedError,
        "do_layer_norm_before=false) unsupported (supported: true)",
    ),
    "opt-no-final-ln": (
        {**OPT_125M, "_remove_final_layer_norm": True},
        UnsupportedError,
        "_remove_final_layer_norm=true) unsupported",
    ),
    "llama-rope-scaling": (
        {**TINYLLAMA_1B, "rope_scaling": {"type": "linear", "factor": 2.0}},
        UnsupportedError,
        "rope_scaling {'type': 'linear', 'factor': 2.0} unsupported (supported: none",
    ),
    "gpt2": (
        {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 768},
        UnsupportedError,
        "unsupported architecture: GPT2LMHeadModel (supported: LlamaForCausalLM,",
    ),
    "qwen2-no-arch": (
        {"model_type": "qwen2", "hidden_size": 896},
        UnsupportedError,
        "unsupported architecture: model_type 'qwen2' (supported:",
    ),
    "model-type-mismatch": (
        {**TINYLLAMA_1B, "model_type": 5},
        ConfigError,
        "model_type 5 does not match architectures LlamaForCausalLM (expected 'llama')",
    ),
    "missing-key": (
        {k: v for k, v in TINYLLAMA_1B.items() if k != "intermediate_size"},
        ConfigError,
        "config.json of model_type 'llama' lacks 'intermediate_size'",
    ),
    "heads-as-string": (
        {**TINYLLAMA_1B, "num_attention_heads": "32"},
        ConfigError,
        "num_attention_heads = '32' must be a positive integer",
    ),
    "layers-as-bool": (
        {**TINYLLAMA_1B, "num_hidden_layers": True},
        ConfigError,
        "num_hidden_layers: Input should be a valid integer (got True)",
    ),
    "hidden-not-multiple": (
        {**TINYLLAMA_1B, "hidden_size": 2050},
        ConfigError,
        "hidden_size 2050 is not a multiple of num_attention_heads 32",
    ),
    "gqa-not-multiple": (
        {**TINYLLAMA_1B, "num_key_value_heads": 5},
        ConfigError,
        "num_attention_heads 32 is not a multiple of num_key_value_heads 5",
    ),
    "ffn-as-float": (
        {**OPT_125M, "ffn_dim": 3072.5},
        ConfigError,
        "ffn_dim: Input should be a valid integer (got 3072.5)",
    ),
}


def write_hf(folder, cfg: dict) -> object:
    """``folder/config.json`` holding ``cfg``, as a Hugging Face model folder has it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    return folder / "config.json"


@pytest.mark.parametrize("name", HF_ACCEPTED)
def test_hf_configs_load_as_published(name, tmp_path):
    cfg, (hidden, heads, kv_heads, head_dim, layers) = HF_ACCEPTED[name]
    m = load_model(write_hf(tmp_path / name, cfg))
    assert m.name == name
    assert (m.hidden, m.heads, m.kv_heads, m.head_dim, m.layers) == (
        hidden,
        heads,
        kv_heads,
        head_dim,
        layers,
    )
    assert m.linear_shape("q") == (heads * head_dim, hidden)
    assert m.linear_shape("k") == (kv_heads * head_dim, hidden)
    assert load_model(tmp_path / name) == m  # the model folder itself names its config.json


@pytest.mark.parametrize("name", HF_REFUSED)
def test_hf_configs_refused_with_the_reason(name, tmp_path):
    cfg, error, message = HF_REFUSED[name]
    path = write_hf(tmp_path / name, cfg)
    with pytest.raises(error) as info:
        load_model(path)
    assert message in str(info.value) and str(info.value).startswith(str(path))
