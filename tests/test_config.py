"""Config loading: shipped files validate; bad input gives one clear error."""

from __future__ import annotations

import json

import pytest

from hwflow.config import available, load_hw, load_model, load_plan
from hwflow.errors import ConfigError, UnsupportedError


@pytest.mark.parametrize("name", available("hw"))
def test_shipped_presets_validate(name):
    hw = load_hw(name)
    assert hw.mv.dsps + hw.mpe.dsps <= hw.board.dsp_count
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
