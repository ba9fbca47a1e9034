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


def _group_plan(tmp_path, body: str):
    p = tmp_path / "g.yaml"
    p.write_text(f"name: g\n{body}\n")
    return str(p)


def test_group_per_linear_resolves_with_rules_and_method_default(tmp_path):
    """method.group is every layer linear's default; weights/rules set it per op ('channel':
    per-row scales); the head keeps its own (per row unless lm_head says)."""
    plan = load_plan(
        _group_plan(
            tmp_path,
            "weights: {bits: 4, sparsity: dense}\nmethod: {group: 64}\n"
            "rules:\n  - {ops: [down], group: 32}\n  - {layers: [0], ops: [q], group: channel}",
        )
    )
    q = plan.resolve(load_model("tiny-llama"))
    assert (q[(1, "q")].group, q[(0, "q")].group, q[(0, "down")].group) == (64, None, 32)
    assert plan.head().group is None
    assert q[(1, "q")].label == "W4 g64"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        # tiny-llama: q/k/v/gate/up reduce over 64, down over 128
        (
            "weights: {bits: 4, sparsity: dense, group: 128}",
            "plan g, L0.q: weight group 128 does not divide the reduction length 64",
        ),
        (
            "weights: {bits: 4, sparsity: '4:16', group: 8}",
            "plan g, L0.q: weight group 8 is not a multiple of the 4:16 sparsity block M = 16",
        ),
        (  # dense ops run in 16-wide blocks on preset tiny (sparsity.m)
            "weights: {bits: 4, sparsity: dense, group: 8}",
            "plan g, L0.q: weight group 8 is not a multiple of the 16-wide activation block of "
            "preset tiny",
        ),
        (
            "weights: {bits: 4, sparsity: dense, group: 48}",
            "must be a power of two (e.g. 32, 64 or 128) or 'channel'",
        ),
    ],
)
def test_bad_group_is_one_clear_error_exit_2(tmp_path, capsys, body, needle):
    from hwflow.cli import main

    argv = ["compile", "--model", "tiny-llama", "--hw", "tiny", "--plan"]
    argv += [_group_plan(tmp_path, body), "--max-len", "16", "-o", str(tmp_path / "out")]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert needle in err, err
    assert not (tmp_path / "out").exists()
