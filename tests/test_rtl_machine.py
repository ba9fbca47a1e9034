"""The whole machine (hwflow.hw.machine) on Verilator, against the functional simulator.

Hand-written programs of LD/ST/SYNC/SYS instructions (loops, register-modified addresses, rows
clamped by LEN, unaligned offsets and strides, multi-burst rows) run on the RTL
(sim/machine_bench.py) and on hwflow.funcsim.FuncSim; HBM and buffer bytes must be equal. All
tests share one build (one xdist group).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest

from hwflow.compiler import compile_model
from hwflow.config import load_hw, load_model, load_plan
from hwflow.funcsim import FuncSim
from hwflow.hw.machine.run import Step, run_steps
from hwflow.hw.machine.units import available_units
from hwflow.isa import Buf, Program, Runtime, Template, Unit, make

pytestmark = [pytest.mark.rtl, pytest.mark.xdist_group("rtl-tiny-machine")]

ST, LD = 1 << Unit.ST, 1 << Unit.LD


@cache
def _compiled():
    return compile_model(load_model("tiny-llama"), load_plan("w8a8"), load_hw("tiny"), 16)


def _xfer(op: str, **f: int):
    return make(op, kind=3, **f)


def _ldst_program(src: int, dst: int, mutate: str = "") -> tuple[Template, ...]:
    """Loops over three tiles: LD rows (clamped to LEN) from ``src`` into ACT at a moving,
    unaligned offset, ST them to ``dst`` with another stride; then one 1500-byte row through
    KV (three bursts, unaligned both ends) and a SYNC barrier."""
    rel = 0 if mutate == "drop_token" else ST
    body = [
        _xfer("LD", release=rel, hbm=src + 5, hbm_reg=3, hbm_stride=77, buf=Buf.ACT, off=3,
              off_reg=4, stride=100, row_bytes=70, rows=5, rows_reg=1),
        _xfer("ST", wait=LD, hbm=dst + 9, hbm_reg=3, hbm_stride=130, buf=Buf.ACT, off=3,
              off_reg=4, stride=100, row_bytes=70, rows=5, rows_reg=1),
        make("ADDI", rd=3, ra=3, imm=1000),
        make("ADDI", rd=4, ra=4, imm=600),
    ]  # fmt: skip
    instrs = [
        make("SETI", rd=3, imm=0),
        make("SETI", rd=4, imm=0),
        make("LOOP", count=3),
        *body,
        make("ENDLOOP"),
        make("LOOP", count=0),
        _xfer("LD", hbm=src, buf=Buf.KV, row_bytes=32, rows=1),
        make("ENDLOOP"),
        _xfer("LD", release=ST, hbm=src + 4001, buf=Buf.KV, off=17, row_bytes=1500, rows=1),
        make("SYNC.ST", wait=LD, release=LD),
        make("SYNC.LD", wait=ST, release=ST),
        _xfer("ST", wait=LD, hbm=dst + 5003, buf=Buf.KV, off=17, row_bytes=1500, rows=1),
        make("MULI", rd=5, ra=1, imm=3),
        make("MINI", rd=6, ra=5, imm=4),
        _xfer("LD", release=ST, hbm=src + 9000, buf=Buf.PARAM, off=64, stride=32,
              hbm_stride=40, row_bytes=32, rows=7, rows_reg=6),
        _xfer("ST", wait=LD, hbm=dst + 9000, buf=Buf.PARAM, off=64, stride=32,
              hbm_stride=40, row_bytes=32, rows=7, rows_reg=6),
        make("END"),
    ]  # fmt: skip
    return (Template("prefill", 1, 16, tuple(instrs)),)


def _run(hw, prog, hbm, **kw):
    """The program on the machine with every implemented unit (one build for all tests)."""
    return run_steps(
        hw, prog, hbm, [Step("prefill", Runtime(3, 0))], units=available_units(hw)[0], **kw
    )


def _case(mutate: str = ""):
    comp = _compiled()
    hw = load_hw("tiny")
    src = comp.layout.region("L0").base
    dst = src + 50_000  # inside the image, away from the source rows
    prog = Program(comp.program.header, comp.layout.regions, _ldst_program(src, dst, mutate))
    rng = np.random.default_rng(7)
    hbm = rng.integers(0, 256, comp.layout.total, dtype=np.uint8)
    return comp, hw, prog, hbm


def test_ldst_sys_program_matches_funcsim() -> None:
    """LD/ST/SYNC/SYS program, LEN 3: HBM and ACT/KV/PARAM bytes equal FuncSim's, no token
    left, every unit instruction recorded by the monitor."""
    comp, hw, prog, hbm = _case()
    fs = FuncSim(prog, hw, load_model("tiny-llama"), comp.layout, hbm.copy())
    stats = fs.run("prefill", Runtime(3, 0))
    run = _ldst_run()
    assert (run.tests, run.failed) == (1, 0), run
    assert np.array_equal(run.hbm[0], fs.hbm)
    for b in (Buf.ACT, Buf.KV, Buf.PARAM):
        assert np.array_equal(run.buffers[b], fs.bufs[b]), b
    recs = run.steps[0]["records"]
    assert len(recs) == stats.instructions
    assert run.steps[0]["absent_used"] == 0


def test_machine_bench_fails_on_a_dropped_token() -> None:
    """Dropping LD's release in the loop leaves ST waiting: the step never ends, the bench
    fails."""
    _comp, hw, prog, hbm = _case("drop_token")
    run = _run(hw, prog, hbm, timeout=5_000)
    assert run.failed == 1


def test_machine_hbm_differs_from_a_flipped_bit() -> None:
    """The comparison is live: FuncSim on an image with one flipped source bit disagrees."""
    comp, hw, prog, hbm = _case()
    bad = hbm.copy()
    bad[comp.layout.region("L0").base + 5] ^= 1
    fs = FuncSim(prog, hw, load_model("tiny-llama"), comp.layout, bad)
    fs.run("prefill", Runtime(3, 0))
    assert not np.array_equal(_ldst_run().hbm[0], fs.hbm)


def test_cosim_tiny_llama_is_bit_exact() -> None:
    """tiny-llama w8a8, prefill 4 + decode 2 on the whole machine: the HBM image equals
    FuncSim's after every step, every unit implemented."""
    from hwflow.hw.machine.cosim import cosim_model

    res = cosim_model(load_model("tiny-llama"), load_plan("w8a8"), load_hw("tiny"), 4, 2)
    assert res["missing_units"] == [] and not res["absent_unit_used"]
    assert res["bit_exact"], res["mismatch"]


def test_cosim_fails_on_a_flipped_weight_bit() -> None:
    """One flipped weight bit in the RTL's HBM image: not bit-exact, and the mismatch names
    a diverging step, unit and instruction."""
    from hwflow.hw.machine.cosim import cosim_model

    res = cosim_model(
        load_model("tiny-llama"), load_plan("w8a8"), load_hw("tiny"), 4, 1, flip_weight_bit=True
    )
    assert not res["bit_exact"]
    assert res["mismatch"]["step"] == 0 and res["mismatch"]["unit"] == "ST", res["mismatch"]


def test_cosim_gqa_tied_flightllm_is_bit_exact() -> None:
    """Another config on the tiny preset: 4 query heads over 1 K/V head (GQA ratio 4, the
    shipped tiny-llama has 2), tied embeddings, the flightllm plan (N:M sparse weights);
    prefill 3 + decode 1."""
    from hwflow.hw.machine.cosim import cosim_model

    cfg = load_model("tiny-llama").model_copy(
        update={"name": "tiny-llama-gqa4", "kv_heads": 1, "tie_word_embeddings": True}
    )
    res = cosim_model(cfg, load_plan("flightllm"), load_hw("tiny"), 3, 1)
    assert res["bit_exact"], res["mismatch"]


def test_cosim_opt_w4a8_is_bit_exact() -> None:
    """The OPT family (LayerNorm, ReLU, learned positions, biases) with INT4 weights (w4a8);
    prefill 2 + decode 1."""
    from hwflow.hw.machine.cosim import cosim_model

    res = cosim_model(load_model("tiny-opt"), load_plan("w4a8"), load_hw("tiny"), 2, 1)
    assert res["bit_exact"], res["mismatch"]


def test_cosim_grouped_w4a8_is_bit_exact() -> None:
    """Group-wise INT4 weight scales (w4a8-g32: one 8-bit multiplier per row and 32 inputs,
    applied at the DSP chain's group ends) on the whole machine; prefill 3 + decode 1."""
    from hwflow.hw.machine.cosim import cosim_model

    res = cosim_model(load_model("tiny-llama"), load_plan("w4a8-g32"), load_hw("tiny"), 3, 1)
    assert res["bit_exact"], res["mismatch"]


@cache
def _ldst_run():
    """The LD/ST/SYNC program on the machine, ACT/KV/PARAM dumped (one run for its tests)."""
    _comp, hw, prog, hbm = _case()
    return _run(hw, prog, hbm, dump=(Buf.ACT, Buf.KV, Buf.PARAM))


@cache
def _ldst_classes():
    """The LD/ST/SYNC program's RTL records and the model's per-unit times."""
    from hwflow.hw.machine.cycles import model_times

    _comp, hw, prog, _hbm = _case()
    _cyc, per = model_times(hw, prog, "prefill", Runtime(3, 0))
    return _ldst_run().steps[0]["records"], per


def test_sync_cycles_match_the_model_and_a_wrong_expectation_fails() -> None:
    """Per-class cycle agreement (:func:`hwflow.hw.machine.cycles.check_agreement`) holds for
    SYNC (the front end retires one per cycle, as the model's ``sync_cost``); the same check
    against an expectation 3 % off (the model's times scaled) fails."""
    from hwflow.hw.machine.cycles import check_agreement, class_table

    records, per = _ldst_classes()
    check_agreement(class_table(records, per), 0.02, classes=("SYNC",))
    wrong = {u: [(c, t * 1.03) for c, t in ops] for u, ops in per.items()}
    with pytest.raises(AssertionError, match="SYNC"):
        check_agreement(class_table(records, wrong), 0.02, classes=("SYNC",))


def test_ldst_cycles_match_the_model_within_2_percent() -> None:
    """The LD/ST classes of the same program within 2 % of the model (the issue's target):
    strided, unaligned, multi-burst and register-clamped rows (measured 2026-12-01: LD 40.4
    vs 40.0, ST 42.4 vs 42.0; by our reading the 1,500-byte store, two bursts per channel: the
    simulated HBM charges a store's read/write turnaround on
    every burst, the model once per channel and transfer); the same check against the
    model's times 5 % off fails."""
    from hwflow.hw.machine.cycles import check_agreement, class_table

    records, per = _ldst_classes()
    rows = class_table(records, per)
    print("\n" + "\n".join(f"{r.name} {r.count} {r.rtl:.1f} {r.model:.1f}" for r in rows))
    check_agreement(rows, 0.02, classes=("LD", "ST"))
    wrong = {u: [(c, t * 1.05) for c, t in ops] for u, ops in per.items()}
    with pytest.raises(AssertionError, match="LD"):
        check_agreement(class_table(records, wrong), 0.02, classes=("LD", "ST"))


def test_machine_key_covers_every_rtl_source():
    """Every hwflow module the simulated machine's Verilog is generated from (what importing
    its top modules loads, less configs and host-side runners) is hashed into the build key:
    a change to any of them must rebuild, never reuse a stale simulator."""
    import subprocess
    import sys

    from hwflow.hw.cosim import machine_sources

    code = (
        "import sys, hwflow.hw.machine.hbm_sim, hwflow.hw.machine.top, hwflow.hw.machine.verilog;"
        "print('\\n'.join(m.__file__ for n, m in sys.modules.items()"
        " if n.startswith('hwflow') and getattr(m, '__file__', None)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = {Path(f).resolve() for f in out.stdout.split()}
    hashed = {f.resolve() for f in machine_sources()}
    # values reach the Verilog through the parameters (configs), or the module finds tools
    data_only = {"config", "errors.py", "files.py", "__init__.py", "cache.py", "tools.py"}
    missing = [
        str(f) for f in loaded - hashed
        if not ({f.name, f.parent.name} & data_only)
    ]  # fmt: skip
    assert not missing, missing
