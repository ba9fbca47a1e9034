"""Fidelity: sources inside the repo, energy tables from FPGA sources, GPU baselines at the
workload's own bytes, FlightLLM's IR read as a plan, and the replicas against FlightLLM's
published results (expectations are the published figures or hand derivations)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hwflow.analysis.flightllm import plan_from_ir, with_profiler_divisor
from hwflow.analysis.gpus import PRECISIONS, estimate, load_gpus, workload_bytes_per_token
from hwflow.analysis.measurements import flightllm_figures
from hwflow.config import MAPPINGS, load_hw, load_model, load_plan
from hwflow.energy import load_energy_table
from hwflow.perf.sim import compile_cached, simulate

SOURCES = Path(__file__).resolve().parents[1] / "docs" / "SOURCES.md"


def _data_files():
    return [*MAPPINGS.glob("hw/*.yaml"), *MAPPINGS.glob("energy/*.yaml"), MAPPINGS / "gpus.yaml"]


def test_citations_point_inside_the_repo():
    anchors = set(re.findall(r'<a id="([\w-]+)"></a>', SOURCES.read_text()))
    assert {"ds963", "pg276", "shuhai", "flightllm-artifact", "estimates", "nvidia"} <= anchors
    for f in _data_files():
        text = f.read_text()
        assert "REFERENCE.md" not in text, f
        for a in re.findall(r"docs/SOURCES\.md#([\w-]+)", text):
            assert a in anchors, f"{f.name} cites docs/SOURCES.md#{a}, which has no anchor"


def test_energy_tables_are_fpga_sourced_and_distinct():
    u, v = load_energy_table("xcu280"), load_energy_table("xcvh1782")
    # block RAM per bit (DS512, 21 mW / (300 MHz x 72 b) = 0.97 pJ/bit, x (0.85)^2) below HBM's
    assert u.sram_pj_per_bit == pytest.approx(21e-3 / (300e6 * 72) * 1e12 * 0.85**2, abs=0.01)
    assert u.sram_pj_per_bit < u.hbm_pj_per_bit and v.sram_pj_per_bit < v.hbm_pj_per_bit
    assert u.idle_unit_cycle_pj > 0 and v.idle_unit_cycle_pj > 0  # stalled units are not free
    assert v.hbm_pj_per_bit == 6.0 and u.hbm_pj_per_bit == 3.9  # HBM2e (Micron) vs HBM2
    assert "ESTIMATE" in v.sources["static_w"]  # no VHK158 figure: labelled, not passed off
    for t in (u, v):  # block RAM from Xilinx data, not an ASIC SRAM figure x 14
        assert "DS512" in t.sources["sram_pj_per_bit"]
        assert "Horowitz" not in t.sources["sram_pj_per_bit"]


def test_gpu_points_use_the_workloads_own_bytes():
    # LLaMA-2-7B linear weights 32 x (4 x 4096^2 + 3 x 4096 x 11008) + LM head 32000 x 4096
    # = 6,607,077,376 parameters; FP16: 2 B each; KV at 1000 tokens: 2 x 32 x 32 x 128 x 1000 x 2 B
    cfg = load_model("llama2-7b")
    b = workload_bytes_per_token(cfg, *PRECISIONS["FP16"], 1000)
    assert b == 6_607_077_376 * 2 + 524_288_000
    v100s = {g.name: g for g in load_gpus()}["V100S"]
    e = estimate(v100s, b)
    assert e.tokens_per_s == pytest.approx(1134e9 / 13_738_442_752)  # 82.5 tokens/s
    assert v100s.power_kind == "tdp"  # tokens/J at TDP: a lower bound for that rate
    int4 = workload_bytes_per_token(cfg, *PRECISIONS["INT4-weight"], 1000)
    assert int4 == pytest.approx(6_607_077_376 * 4.125 / 8 + 524_288_000)


def _linear(name, dtype="int8", ratio=1.0):
    return {
        "type": "linear_mv",
        "param": [
            {
                "name": f"{name}.weight",
                "dtype": dtype,
                "sparse_flag": ratio < 1,
                "sparse_ratio": ratio,
            },
            {"name": f"{name}.bias", "dtype": "int32"},
        ],
    }


def test_plan_from_ir_keeps_precision_and_sparsity():
    ir = [{"type": "layernorm"}]
    for i in range(2):
        ir += [_linear(f"q_proj_layer_{i}", ratio=0.7), _linear(f"k_proj_layer_{i}", ratio=0.7)]
        ir += [_linear(f"{op}_layer_{i}") for op in ("v_proj", "out_proj", "gate", "up")]
        ir += [_linear(f"down_layer_{i}", ratio=0.5 if i else 1.0)]
    ir.append(_linear("lm_head_layer"))
    plan = plan_from_ir(ir, "x")
    # 0.7 kept is not an N:16 pattern: the smallest N with N/16 >= 0.7 is 16 (dense);
    # 0.5 is 8:16 exactly; everything int8
    assert plan == {
        "name": "x",
        "weights": {"bits": 8, "sparsity": "dense"},
        "rules": [{"layers": [1], "ops": ["down"], "bits": 8, "sparsity": "8:16"}],
        "lm_head": {"bits": 8, "sparsity": "dense"},
    }
    shipped = load_plan("flightllm-ir")  # what the published IR gives: INT8, dense everywhere
    assert (shipped.weights.bits, shipped.weights.sparsity, shipped.rules) == (8, "dense", ())


def _run(fig, decode=16):
    cfg, plan, hw = load_model("llama2-7b"), load_plan(fig.plan), load_hw(fig.hw)
    prog = compile_cached(cfg, plan, hw, 2048)
    return simulate(cfg, plan, hw, fig.prefill, decode, program=prog)


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="measured 2026-12-01 (h-cyc): 40.0 tokens/s at 128 + 16, 0.73 of the board "
    "(hwflow sim --hw flightllm-u280 --plan flightllm-ir: 43.1 -> 39.7 tokens/s): the cycle "
    "model now charges what the generated machine does, its LD unit's one word-wide AXI port "
    "returning a transfer's words in order (costs.hbm_bursts; cosim: every LD/ST of "
    "tiny-llama 16+8 equal to the RTL), and a 1.5 KiB word (24 channels x 64 B) takes its "
    "channel ~27 cycles, so each LD ends with the words of the channels that finish together "
    "queued at the port. "
    "FlightLLM's board is not built that way; a machine whose LD writes words as their "
    "channels deliver them (out of order) would win it back: the lead's decision",
)
def test_u280_replica_within_25_percent_of_the_board():
    """FlightLLM as built on the U280 (24 weight channels, one MV engine per SLR, its own IR's
    INT8 plan) against the 55 tokens/s measured on the board; nothing is fitted to it."""
    fig = next(f for f in flightllm_figures() if f.kind == "measured")
    r = _run(fig)
    assert 0.75 <= r.decode_tokens_per_s / fig.value <= 1.25, r.decode_tokens_per_s


@pytest.mark.slow
def test_vhk158_profiler_figure_is_the_replica_divided_by_its_3_2():
    """The profiler's 103.5 tokens/s divides every instruction by 3.2; the replica (its config,
    its IR's plan, no divisor) runs about 3.2x slower, MV-bound."""
    fig = next(
        f for f in flightllm_figures() if f.metric == "decode_tokens_per_s" and f.kind == "profiler"
    )
    r = _run(fig)
    assert r.decode_tokens_per_s < fig.value / 2  # never divided silently
    assert with_profiler_divisor(r.decode_tokens_per_s) == pytest.approx(fig.value, rel=0.25)
