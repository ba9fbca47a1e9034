"""Cache keys (issue 11): a cached program or sweep point is reused only when everything it
depends on is unchanged -- the values of the energy table and model (edited here in temporary
copies passed by path), and the source of the whole package."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from hwflow import cache
from hwflow.analysis import sweep as sw
from hwflow.config import MAPPINGS, load_hw, load_model, load_plan
from hwflow.perf.sim import compile_cached, program_key


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HWFLOW_CACHE", str(tmp_path / "cache"))


def _copies(tmp: Path) -> tuple[Path, Path, Path]:
    """Temporary copies of the tiny preset (naming a copied energy table by path) and of the
    tiny model: (preset, energy table, model)."""
    table = tmp / "energy.yaml"
    shutil.copy(MAPPINGS / "energy" / "xcu280.yaml", table)
    hw = yaml.safe_load((MAPPINGS / "hw" / "tiny.yaml").read_text())
    hw["energy_table"] = str(table)
    preset = tmp / "preset.yaml"
    preset.write_text(yaml.safe_dump(hw))
    model = tmp / "model.json"
    shutil.copy(MAPPINGS / "models" / "tiny-llama.json", model)
    return preset, table, model


def _edit_yaml(path: Path, key: str, value: object) -> None:
    data = yaml.safe_load(path.read_text())
    data[key] = value
    path.write_text(yaml.safe_dump(data))


def _sweep(tmp: Path, preset: Path, model: Path) -> dict:
    grid = tmp / "grid.yaml"
    grid.write_text(f"model: {model}\npresets: [{preset}]\nplans: [w4a8]\nlengths: [[16, 8]]\n")
    (row,) = sw.run_sweep(sw.load_grid(grid), tmp / "points", workers=1)
    assert row["status"] == "ok", row
    return row


def test_sweep_rows_follow_edited_energy_table_and_model(tmp_path, monkeypatch):
    preset, table, model = _copies(tmp_path)
    first = _sweep(tmp_path, preset, model)
    calls = []
    real = sw.run_point
    monkeypatch.setattr(sw, "run_point", lambda p: calls.append(p) or real(p))
    assert _sweep(tmp_path, preset, model) == first and calls == []  # unchanged: cached

    # static power doubled in the table file the preset names (same path, same name)
    static_w = yaml.safe_load(table.read_text())["static_w"]
    _edit_yaml(table, "static_w", 2 * static_w)
    second = _sweep(tmp_path, preset, model)
    assert len(calls) == 1  # recomputed, not answered from the old row
    assert second["total_cycles"] == first["total_cycles"]  # timing does not read the table
    assert second["energy_static_j"] == pytest.approx(2 * first["energy_static_j"], rel=1e-12)
    assert second["energy_mac_j"] == first["energy_mac_j"]

    # a model constant: the MLP twice as wide -> more MACs per token
    cfg = json.loads(model.read_text())
    cfg["intermediate_size"] *= 2
    model.write_text(json.dumps(cfg))
    third = _sweep(tmp_path, preset, model)
    assert len(calls) == 2
    h, i, layers = cfg["hidden_size"], cfg["intermediate_size"] // 2, cfg["num_hidden_layers"]
    # 3 MLP matrices (gate, up, down) of h x i per layer per token: the added MACs exactly
    tokens = 16 + 8
    assert third["macs_w4"] - second["macs_w4"] == 3 * h * i * layers * tokens


def test_program_cache_follows_edited_model_file(tmp_path):
    _, _, model = _copies(tmp_path)
    plan, hw = load_plan("w4a8"), load_hw("tiny")
    cfg = load_model(model)
    first = compile_cached(cfg, plan, hw, 64)
    data = json.loads(model.read_text())
    data["num_hidden_layers"] = 3
    model.write_text(json.dumps(data))
    cfg3 = load_model(model)
    assert program_key(cfg3, plan, hw, 64) != program_key(cfg, plan, hw, 64)
    third = compile_cached(cfg3, plan, hw, 64)
    assert third.to_bytes() != first.to_bytes()
    assert (tmp_path / "cache" / "programs").is_dir()
    assert len(list((tmp_path / "cache" / "programs").glob("*.hwp"))) == 2


def test_source_digest_covers_every_module(tmp_path):
    """A constant edited in model.py (not the compiler, not the ISA) changes the digest every
    key includes, as does a module added anywhere in the package."""
    pkg = Path(cache.__file__).parent
    copy = tmp_path / "hwflow"
    shutil.copytree(pkg, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = cache.source_digest.__wrapped__(copy)
    assert before == cache.source_digest.__wrapped__(pkg)  # the same sources, the same digest
    text = (copy / "model.py").read_text()
    (copy / "model.py").write_text(text + "\nSOME_CONSTANT = 1\n")
    edited = cache.source_digest.__wrapped__(copy)
    assert edited != before
    (copy / "perf" / "extra.py").write_text("")
    assert cache.source_digest.__wrapped__(copy) not in (before, edited)


def test_key_hashes_values_not_names(monkeypatch):
    hw = load_hw("tiny")
    a = cache.key("k", hw, 1)
    assert a == cache.key("k", load_hw("tiny"), 1)
    changed = hw.model_copy(update={"clock_mhz": hw.clock_mhz + 1})
    assert cache.key("k", changed, 1) != a
    monkeypatch.setattr(cache, "source_digest", lambda: "other code")
    assert cache.key("k", hw, 1) != a


def test_simulations_leave_no_priced_ops_behind():
    """The priced-op tables live in a context per simulation, not in globals that never
    evict: after a run nothing of them stays alive, however many presets were simulated."""
    import gc

    from hwflow.perf import lower as perf_lower
    from hwflow.perf.sim import simulate

    cfg, plan = load_model("tiny-llama"), load_plan("w4a8")
    base = load_hw("tiny")
    for mhz in (100.0, 150.0, 200.0):  # three distinct presets, as a sweep makes
        hw = sw.apply_hw(base, [("clock_mhz", mhz)])
        simulate(cfg, plan, hw, 16, 20, max_len=64, workers=1)
    gc.collect()
    kinds = tuple(
        getattr(perf_lower, n) for n in ("_Pricer", "PerfContext") if hasattr(perf_lower, n)
    )
    alive = [o for o in gc.get_objects() if isinstance(o, kinds)]
    assert alive == []


def test_compile_reuses_its_program_and_recompiles_a_damaged_one(tmp_path, capsys):
    from hwflow.cli import main

    argv = ["compile", "--model", "tiny-llama", "--hw", "tiny", "--plan", "w4a8", "--json"]
    argv += ["--max-len", "64", "-o", str(tmp_path / "out")]
    runs = []
    for damage in (False, False, True):
        if damage:
            (hwp,) = (tmp_path / "cache" / "programs").glob("*.hwp")
            hwp.write_bytes(hwp.read_bytes()[:-1] + b"\x00")
        assert main(argv) == 0
        runs.append(json.loads(capsys.readouterr().out))
    assert [r["cached"] for r in runs] == [False, True, False]
    written = (tmp_path / "out" / "program.hwp").read_bytes()
    assert hashlib.sha256(written).hexdigest() == runs[0]["program_sha256"]
