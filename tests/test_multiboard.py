"""Multi-board systems (issue 12, part 2): partitioning, the link instructions on the functional
simulators (bit-exact with the single-board integer reference), the links' SimPy model, the
capacity checks per board, bad input and the sweep/plot over board counts. Tiny models only,
but for LLaMA-2-70B's HBM fit, which plans the layout without lowering."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hwflow.cli import main
from hwflow.compiler.layout import plan_hbm
from hwflow.compiler.parallel import add_reduce_region
from hwflow.compiler.partition import board_image, board_plan, compile_system, shard_model
from hwflow.compress import quantize_model, random_weights
from hwflow.config import load_hw, load_model, load_plan
from hwflow.errors import CapacityError, ConfigError, ProgramError, UnsupportedError
from hwflow.isa import Runtime, expand
from hwflow.multiboard import System, check_system_against_reference
from hwflow.perf.links import allreduce_ns, p2p_ns

TINY = load_hw("tiny")


@pytest.mark.parametrize(
    ("model", "plan", "mode"),
    [
        ("tiny-llama", "w8a8", "tensor"),  # GQA: 4 heads over 2 KV heads, one KV head a board
        ("tiny-llama", "w4a8-g32", "tensor"),  # weight groups along the split reduction
        ("tiny-opt", "w8a8", "tensor"),  # biases, LayerNorm, ReLU's per-row quantization
        ("tiny-llama", "w8a8", "pipeline"),
        ("tiny-opt", "w4a8", "pipeline"),
    ],
)
def test_two_boards_are_bit_exact_with_the_single_board_reference(model, plan, mode):
    res = check_system_against_reference(
        load_model(model), load_plan(plan), TINY, 2, mode, max_len=32, decode_steps=3
    )
    assert [s["phase"] for s in res["steps"]].count("decode") == 3
    assert res["bit_exact"], res["steps"]


@pytest.mark.parametrize(
    ("model", "boards", "mode"), [("tiny-opt", 4, "tensor"), ("tiny-llama", 2, "pipeline")]
)
def test_more_boards_and_two_prefill_chunks(model, boards, mode):
    """A ring of 4 (every collective has 4 members); a 130-token prompt runs as two 128-row
    chunks, each passing the links (pipeline: a SEND/RECV per chunk)."""
    res = check_system_against_reference(
        load_model(model), load_plan("w8a8"), TINY, boards, mode, max_len=256, decode_steps=2,
        lengths=[130],
    )  # fmt: skip
    assert res["steps"][0]["tokens"] == 130
    assert res["bit_exact"], res["steps"]


def _system(model: str, mode: str, boards: int = 2):
    cfg, plan = load_model(model), load_plan("w8a8")
    sysc = compile_system(cfg, plan, TINY, 32, boards, mode)
    qm = quantize_model(cfg, plan, random_weights(cfg, 0))
    shares = [shard_model(qm, c, p) for c, p in zip(sysc.cfgs, sysc.pars, strict=True)]
    images = [
        board_image(comp, qm, sh, p)
        for comp, sh, p in zip(sysc.boards, shares, sysc.pars, strict=True)
    ]
    return cfg, qm, sysc, images


def test_a_wrong_reduce_record_is_caught():
    """Must-fail: the requantization of the reduced sum reads board 1's record; one changed
    multiplier there changes the logits (so the bit-exact test can fail)."""
    from hwflow.reference import generate_int

    _, qm, sysc, images = _system("tiny-llama", "tensor")
    ids = np.array([3, 1, 4, 1, 5])
    want = generate_int(qm, ids, 0)[0].logits[-1]
    assert np.array_equal(System(sysc, TINY, [i.copy() for i in images]).step(
        "prefill", qm.embed(ids, 0), 0), want)  # fmt: skip
    treq = sysc.boards[1].layout.region("treq").base
    bad = [i.copy() for i in images]
    bad[1][treq + 5] ^= 0x20  # layer 0, op o: bit 13 of the first channel's multiplier
    got = System(sysc, TINY, bad).step("prefill", qm.embed(ids, 0), 0)
    assert not np.array_equal(got, want)


def test_tensor_parallel_splits_heads_kv_heads_and_ffn_columns():
    cfg = load_model("tiny-llama")  # 4 heads, 2 KV heads, 128 FFN columns, 2 layers
    shares = board_plan(cfg, 2, "tensor")
    assert [(c.heads, c.kv_heads, c.intermediate, c.layers) for c, _ in shares] == [
        (2, 1, 64, 2),
        (2, 1, 64, 2),
    ]
    pipe = board_plan(load_model("llama2-7b"), 3, "pipeline")  # 32 layers: 10, 11, 11
    assert [p.layers for _, p in pipe] == [(0, 10), (10, 21), (21, 32)]


def test_each_board_program_carries_its_links():
    cfg, _, sysc, _ = _system("tiny-llama", "tensor")
    rt = Runtime(1, 4)
    ops = [c for c in expand(sysc.boards[0].program.select("decode", rt), rt)]
    red = [c for c in ops if c.op == "ALLRED"]
    # per layer: the o and down partial sums (red 0) and the FFN row maxima (red 1)
    assert [c["red"] for c in red] == [0, 1, 0] * cfg.layers
    assert {c["peer"] for c in red} == {2}
    assert red[0]["row_bytes"] == 4 * cfg.hidden  # INT32 partials of one hidden row
    _, _, pipe, _ = _system("tiny-llama", "pipeline")
    first = [c.op for c in expand(pipe.boards[0].program.select("decode", rt), rt)]
    last = [c.op for c in expand(pipe.boards[1].program.select("decode", rt), rt)]
    assert "SEND" in first and "RECV" not in first
    assert "RECV" in last and "SEND" not in last
    assert pipe.boards[0].program.header["board"]["index"] == 0


def test_a_single_board_simulator_refuses_link_instructions():
    from hwflow.funcsim import FuncSim

    _, qm, sysc, images = _system("tiny-llama", "tensor")
    fs = FuncSim(sysc.boards[0].program, TINY, sysc.cfgs[0], sysc.boards[0].layout, images[0])
    with pytest.raises(ProgramError, match="ALLRED needs a multi-board system"):
        fs.step("prefill", qm.embed(np.array([1, 2]), 0), 0)


def test_board_counts_that_do_not_split_the_model_are_refused():
    cfg = load_model("tiny-llama")
    with pytest.raises(UnsupportedError, match="4 attention heads, not a multiple of 3"):
        board_plan(cfg, 3, "tensor")
    with pytest.raises(UnsupportedError, match="2 KV heads, not a multiple of 4"):
        board_plan(cfg, 4, "tensor")
    with pytest.raises(UnsupportedError, match="2 layers, fewer than the boards"):
        board_plan(cfg, 3, "pipeline")


def test_llama2_70b_fits_8_u280_at_4_bits_and_not_4():
    """Each board's HBM plan (weights, KV cache at 2048, reduce records) against 8 GiB."""
    cfg, plan, hw = load_model("llama2-70b"), load_plan("w4a8"), load_hw("u280")
    sub, _ = board_plan(cfg, 8, "tensor")[0]
    layout = add_reduce_region(plan_hbm(sub, plan.resolve(sub), plan.head(), hw, 2048), sub, hw)
    assert layout.total <= hw.hbm.capacity_bytes
    assert layout.total > 0.5 * hw.hbm.capacity_bytes  # an eighth of 35 GB of INT4 weights
    with pytest.raises(CapacityError, match=r"board 0 of 4 .*needs 8\.\d+ GiB of HBM.*has 8\.00"):
        compile_system(cfg, plan, hw, 2048, 4, "tensor")


def test_allreduce_time_of_the_ring_model():
    """Bidirectional ring, hand-worked: 8192 bytes over 4 boards is two halves of 4096, each
    in chunks of 1024 bytes; 2 x 3 steps of 200 ns + 1024 B / 12.5 GB/s = 281.92 ns."""
    hw = load_hw("u280")
    assert allreduce_ns(hw, 8192, 4) == pytest.approx(6 * (200 + 1024 / 12.5))
    assert allreduce_ns(hw, 8192, 1) == 0.0
    assert p2p_ns(hw, 1250) == pytest.approx(200 + 100)


def _error(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--boards", "3"], ("--boards 3", "4 attention heads", "[1, 2]")),
        (["--boards", "0"], ("--boards 0", "at least 1 board")),
        (["--boards", "2", "--parallel", "data"], ("'data'", "tensor, pipeline")),
        (["--boards", "2", "--parallel", "pipeline", "--hw", "vhk158"], ("no system: section",)),
    ],
)
def test_bad_system_input_is_one_line_exit_2(capsys, extra, needles):
    base = ["--model", "tiny-llama", "--hw", "tiny", "--plan", "w8a8"]
    for cmd in (["compile"], ["check", "--max-len", "16"]):
        _error(capsys, [*cmd, *base, *extra], *needles)


def test_cosim_refuses_more_than_one_board(capsys):
    _error(capsys, ["cosim", "--model", "tiny-llama", "--plan", "w8a8", "--boards", "2"],
           "runs one board")  # fmt: skip


def test_cosim_refuses_a_multi_board_program():
    from hwflow.hw.machine.cosim import check_single_board

    _, _, sysc, _ = _system("tiny-llama", "pipeline")
    with pytest.raises(UnsupportedError, match="multi-board program"):
        check_single_board(sysc.boards[0].program)


def test_compile_writes_one_program_per_board(tmp_path, capsys):
    argv = ["compile", "--model", "tiny-llama", "--hw", "tiny", "--plan", "w8a8", "--max-len",
            "32", "--boards", "2", "-o", str(tmp_path / "out"), "--json"]  # fmt: skip
    assert main(argv) == 0
    info = json.loads(capsys.readouterr().out)
    assert [r["heads"] for r in info["per_board"]] == [2, 2]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "board0.hwp", "board1.hwp", "summary.json"]  # fmt: skip


def test_sim_over_boards(capsys):
    argv = ["sim", "--model", "tiny-llama", "--hw", "tiny", "--plan", "w8a8", "--max-len", "64",
            "--prefill", "16", "--decode", "4", "--json"]  # fmt: skip
    assert main(argv) == 0
    one = json.loads(capsys.readouterr().out)
    assert main([*argv, "--boards", "2"]) == 0
    two = json.loads(capsys.readouterr().out)
    assert two["boards"] == 2 and two["link_energy"] == "not modelled"
    assert two["link_ms_per_token"] > 0
    # half the weights per board: faster decode, never more than twice
    assert one["decode_tokens_per_s"] < two["decode_tokens_per_s"] < 2 * one["decode_tokens_per_s"]
    assert main([*argv, "--boards", "2", "--parallel", "pipeline"]) == 0
    pipe = json.loads(capsys.readouterr().out)
    assert pipe["idle_static_j"] > 0  # each stage waits while the other works


def test_sweep_grid_takes_board_counts(tmp_path):
    from hwflow.analysis.sweep import load_grid

    grid = tmp_path / "g.yaml"
    grid.write_text("model: tiny-llama\npresets: [tiny]\nplans: [w8a8]\nlengths: [[16, 4]]\n"
                    "boards: [1, 2]\nparallel: [tensor, pipeline]\n")  # fmt: skip
    pts = load_grid(grid).points
    assert [(p.parallel, p.boards) for p in pts] == [
        ("tensor", 1), ("tensor", 2), ("pipeline", 1), ("pipeline", 2)]  # fmt: skip
    grid.write_text("model: tiny-llama\nboards: [0]\n")
    with pytest.raises(ConfigError, match=r"boards \[0\]"):
        load_grid(grid)


def test_preset_system_section_is_checked():
    from pydantic import ValidationError

    from hwflow.config import System

    with pytest.raises(ValidationError, match="a ring needs 2 ports"):
        System(topology="ring", ports=1, link_gbps=12.5, link_latency_ns=200.0, max_boards=4,
               sources={k: "x" for k in ("ports", "link_gbps", "link_latency_ns",
                                         "max_boards")})  # fmt: skip
    with pytest.raises(ValidationError, match=r"link_gbps = 12\.5 has no source"):
        System(topology="ring", ports=2, link_gbps=12.5, link_latency_ns=200.0, max_boards=4,
               sources={"ports": "x", "link_latency_ns": "x", "max_boards": "x"})  # fmt: skip
    assert load_hw("u280").system.link_gbps == 12.5
