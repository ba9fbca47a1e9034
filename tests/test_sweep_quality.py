"""Quality as a sweep axis: each plan's perplexity on real text, cached, drawn against tokens/J."""

from __future__ import annotations

import pytest

from hwflow.analysis import sweep as sw
from hwflow.analysis.plots import pareto_min_max, plot_results
from hwflow.errors import ConfigError


def _checkpoint(tmp_path):
    from ckpt_files import hf_llama, shipped_config, write_hf

    from hwflow.compress import random_weights
    from hwflow.config import load_model

    w = random_weights(load_model("tiny-llama"), 3)
    return write_hf(tmp_path / "ck", shipped_config("tiny-llama"), hf_llama(w, 2))


def test_pareto_min_max_hand_points():
    # (ppl, tokens/J): lower x and higher y win
    pts = [(10.0, 1.0), (12.0, 2.0), (11.0, 0.5), (30.0, 2.0), (40.0, 3.0)]
    assert pareto_min_max(pts) == [0, 1, 4]


def test_sweep_rows_carry_each_plans_perplexity(tmp_path, monkeypatch):
    from hwflow.checkpoint import load_checkpoint
    from hwflow.compress import quantize_model
    from hwflow.config import load_plan
    from hwflow.perplexity import calibration_ids, int_perplexity, text_ids

    monkeypatch.setenv("HWFLOW_CACHE", str(tmp_path / "cache"))
    ck_dir = _checkpoint(tmp_path)
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 8)
    grid = tmp_path / "g.yaml"
    grid.write_text(
        "model: tiny-llama\npresets: [tiny]\nplans: [w8a8, w4a8]\nlengths: [[16, 8]]\n"
        f"quality: {{model: {ck_dir}, text: {text}, tokens: 40}}\n"
    )
    g = sw.load_grid(grid)
    notes: list[str] = []
    rows = sw.run_sweep(g, tmp_path / "pts", workers=1, note=notes.append)
    ck = load_checkpoint(ck_dir)
    ids = text_ids(ck.tokenizer(), text.read_text(), 40, text)
    calib = calibration_ids(ck.tokenizer(), text.read_text(), 40, text)
    cfg = ck.cfg.model_copy(update={"max_positions": max(len(ids), len(calib))})
    for row in rows:
        plan = load_plan(row["point_plan"])
        qm = quantize_model(cfg, plan, ck.weights.materialize(), calib_ids=calib)
        assert row["ppl"] == pytest.approx(int_perplexity(qm, ids).ppl, rel=1e-12)
        assert row["quality_model"] == ck.cfg.name and row["quality_tokens"] == 40
    assert rows[0]["ppl"] != rows[1]["ppl"]
    assert rows[0]["float_ppl"] == rows[1]["float_ppl"]
    # a repeated sweep takes every perplexity from the cache
    notes.clear()
    again = sw.run_sweep(g, tmp_path / "pts", workers=1, note=notes.append)
    assert [r["ppl"] for r in again] == [r["ppl"] for r in rows]
    assert sum("perplexity from the cache" in n for n in notes) == 2
    written = plot_results(rows, tmp_path / "plots")
    assert (tmp_path / "plots" / "quality.png") in written


def test_quality_section_errors(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text("model: tiny-llama\npresets: [tiny]\nquality: {model: tiny-llama}\n")
    with pytest.raises(ConfigError, match="is not a checkpoint"):
        sw.load_grid(grid)
    grid.write_text("model: tiny-llama\npresets: [tiny]\nquality: {model: x, tokens: 1}\n")
    with pytest.raises(ConfigError, match=r"quality\.tokens"):
        sw.load_grid(grid)
