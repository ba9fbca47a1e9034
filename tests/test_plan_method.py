"""The plan's ``method:`` field: defaults, validation, tiling, and that it reaches the caches."""

import pytest

from hwflow.analysis.sweep import Point, point_key
from hwflow.config import CompressionMethod, load_model, load_plan
from hwflow.errors import ConfigError, UnsupportedError


def _plan(tmp_path, method: str, name: str = "p"):
    p = tmp_path / f"{name}.yaml"
    p.write_text(f"name: {name}\nweights: {{bits: 4, sparsity: '4:16'}}\nmethod: {method}\n")
    return p


def test_default_is_todays_behaviour():
    m = load_plan("w4a8").method
    assert m == CompressionMethod()
    assert (m.prune, m.quant, m.group, m.smooth) == ("magnitude", "rtn", None, None)


def test_shipped_method_plans():
    p = load_plan("flightllm-sparsegpt")
    assert (p.method.prune, p.method.quant) == ("sparsegpt", "gptq-search")
    assert p.resolve(load_model("llama2-7b")) == load_plan("flightllm").resolve(
        load_model("llama2-7b")
    )  # same sparsity and bits as flightllm: only the method differs
    assert load_plan("w4a8-gptq").method.quant == "gptq-search"


@pytest.mark.parametrize(
    ("method", "match"),
    [
        ("{prune: obs}", r"method.prune: Input should be 'magnitude', 'wanda' or 'sparsegpt' "
         r"\(got 'obs'\)"),
        ("{quant: awq}", r"method.quant: Input should be 'rtn', 'search', 'gptq' or "
         r"'gptq-search' \(got 'awq'\)"),
        ("{group: 96}", r"method.group: must be a power of two, e.g. 64 or 128 \(got 96\)"),
        ("{group: '64'}", r"method.group: Input should be a valid integer \(got '64'\)"),
        ("{group: 0}", r"method.group: Input should be greater than 0"),
        ("{smooth: 1.5}", r"method.smooth: Input should be less than or equal to 1 \(got 1.5\)"),
        ("{smooth: true}", r"method.smooth: Input should be a valid number \(got True\)"),
        ("{smoth: 0.5}", r"unknown key 'method.smoth'"),
    ],
)  # fmt: skip
def test_bad_method(tmp_path, method, match):
    with pytest.raises(ConfigError, match=match):
        load_plan(_plan(tmp_path, method))


def test_good_method(tmp_path):
    m = load_plan(_plan(tmp_path, "{prune: wanda, quant: search, group: 32, smooth: 0.5}")).method
    assert (m.prune, m.quant, m.group, m.smooth) == ("wanda", "search", 32, 0.5)


def test_group_must_tile_every_reduction(tmp_path):
    plan = load_plan(_plan(tmp_path, "{quant: gptq, group: 128}"))
    plan.resolve(load_model("llama2-7b"))  # 4096 and 11008 are multiples of 128
    with pytest.raises(
        UnsupportedError, match=r"L0\.q: weight group 128 does not divide the reduction length 64"
    ):
        plan.resolve(load_model("tiny-llama"))


def test_method_changes_the_sweep_cache_key(tmp_path):
    keys = []
    for method in ("magnitude", "sparsegpt"):
        path = _plan(tmp_path, f"{{prune: {method}}}")  # the same file, rewritten
        point = Point("tiny-llama", "tiny", (), str(path), (), 16, 4, "fast")
        keys.append(point_key(point))
    assert keys[0] != keys[1]
