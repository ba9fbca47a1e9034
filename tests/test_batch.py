"""Batched decode (issue 12, part 3): B sequences per decode step, each with its own KV cache
and position, on tiny models.

The expectations are independent of the code under test: every sequence of a batched run is
compared with the integer reference of that sequence alone (batch 1,
:func:`hwflow.reference.generate_int`); the engine choice and the refusals against figures
worked out by hand from ``mappings/hw/tiny.yaml``.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from hwflow.batchcheck import batch_prompt_lengths, check_batch_against_reference
from hwflow.cli import main
from hwflow.compiler import compile_model
from hwflow.compiler.batch import batch_engine, engine_beats
from hwflow.compiler.layout import build_hbm_image
from hwflow.compress import quantize_model, random_weights
from hwflow.config import load_hw, load_model, load_plan
from hwflow.errors import CapacityError, ConfigError
from hwflow.funcsim import FuncSim
from hwflow.isa import Runtime, SfuFunc, Template, expand, make
from hwflow.perf.lower import lower, lower_reused
from hwflow.reference import generate_int


@pytest.fixture(scope="module")
def tiny():
    return load_hw("tiny")


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-opt"])  # LLaMA with GQA (4 q, 2 kv heads)
def test_every_sequence_matches_its_batch1_reference(model, tiny):
    """Prompts 1, 22, 44 (three decode buckets; 44 + 3 + 1 steps end at max_len 48), 3 decode steps of all 3, then one of the
    first 2: logits of every sequence at every step and every KV cache bit for bit."""
    res = check_batch_against_reference(load_model(model), load_plan("flightllm"), tiny, 48, 3, 3)
    assert res["prompt_lengths"] == [1, 22, 44] and res["engine"] == "MM"
    assert len(res["steps"]) == 3 + 3 * 3 + 2
    assert [s["pos"] for s in res["steps"] if s["seq"] == 2 and s["phase"] == "decode"] == [
        44,
        45,
        46,
    ]
    assert res["bit_exact"], ([s for s in res["steps"] if not s["equal"]], res["kv_equal"])


def test_positions_and_slots_are_each_sequences_own(tiny):
    """The same two token rows decoded with the positions of the two sequences swapped give
    other logits (each row attends to its own cache at its own position), and a prefill into
    slot 1 leaves slot 0's KV cache untouched."""
    cfg, plan = load_model("tiny-llama"), load_plan("flightllm")
    comp = compile_model(cfg, plan, tiny, 32, batch=2)
    qm = quantize_model(cfg, plan, random_weights(cfg, 0))
    fs = FuncSim(comp.program, tiny, cfg, comp.layout, build_hbm_image(comp.layout, qm))
    rng = np.random.default_rng(3)
    a, b = rng.integers(cfg.vocab, size=5), rng.integers(cfg.vocab, size=9)
    fs.step("prefill", qm.embed(a, 0), 0, seq=0)
    k0 = fs.kv_cache(0, 5, 0)[0]
    fs.step("prefill", qm.embed(b, 0), 0, seq=1)
    assert np.array_equal(fs.kv_cache(0, 5, 0)[0], k0)
    ref_a, ref_b = generate_int(qm, a, 1), generate_int(qm, b, 1)
    ta, tb = (int(np.argmax(r[0].logits[-1])) for r in (ref_a, ref_b))
    x = np.concatenate([qm.embed(np.array([ta]), 5), qm.embed(np.array([tb]), 9)])
    hbm = fs.hbm.copy()
    got = fs.step_batch(x, [5, 9])
    assert np.array_equal(got[0], ref_a[1].logits[-1])
    assert np.array_equal(got[1], ref_b[1].logits[-1])
    fs.hbm[:] = hbm
    swapped = fs.step_batch(x, [9, 5])
    assert not np.array_equal(swapped[0], got[0])


def test_engine_choice_follows_the_engines_token_lanes(tiny):
    """tiny: MV 2 chains x 16, one token lane; MM the same chains with rows = 2 lanes. A thin
    MM of B rows takes ceil(B / lanes) passes of every weight beat (costs.matmul_cost), so the
    beats scale by 3 (MV) and 2 (MM) from B = 1 to 3: the MM engine takes the batch; at B = 1
    MV's beats are no more than MM's and decode keeps MV."""
    cfg, plan = load_model("tiny-llama"), load_plan("flightllm")
    mv1, mm1 = (engine_beats(cfg, plan, tiny, e, 1) for e in ("MV", "MM"))
    assert engine_beats(cfg, plan, tiny, "MV", 3) == 3 * mv1
    assert engine_beats(cfg, plan, tiny, "MM", 3) == 2 * mm1
    assert engine_beats(cfg, plan, tiny, "MM", 4) == 2 * mm1
    assert mv1 <= mm1 and batch_engine(cfg, plan, tiny, 1) == "MV"
    assert [batch_engine(cfg, plan, tiny, b) for b in (2, 3, 8)] == ["MM"] * 3


def test_reused_pricing_equals_the_full_expansion_of_a_batched_step(tiny):
    """The cycle model's iteration reuse (R15 writes define R2) prices a batched step at
    mixed positions exactly as the plain expansion does, including an idle slot."""
    cfg, plan = load_model("tiny-llama"), load_plan("flightllm")
    prog = compile_model(cfg, plan, tiny, 64, batch=4).program
    for pos in ([3, 40, 17], [50, 2, 33, 49]):
        rt = Runtime.batch(pos)
        t = prog.select("decode", rt)
        full, acts = lower(tiny, expand(t, rt))
        reused, racts = lower_reused(tiny, t, rt)
        assert reused == full
        assert racts == acts


def test_reuse_keys_see_r2_change_with_r15(tiny):
    """A loop body that points SEQ at R5 (which advances) and prices an SFU op by R2: the
    iterations differ only through CTX[SEQ], so reuse keyed on R2 as it was when the iteration
    started (reset to CTX[0] at the end of each) would price all three like the first. By hand:
    rows = CTX[0], CTX[1], CTX[2] = 3, 7, 5; silu of rows x 8 elements on tiny's 4 lanes = 2 x
    rows beats."""
    body = (make("SETI", rd=5, imm=0), make("LOOP", count=3), make("ADD", rd=15, ra=5, rb=0),
            make("SFU", func=SfuFunc.SILU, rows=64, rows_reg=2, cols=8),
            make("ADDI", rd=5, ra=5, imm=1), make("SETI", rd=15, imm=0), make("ENDLOOP"),
            make("END"))  # fmt: skip
    t = Template("decode", 1, 64, body, {"batch": 3})
    rt = Runtime.batch([3, 7, 5])
    full, _ = lower(tiny, expand(t, rt))
    reused, _ = lower_reused(tiny, t, rt)
    assert [o.beats for o in full] == [6, 14, 10]
    assert reused == full


def test_prompt_lengths_are_distinct_and_leave_room():
    assert batch_prompt_lengths(4, 64, 4) == [1, 20, 39, 59]
    assert batch_prompt_lengths(3, 8, 3) == [1, 2, 4]
    with pytest.raises(ConfigError, match="needs max_len >= 9"):
        batch_prompt_lengths(5, 8, 3)


def test_kv_caches_that_do_not_fit_hbm_are_refused_with_the_numbers(tiny):
    """tiny-llama at max_len 64: one KV cache is 2 layers x K and V heads laid out over
    whole 4 x 256 B channel periods; with HBM cut to hold batch 2 but not 8, batch 8 is
    refused naming the HBM need, the capacity and how many sequences fit."""
    cfg, plan = load_model("tiny-llama"), load_plan("flightllm")
    two = compile_model(cfg, plan, tiny, 64, batch=2)
    code = two.program.region("program")
    need2 = code.base + code.size  # data, then the program
    small = tiny.model_copy(
        update={"hbm": tiny.hbm.model_copy(update={"capacity_gib": (need2 + 100) / 2**30})}
    )
    compile_model(cfg, plan, small, 64, batch=2)
    with pytest.raises(CapacityError) as e:
        compile_model(cfg, plan, small, 64, batch=8)
    msg = str(e.value)
    assert "batch 8" in msg and "8 sequences' KV caches at max_len 64" in msg, msg
    assert f"has {(need2 + 100) / 1024:.2f} KiB (hbm.capacity_gib)" in msg, msg
    fit = int(re.search(r"(\d+) sequences fit", msg).group(1))
    assert fit == 2  # the 100 bytes left and the program's room hold no third cache


def test_batch_cli_refusals_are_one_line(tmp_path, capsys, monkeypatch):
    """batch 0 and a batch whose activations overflow tiny's 128 KiB buffer: exit 2, one line."""
    monkeypatch.setenv("HWFLOW_CACHE", str(tmp_path))
    base = ["--model", "tiny-llama", "--hw", "tiny", "--plan", "flightllm", "--max-len", "32"]
    for cmd in ("compile", "check", "sim", "cosim"):
        argv = [cmd, *base[:-2], "--batch", "0"] if cmd == "cosim" else [cmd, *base, "--batch", "0"]
        assert main(argv) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and "--batch 0: a batch is 1..65535 sequences" in err[0], err
    assert main(["compile", *base, "--batch", "400"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "activations of a batch of 400 sequences need" in err[0], err
    assert "but buffers.act_kib holds 131072 bytes" in err[0]  # tiny.yaml: act_kib 128
    assert main(["cosim", *base[:-2], "--batch", "2"]) == 2
    assert "runs batch-1 programs only" in capsys.readouterr().err


def test_sim_batch_reports_tokens_of_all_sequences(tmp_path, capsys, monkeypatch):
    """sim --batch 3: tokens/s = 3 tokens per decode step time; the bound follows the engine
    and HBM times it reports; the compile summary counts 3 KV caches."""
    monkeypatch.setenv("HWFLOW_CACHE", str(tmp_path))
    base = ["--model", "tiny-llama", "--hw", "tiny", "--plan", "flightllm", "--max-len", "48"]
    assert main(["sim", *base, "--prefill", "20", "--decode", "4", "--batch", "3", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["batch"] == 3 and s["engine"] == "MM"
    assert s["decode_tokens_per_s"] == pytest.approx(3 / (s["ms_per_token"] / 1e3))
    bound = s["decode_engine_ms_per_step"] > s["decode_hbm_ms_per_step"]
    assert s["compute_bound"] == bound
    assert main(["compile", *base, "--batch", "3", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["batch"] == 3 and info["decode_engine"] == "MM"
    step, per = info["decode_hbm_bytes_per_step"], info["decode_hbm_bytes_per_token"]
    assert per["total"] == step["total"] // 3 and step["context"] == 48
    # the step moves each weight once and 3 sequences' KV rows: more than one sequence's
    # step of a batch-1 program, less than three of them
    assert main(["compile", *base, "--json"]) == 0
    one = json.loads(capsys.readouterr().out)["decode_hbm_bytes_per_token"]
    assert one["total"] < step["total"] < 3 * one["total"]
    assert step["weights"] == one["weights"] and step["kv"] > 2 * one["kv"]


def test_batch_sweep_and_its_figure(tmp_path, monkeypatch):
    """A grid's ``batch`` axis: one row per batch with the batch simulation's figures, the
    program holding B KV caches at max_len = prefill + decode; ``hwflow plot`` draws the batch
    figure from it. A batch of 0 in the grid is refused naming the file."""
    from hwflow.analysis.batch_plot import compute_bound_batch
    from hwflow.analysis.plots import plot_results, read_results
    from hwflow.analysis.sweep import load_grid, run_sweep, write_csv

    monkeypatch.setenv("HWFLOW_CACHE", str(tmp_path / "cache"))
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "model: tiny-llama\npresets: [tiny]\nplans: [flightllm]\nlengths: [[30, 2]]\n"
        "batch: [1, 2, 4]\n"
    )
    rows = run_sweep(load_grid(grid), tmp_path / "points", workers=1)
    assert [(r["status"], r["batch"], r["engine"]) for r in rows] == [
        ("ok", 1, "MV"),
        ("ok", 2, "MM"),
        ("ok", 4, "MM"),
    ]
    for r in rows:  # B tokens per decode step, every step's time
        assert r["decode_tokens_per_s"] == pytest.approx(r["batch"] / (r["ms_per_token"] / 1e3))
    csv = tmp_path / "out.csv"
    csv.write_text(write_csv(rows))
    back = read_results(csv)
    first = next((r["batch"] for r in rows if r["compute_bound"]), None)
    assert compute_bound_batch(back) == first
    files = plot_results(back, tmp_path / "plots")
    assert [f.name for f in files] == ["batch.png", "batch.svg"]
    grid.write_text("model: tiny-llama\npresets: [tiny]\nbatch: [0]\n")
    with pytest.raises(ConfigError, match=r"grid\.yaml: batch 0: a batch is 1\.\.65535"):
        load_grid(grid)
