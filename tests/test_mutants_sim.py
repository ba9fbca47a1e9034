"""The simulator's program cache and its summary row (issue 13)."""

from __future__ import annotations

import time

import pytest

import hwflow.compiler
from hwflow.config import load_hw, load_model, load_plan
from hwflow.energy import load_energy_table
from hwflow.isa import Runtime
from hwflow.model import step_graph
from hwflow.perf import sim
from hwflow.perf.machine import UNITS


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama"), load_plan("flightllm"), load_hw("tiny")


def test_programs_are_cached_under_home_and_read_back(tiny, tmp_path, monkeypatch):
    """README: compiled programs are cached under ~/.cache/hwflow unless HWFLOW_CACHE moves
    them. A second process (empty in-memory table) reads the file instead of compiling."""
    monkeypatch.delenv("HWFLOW_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(sim, "_PROGRAMS", type(sim._PROGRAMS)())
    first = sim.compile_cached(*tiny, 64)
    files = list((tmp_path / ".cache" / "hwflow" / "programs").glob("*.hwp"))
    assert len(files) == 1 and files[0].read_bytes() == first.to_bytes()
    assert sim.compile_cached(*tiny, 64) is first  # the in-memory table
    monkeypatch.setattr(sim, "_PROGRAMS", type(sim._PROGRAMS)())

    def no_compile(*a, **k):
        raise AssertionError("compiled again although the cache file is there")

    monkeypatch.setattr(hwflow.compiler, "compile_model", no_compile)
    again = sim.compile_cached(*tiny, 64)
    assert again.to_bytes() == first.to_bytes()


def test_summary_row(tiny, tmp_path, monkeypatch):
    """The row a sweep writes: the columns the plots read, action counts consistent with the
    energy table (joules = count x pJ), every step simulated in exact mode; decode 0 is a
    prefill-only run."""
    monkeypatch.setenv("HWFLOW_CACHE", str(tmp_path))
    r = sim.simulate(*tiny, 8, 3, mode="exact")
    s = r.summary()
    assert {"decode_bytes_per_token", "roofline_ms_per_token", "tokens_per_j"} <= set(s)
    assert s["j_per_token"] == pytest.approx(1 / s["tokens_per_j"])
    seconds = s["total_cycles"] / (s["clock_mhz"] * 1e6)
    assert s["average_w"] == pytest.approx(s["energy_j"] / seconds)
    assert s["simulated_steps"] == 4  # the prefill and 3 decode steps, each simulated
    assert (s["prefill"], s["decode"]) == (8, 3)
    for u in UNITS:  # fractions of the run: no unit is busy or stalled longer than the run
        assert 0 <= s[f"util_{u}"] <= 1 and 0 <= s[f"stall_{u}"] <= 1, u
    t = load_energy_table(tiny[2].energy_table)
    bits = s["buffer_read_bits"] + s["buffer_write_bits"]
    assert bits > 0 and s["energy_buffers_j"] == pytest.approx(bits * t.sram_pj_per_bit * 1e-12)
    hbm = s["hbm_read_bytes"] + s["hbm_write_bytes"]
    assert s["energy_hbm_j"] == pytest.approx(hbm * 8 * t.hbm_pj_per_bit * 1e-12)
    p = sim.simulate(*tiny, 8, 0, mode="exact").summary()
    assert p["decode"] == 0 and p["decode_bytes_per_token"] == 0


def test_run_totals_are_the_sums_of_its_steps(tiny, tmp_path, monkeypatch):
    """An exact run of prefill 8 + decode 3 is four steps one after the other: its cycles,
    busy and stall cycles per unit are the sums of the four steps run one by one."""
    monkeypatch.setenv("HWFLOW_CACHE", str(tmp_path))
    cfg, plan, hw = tiny
    r = sim.simulate(cfg, plan, hw, 8, 3, mode="exact")
    prog = sim.compile_cached(cfg, plan, hw, min(cfg.max_positions, 2048))
    steps = [sim.run_step(hw, prog, "prefill", Runtime(8, 0))]
    steps += [sim.run_step(hw, prog, "decode", Runtime(1, p)) for p in (8, 9, 10)]
    assert r.total_cycles == sum(s.cycles for s in steps)
    assert all(s.stats.trace == [] for s in steps)  # no trace unless asked for
    for u in UNITS:
        assert r.busy[u] == sum(s.stats.busy[u] for s in steps), u
        assert r.stall[u] == sum(s.stats.stall[u] for s in steps), u
    assert sum(r.stall.values()) > 0


def test_decode_roofline_is_the_step_bytes_at_sustained_bandwidth(tiny, tmp_path, monkeypatch):
    """Each decode step's roofline is the bytes that step must move (model.step_graph at its
    own context) at the achievable bandwidth of tiny.yaml: long reads are 512 B bursts, which
    the device would stream at 14.375 GB/s less the refresh share 260 / 3900 on 4 channels at
    100 MHz (4 x 14.375 x 14 / 15 / 0.1 = 536.67 B per cycle), but the core side takes one
    buffer word of 128 B per cycle (32 B per channel): 128 B per cycle. Short runs (<= 4
    steps) and long ones (interpolated)."""
    monkeypatch.setenv("HWFLOW_CACHE", str(tmp_path))
    cfg, plan, hw = tiny
    BW = min(4 * 14.375 * 14 / 15 / 0.1, 128)
    for decode in (3, 9):
        r = sim.simulate(cfg, plan, hw, 8, decode, mode="fast")
        want = [step_graph(cfg, plan, "decode", 1, p).hbm_bytes / BW for p in range(8, 8 + decode)]
        assert r.decode_roofline_cycles == pytest.approx(want, rel=1e-9)
        assert want[-1] > want[0]  # the KV cache grows with the context


def test_equal_step_signatures_mean_equal_priced_programs():
    """Fast mode simulates one step per signature. With a 64-byte interleave granule the
    16-byte K/V rows of the 16 positions of decode bucket 33..48 land on four channels (four
    positions per granule: tests/test_perf_sim.py), so the steps price in 4 ways. Equal
    signatures must mean equal priced programs (the full lowering, op for op), so one
    signature for the whole bucket would be wrong."""
    from hwflow.isa import expand
    from hwflow.perf.lower import PerfContext, lower, step_signature

    tiny = load_hw("tiny")
    hw = tiny.model_copy(update={"hbm": tiny.hbm.model_copy(update={"interleave_bytes": 64})})
    cfg, plan = load_model("tiny-llama"), load_plan("flightllm")
    prog = sim.compile_cached(cfg, plan, hw, 512)
    ctx = PerfContext(hw)
    sigs, progs = {}, {}
    for pos in range(32, 48):
        rt = Runtime(1, pos)
        t = prog.select("decode", rt)
        assert (t.lo, t.hi) == (33, 48)
        sigs[pos] = step_signature(ctx, t, rt)
        progs[pos] = lower(hw, expand(t, rt), ctx)[0]
    assert len({tuple(p) for p in progs.values()}) == 4
    for p in sigs:
        for q in sigs:
            if sigs[p] == sigs[q]:
                assert progs[p] == progs[q], (p, q)


def test_alu_source_registers():
    """The registers a SYS ALU instruction reads (the POS-taint analysis follows them): none
    for SETI, ra and rb for ADD and SUB, ra for the immediate forms."""
    from hwflow.isa import make
    from hwflow.perf.lower import _srcs

    assert _srcs(make("SETI", rd=3, imm=5)) == []
    assert _srcs(make("ADD", rd=3, ra=4, rb=5)) == [4, 5]
    assert _srcs(make("SUB", rd=3, ra=6, rb=7)) == [6, 7]
    assert _srcs(make("ADDI", rd=3, ra=8, imm=1)) == [8]
    assert _srcs(make("MINI", rd=3, ra=9, imm=1)) == [9]


def test_a_signature_names_which_iteration_repeats():
    """Two steps of one LEN whose loops price the same distinct iterations but repeat a
    different one. R3 = 0, R4 = 256 * POS; three times: LD 256 bytes from HBM R3, then R3 =
    min(R4 - R3, 256). POS 1 (R4 256): R3 = 0, 256, 0; POS 2 (R4 512): 0, 256, 256. tiny
    deals 256-byte granules over 4 channels, so the loads stream from channels 0, 1, 0 and
    0, 1, 1: different programs. Each step's third iteration repeats an earlier key (the
    loaded address R3 with R4), so both signatures list the same two priced loads, and only
    which iteration the repeat marker names tells the steps apart."""
    from hwflow.isa import Buf, Template, XferKind, decode_stream, encode_stream, expand, make
    from hwflow.perf.lower import PerfContext, lower, step_signature

    hw = load_hw("tiny")
    body = [
        make("SETI", rd=3, imm=0),
        make("MULI", rd=4, ra=2, imm=256),
        make("LOOP", count=3),
        make(
            "LD",
            kind=XferKind.WEIGHTS,
            hbm=0,
            hbm_reg=3,
            hbm_stride=256,
            buf=Buf.WEIGHT,
            row_bytes=256,
            rows=1,
        ),
        make("SUB", rd=5, ra=4, rb=3),
        make("MINI", rd=3, ra=5, imm=256),
        make("ENDLOOP"),
        make("END"),
    ]
    t = Template("decode", 1, 64, decode_stream(encode_stream(body)))
    ctx = PerfContext(hw)
    channels, sigs = {}, {}
    for pos in (1, 2):
        rt = Runtime(1, pos)
        ops = lower(hw, expand(t, rt), ctx)[0]
        channels[pos] = [[p.channel for p in o.hbm] for o in ops if o.hbm is not None]
        sigs[pos] = step_signature(ctx, t, rt)
    assert channels == {1: [[0], [1], [0]], 2: [[0], [1], [1]]}
    assert sigs[1] != sigs[2]


def test_exact_run_reports_its_steps_progress_and_notes(tiny, tmp_path, monkeypatch):
    """Prefill 4 + 2 decode steps in exact mode: three tasks (the prefill, one per decode
    position), so progress hears (1, 3), (2, 3), (3, 3); the notes say what is compiled and
    what is simulated; every step is simulated (no fallback), the run's events are the sum
    of its three steps' (each run again on its own, cut at its barriers), and no timeline is kept untraced."""
    from hwflow.perf.lower import PerfContext
    from hwflow.perf.machine import SegmentMemo
    from hwflow.perf.sim import run_step

    monkeypatch.setenv("HWFLOW_CACHE", str(tmp_path))
    monkeypatch.setattr(sim, "_PROGRAMS", type(sim._PROGRAMS)())
    heard, calls = [], []
    r = sim.simulate(
        *tiny, 4, 2, mode="exact", note=heard.append, progress=lambda i, n: calls.append((i, n))
    )
    assert heard == [
        "compiling tiny-llama / flightllm for tiny (max_len 512)",
        "simulating prefill 4 + 2 decode steps (exact mode)",
    ]
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert (r.simulated_steps, r.fallback_steps, r.trace) == (3, 0, [])
    assert r.decode_buckets == 0 and isinstance(r.wall_s, float) and r.wall_s > 0
    # replayed events: the steps' own, run in order on one context (and memo), as simulated
    ctx = PerfContext(tiny[2])
    seq = [("prefill", Runtime(4, 0)), ("decode", Runtime(1, 4)), ("decode", Runtime(1, 5))]
    prog0 = sim.compile_cached(*tiny, 512)
    replayed = [
        run_step(tiny[2], prog0, ph, rt, memo=ctx.memo, ctx=ctx).stats.replayed_events
        for ph, rt in seq
    ]
    assert r.replayed_events == sum(replayed) > 0
    prog, hw = sim.compile_cached(*tiny, 512), tiny[2]
    steps = [("prefill", Runtime(4, 0)), ("decode", Runtime(1, 4)), ("decode", Runtime(1, 5))]
    # cut at the barriers as the simulator does (a reused segment counts its events too)
    got = [run_step(hw, prog, ph, rt, memo=SegmentMemo()).stats.events for ph, rt in steps]
    assert r.events == sum(got)
    assert run_step(hw, prog, "prefill", Runtime(4, 0)).length == 4


def test_program_cache_keys_and_a_damaged_entry(tiny, tmp_path, monkeypatch):
    """The program key tells models, plans and batch sizes apart; a damaged cache file is compiled
    again (and the note says so, with the batch when > 1)."""
    from hwflow.perf.sim import program_key, program_path

    cfg, plan, hw = tiny
    keys = {
        program_key(cfg, plan, hw, 64),
        program_key(load_model("tiny-opt"), plan, hw, 64),
        program_key(cfg, plan, hw, 64, 2),
        program_key(cfg, plan, hw, 64, 3),
        program_key(cfg, load_plan("w8a8"), hw, 64),
    }
    assert len(keys) == 5 and program_key(cfg, plan, hw, 64, 1) in keys
    monkeypatch.setenv("HWFLOW_CACHE", str(tmp_path))
    monkeypatch.setattr(sim, "_PROGRAMS", type(sim._PROGRAMS)())
    path = program_path(program_key(cfg, plan, hw, 64, 2))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a program")
    heard = []
    prog = sim.compile_cached(cfg, plan, hw, 64, note=heard.append, batch=2)
    assert heard == ["compiling tiny-llama / flightllm for tiny (max_len 64, batch 2)"]
    assert max(t.batch for t in prog.templates) == 2  # compiled for two sequences
    assert path.read_bytes() == prog.to_bytes() != b"not a program"


def test_a_step_on_another_preset_is_refused_by_name(tiny, tmp_path, monkeypatch):
    """A program compiled for tiny, run on a copy of tiny at another clock (another digest):
    refused, naming the preset it is run on."""
    from hwflow.errors import ProgramError
    from hwflow.perf.sim import run_step

    monkeypatch.setenv("HWFLOW_CACHE", str(tmp_path))
    cfg, plan, hw = tiny
    prog = sim.compile_cached(cfg, plan, hw, 64)
    other = hw.model_copy(update={"clock_mhz": 123.0})
    with pytest.raises(
        ProgramError, match=r"^program was compiled for preset 'tiny' .* not for tiny \("
    ):
        run_step(other, prog, "decode", Runtime(1, 4))


def test_case_bounds_are_inclusive():
    """One prefill token and a case that ends exactly at max_len are allowed; one more is
    refused, with the sum."""
    from hwflow.errors import ConfigError

    sim._check_case("exact", 1, 0, 512)
    sim._check_case("fast", 500, 12, 512)
    with pytest.raises(ConfigError) as err:
        sim._check_case("fast", 500, 13, 512)
    assert str(err.value) == "prefill 500 + decode 13 = 513 exceeds max_len 512"


# --------------------------------------------------------------------------------------------
# perf/lower.py: pricing corner cases and iteration reuse on hand-made templates


def _tpl(instrs, hi=64, batch=1):
    """A decode template of ``instrs`` (+ END) for contexts up to ``hi`` and ``batch``
    sequences, through the binary encoding."""
    from hwflow.isa import Template, decode_stream, encode_stream, make

    words = decode_stream(encode_stream([*instrs, make("END")]))
    return Template("decode", 1, hi, words, {"batch": batch} if batch > 1 else {})


def _ld(hbm=0, reg=0, rows=1, row_bytes=256, stride=256):
    from hwflow.isa import Buf, XferKind, make

    return make(
        "LD", kind=XferKind.WEIGHTS, hbm=hbm, hbm_reg=reg, hbm_stride=stride, buf=Buf.WEIGHT,
        row_bytes=row_bytes, rows=rows,
    )  # fmt: skip


def _channels(ops):
    return [[p.channel for p in o.hbm] for o in ops if o.hbm is not None]


def test_a_transfer_may_end_at_the_last_hbm_byte():
    """tiny has 1 GiB of HBM. Two 256-byte rows 256 apart from 1 GiB - 512 end exactly at
    1 GiB: priced; from 1 GiB - 256 the second row ends 256 bytes beyond: refused, naming
    the byte reached."""
    from hwflow.errors import CapacityError
    from hwflow.isa import expand
    from hwflow.perf.lower import lower

    hw, cap = load_hw("tiny"), 2**30
    t = _tpl([_ld(hbm=cap - 512, rows=2)])
    assert len(lower(hw, expand(t, Runtime(1, 0)))[0]) == 1
    with pytest.raises(CapacityError) as err:
        lower(hw, expand(_tpl([_ld(hbm=cap - 256, rows=2)]), Runtime(1, 0)))
    assert str(err.value) == (
        f"LD (pc 0) reaches HBM byte {cap + 256}, beyond the {cap} bytes of preset tiny"
    )


def test_a_row_that_crosses_a_granule_is_priced_on_both_channels():
    """tiny: 256-byte granules. A 256-byte row from byte 0 stays in channel 0; the same row
    from byte 128 crosses into channel 1: priced apart, not as the first."""
    from hwflow.isa import expand
    from hwflow.perf.lower import PerfContext, lower

    hw = load_hw("tiny")
    ctx = PerfContext(hw)
    ops = lower(hw, expand(_tpl([_ld(0), _ld(128)]), Runtime(1, 0)), ctx)[0]
    assert _channels(ops) == [[0], [0, 1]]
    # 200 bytes from 512 stay in granule 2 (channel 2); from 640 they cross into channel 3
    ops = lower(
        hw, expand(_tpl([_ld(512, row_bytes=200), _ld(640, row_bytes=200)]), Runtime(1, 0)), ctx
    )[0]
    assert _channels(ops) == [[2], [2, 3]]


def test_ops_without_work_are_priced_empty():
    """An MV with no rows and an SFU op with no elements take no cycles: each is its unit's
    op of 0 beats and 0 latency named as usual, with its words and tokens."""
    from hwflow.isa import MatmulFunc, SfuFunc, Unit, expand, make, spec
    from hwflow.perf.lower import lower
    from hwflow.perf.machine import MOp

    hw = load_hw("tiny")
    mv = make("MV", release=1 << Unit.SFU, func=MatmulFunc.LINEAR, rows=0, cols=64, k=64,
              n=16, m=16, wbits=8)  # fmt: skip
    sfu = make("SFU", wait=1 << Unit.MV, release=1 << Unit.LD, func=SfuFunc.SILU, rows=0,
               cols=32)  # fmt: skip
    ops = lower(hw, expand(_tpl([mv, sfu]), Runtime(1, 0)))[0]
    # no reduction (K = 0) is no work either; one column is
    fields = dict(func=MatmulFunc.LINEAR, rows=1, cols=16, k=0, n=16, m=16, wbits=8)
    assert lower(hw, expand(_tpl([make("MV", **fields)]), Runtime(1, 0)))[0][0].beats == 0
    fields.update(cols=1, k=64)
    assert lower(hw, expand(_tpl([make("MV", **fields)]), Runtime(1, 0)))[0][0].beats > 0
    mw, sw = spec("MV").words, spec("SFU").words  # the encoding's words: 10 and 10 (ISA v5)
    assert (mw, sw) == (10, 10)
    assert ops == [
        MOp(int(Unit.MV), "MV", mw, 0, 0, (), (int(Unit.SFU),)),
        MOp(int(Unit.SFU), "SFU.silu", sw, 0, 0, (int(Unit.MV),), (int(Unit.LD),)),
    ]
    one = make("SFU", func=SfuFunc.SILU, rows=1, cols=1)
    ops, acts = lower(hw, expand(_tpl([one]), Runtime(1, 0)))
    assert ops[0].beats > 0 and acts.instr_words == sw  # one element is work


def test_an_unknown_sfu_function_is_named():
    from hwflow.errors import ProgramError
    from hwflow.isa import expand, make
    from hwflow.perf.lower import lower

    for code in (13, 14):  # 13 functions are named: codes 0..12 (ISA v5)
        t = _tpl([make("SFU", func=code, rows=1, cols=4)])
        with pytest.raises(ProgramError, match=rf"^SFU \(pc 0\): function {code} unknown$"):
            lower(load_hw("tiny"), expand(t, Runtime(1, 0)))


def test_action_counts_of_a_program_are_the_sums_of_its_ops():
    """Buffer, SFU, MAC and word counts of [silu, mul, silu, mv, mv] are twice those of
    [silu] plus those of [mul] plus twice those of [mv] (identical instructions share one
    priced object, counted as often as they occur); MACs of two different MVs add up."""
    from hwflow.isa import MatmulFunc, SfuFunc, expand, make
    from hwflow.perf.lower import lower

    hw = load_hw("tiny")
    a = make("SFU", func=SfuFunc.SILU, rows=3, cols=20, a_buf=1, o_buf=1)
    b = make("SFU", func=SfuFunc.MUL, rows=2, cols=16, a_buf=1, b_buf=2, o_buf=1)
    mv = make("MV", func=MatmulFunc.LINEAR, rows=1, cols=16, k=64, n=16, m=16, wbits=8)
    mv2 = make("MV", func=MatmulFunc.LINEAR, rows=1, cols=32, k=64, n=16, m=16, wbits=8)

    def acts(*instrs):
        return lower(hw, expand(_tpl(list(instrs)), Runtime(1, 0)))[1]

    all_, one, two, three = acts(a, b, a, mv, mv), acts(a), acts(b), acts(mv)
    for f in ("buffer_read_bits", "buffer_write_bits", "sfu_ops", "instr_words"):
        want = 2 * getattr(one, f) + getattr(two, f) + 2 * getattr(three, f)
        assert getattr(all_, f) == want > 0, f
    # MACs by weight width: 16 x 64 per 16-column MV, 32 x 64 for the 32-column one
    assert all_.macs == {8: 2 * 16 * 64} and acts(mv, mv2).macs == {8: 16 * 64 + 32 * 64}


def test_transfer_bytes_and_buffer_bits():
    """An LD of 2 rows of 256 bytes, 1024 apart (both in channel 0 on tiny), moves 512 bytes
    in 16 channel cycles: its op's bytes, the HBM bytes read and 8 x 512 buffer bits written; an ST of one 64-byte
    row reads 8 x 64 buffer bits and writes 64 HBM bytes. A transfer of no rows touches no
    buffer byte, so any offset is accepted."""
    from hwflow.isa import Buf, XferKind, expand, make
    from hwflow.perf.lower import lower

    hw = load_hw("tiny")
    st = make("ST", kind=XferKind.LOGITS, hbm=4096, hbm_stride=64, buf=Buf.ACT, row_bytes=64,
              rows=1)  # fmt: skip
    ops, acts = lower(hw, expand(_tpl([_ld(rows=2, stride=1024)]), Runtime(1, 0)))
    assert _channels(ops) == [[0]] and ops[0].hbm_bytes == 512
    # each row streams 256 bytes through the 32 bytes a cycle the core side gives a channel
    # (tiny's 128-byte buffer word over 4 channels; tests/test_perf_lower.py): 8 + 8 cycles
    assert ops[0].hbm_occupancy == ops[0].hbm[0].occupancy == 16
    assert (acts.hbm_read_bytes, acts.buffer_write_bits, acts.buffer_read_bits) == (512, 4096, 0)
    acts = lower(hw, expand(_tpl([st]), Runtime(1, 0)))[1]
    assert (acts.hbm_write_bytes, acts.buffer_read_bits, acts.buffer_write_bits) == (64, 512, 0)
    far = make("LD", **{**_ld().fields, "rows": 0, "off": hw.buffers.bytes("weight") + 64})
    assert lower(hw, expand(_tpl([far]), Runtime(1, 0)))[0][0].hbm_bytes == 0
    # ... and reaches no HBM byte: accepted 100 bytes before the end of HBM
    end = make("LD", **{**_ld().fields, "rows": 0, "hbm": 2**30 - 100, "hbm_stride": 0})
    assert lower(hw, expand(_tpl([end]), Runtime(1, 0)))[0][0].hbm_bytes == 0


def test_strided_rows_are_priced_by_their_exact_offset():
    """Two 16-byte rows 250 apart: from byte 0 the second row [250, 266) straddles channels
    0 and 1 (0: 16 + 6 bytes, 1: 10); from byte 16 it lies in channel 1 (0: 16, 1: 16). Both
    start in granule 0, but they are priced apart."""
    from hwflow.isa import expand
    from hwflow.perf.lower import PerfContext, lower

    hw = load_hw("tiny")
    lds = [_ld(at, rows=2, row_bytes=16, stride=250) for at in (0, 16)]
    ops = lower(hw, expand(_tpl(lds), Runtime(1, 0)), PerfContext(hw))[0]
    per = [{p.channel: p.nbytes for p in o.hbm} for o in ops]
    assert per == [{0: 22, 1: 10}, {0: 16, 1: 16}]


def test_operands_sharing_a_read_port_are_slower():
    """An SFU add whose operands sit in one buffer reads both through its one port; from two
    buffers it reads them in parallel: the shared port takes more cycles."""
    from hwflow.isa import SfuFunc, expand, make
    from hwflow.perf.lower import lower

    hw = load_hw("tiny")

    def beats(b_buf):
        t = _tpl([make("SFU", func=SfuFunc.ADD, rows=2, cols=32, a_buf=1, b_buf=b_buf, o_buf=1)])
        return lower(hw, expand(t, Runtime(1, 0)))[0][0].beats

    assert beats(1) > beats(2)


def _reuse_agrees(body, channels, rt=None):
    """``lower_reused`` of ``body`` gives the full lowering's ops, whose transfers stream
    from ``channels`` (by hand)."""
    from hwflow.isa import expand
    from hwflow.perf.lower import PerfContext, lower, lower_reused

    hw, rt = load_hw("tiny"), rt or Runtime(1, 0)
    t = _tpl(body, 512, rt.length)
    full = lower(hw, expand(t, rt), PerfContext(hw))[0]
    assert _channels(full) == channels
    assert lower_reused(hw, t, rt, PerfContext(hw))[0] == full


def test_reuse_keys_a_loop_over_sequences_by_the_sequence():
    """Three sequences at positions 0, 0 and 256 (a batched decode step). Twice: SEQ += 1
    (which makes POS that sequence's position), then LD 256 bytes from POS: the loads come
    from 0 and 256, channels 0 and 1. POS is 0 when either iteration begins; writing SEQ
    rewrites POS, so the iterations are keyed by SEQ (0, then 1), not by POS."""
    from hwflow.isa import REG_POS, REG_SEQ, make

    body = [
        make("LOOP", count=2),
        make("ADDI", rd=REG_SEQ, ra=REG_SEQ, imm=1),
        _ld(reg=REG_POS),
        make("ENDLOOP"),
    ]
    _reuse_agrees(body, [[0], [1]], Runtime.batch([0, 0, 256]))


def test_reuse_keys_a_clamped_address_by_its_exact_source():
    """R4 = 0, then twice: R3 = min(R4, 512), LD 256 bytes from R3, R4 += 1024. R4 is 0
    then 1024 (the same modulo tiny's 1024-byte channel period), but R3 is 0 then 512:
    channels 0 and 2. The clamp is not modular arithmetic, so the loop's iterations are
    keyed by R4's exact value and priced apart."""
    from hwflow.isa import make

    body = [
        make("SETI", rd=4, imm=0),
        make("LOOP", count=2),
        make("MINI", rd=3, ra=4, imm=512),
        _ld(reg=3),
        make("ADDI", rd=4, ra=4, imm=1024),
        make("ENDLOOP"),
    ]
    _reuse_agrees(body, [[0], [2]])


def test_reuse_keys_a_row_count_by_its_exact_value():
    """R3 = 1, then twice: an LD of at most 2 rows clamped to R3 rows, R3 += 1024: 1 row,
    then 2 (1025 clamped). 1 and 1025 agree modulo the period, but a row count is not an
    address: keyed exactly, the second iteration loads two rows (channels 0 and 1)."""
    from hwflow.isa import make

    ld = _ld(rows=2)
    ld = make("LD", **{**ld.fields, "rows_reg": 3})
    body = [
        make("SETI", rd=3, imm=1),
        make("LOOP", count=2),
        ld,
        make("ADDI", rd=3, ra=3, imm=1024),
        make("ENDLOOP"),
    ]
    _reuse_agrees(body, [[0], [0, 1]])


def test_reuse_keys_an_inner_loop_by_the_outer_loops_address():
    """Twice: R3 += 256, then an inner loop loads 256 bytes from R3 twice. The inner loop's
    body reads R3 (live-in, set by the outer loop): keyed by it, the second outer iteration's
    loads are priced on channel 2, not taken from the first's channel 1."""
    from hwflow.isa import make

    body = [
        make("SETI", rd=3, imm=0),
        make("LOOP", count=2),
        make("ADDI", rd=3, ra=3, imm=256),
        make("LOOP", count=2),
        _ld(reg=3),
        make("ENDLOOP"),
        make("ENDLOOP"),
    ]
    _reuse_agrees(body, [[1], [1], [2], [2]])


def test_pv_runs_bit_sliced_on_a_dual_int8_engine():
    """tiny's matrix-matrix engine packs two INT8 tokens per DSP (dual_int8), which leaves no
    room for P's ninth bit: P x V runs bit-sliced and takes longer than Q x K of the same
    shape; on a copy whose engine does not pack, the two cost the same."""
    from hwflow.isa import MatmulFunc, expand, make
    from hwflow.perf.lower import lower

    def beats(hw, func):
        mm = make("MM", func=func, rows=4, cols=32, k=64, n=16, m=16, wbits=8)
        return lower(hw, expand(_tpl([mm]), Runtime(1, 0)))[0][0].beats

    tiny = load_hw("tiny")
    assert tiny.mpe.dual_int8
    plain = tiny.model_copy(update={"mpe": tiny.mpe.model_copy(update={"dual_int8": False})})
    assert beats(tiny, MatmulFunc.PV) > beats(tiny, MatmulFunc.QK)
    assert beats(plain, MatmulFunc.PV) == beats(plain, MatmulFunc.QK)


def test_mm_beats_read_every_token_rows_activations():
    """tiny's matrix-matrix engine takes 2 tokens a beat. Dense INT8, 2 tokens x 16 columns x
    K 64: row groups of 2 chains x 16 / 16 = 2 columns, 8 groups of 64 / 16 = 4 beats: 32
    beats, each reading 2 token rows of 16 INT8 activations and 2 chains x 16 weights of 8
    bits: 512 bits a beat."""
    from hwflow.isa import Buf, MatmulFunc, expand, make
    from hwflow.perf.lower import lower

    mm = make("MM", func=MatmulFunc.LINEAR, rows=2, cols=16, k=64, n=16, m=16, wbits=8,
              a_buf=Buf.ACT, b_buf=Buf.WEIGHT, o_buf=Buf.ACT, obits=8, arow=0)  # fmt: skip
    acts = lower(load_hw("tiny"), expand(_tpl([mm]), Runtime(1, 0)))[1]
    assert acts.buffer_read_bits == 32 * (2 * 16 * 8 + 2 * 16 * 8)
    # with row factors: one 32-bit factor per token row read besides
    mm = make("MM", **{**mm.fields, "arow": 1})
    acts = lower(load_hw("tiny"), expand(_tpl([mm]), Runtime(1, 0)))[1]
    assert acts.buffer_read_bits == 32 * (2 * 16 * 8 + 2 * 16 * 8) + 2 * 32


def test_pos_taint_flows_against_program_order():
    """R4 = R5 = 0, then three times: LD 256 bytes from R5, R5 = R4, R4 = 256 * POS. R5
    depends on POS only through an instruction later in the body, so the analysis must go
    round again to see it: the third load (from 256 * POS: channel 1 at POS 1, 2 at POS 2)
    depends on POS, and the two steps' signatures differ as their programs do."""
    from hwflow.isa import expand, make
    from hwflow.perf.lower import PerfContext, lower, step_signature

    hw = load_hw("tiny")
    t = _tpl(
        [
            make("SETI", rd=5, imm=0),
            make("SETI", rd=4, imm=0),
            make("LOOP", count=3),
            _ld(reg=5),
            make("ADDI", rd=5, ra=4, imm=0),
            make("MULI", rd=4, ra=2, imm=256),
            make("ENDLOOP"),
        ]
    )
    ctx = PerfContext(hw)
    chans = {p: _channels(lower(hw, expand(t, Runtime(1, p)), ctx)[0]) for p in (1, 2)}
    assert chans == {1: [[0], [0], [1]], 2: [[0], [0], [2]]}
    assert step_signature(ctx, t, Runtime(1, 1)) != step_signature(ctx, t, Runtime(1, 2))


def test_a_link_op_is_priced_with_its_words():
    """A RECV (the LD unit's; its wait is the sender's, so it takes no cycles of its own) is
    the LD unit's op of its encoding's words, and the step fetches those words."""
    from hwflow.isa import Unit, expand, make, spec
    from hwflow.perf.lower import lower
    from hwflow.perf.machine import MOp

    recv = make("RECV", buf=1, row_bytes=64, rows=2, peer=1)
    ops, acts = lower(load_hw("tiny"), expand(_tpl([recv]), Runtime(1, 0)))
    w = spec("RECV").words
    assert ops == [MOp(int(Unit.LD), "RECV", w, 0, 0)] and acts.instr_words == w


def test_a_batched_decode_task_runs_every_sequence_at_its_position():
    """A decode task of batch 3 at position 7: three sequences, each 7 positions in (of
    batch 2: two); a prefill task of 5 tokens into KV-cache slot 2; a plain decode step: LEN 1
    at 7."""
    from hwflow.perf.sim import task_runtime

    assert task_runtime("decode", 1, 7, 3) == Runtime.batch([7, 7, 7])
    assert task_runtime("decode", 1, 7, 2) == Runtime.batch([7, 7])
    assert task_runtime("prefill", 5, 2) == Runtime(5, 0, 2)
    assert task_runtime("decode", 1, 7) == Runtime(1, 7)


def test_idle_unit_cycles_are_within_the_step(tiny, tmp_path, monkeypatch):
    """A step's idle unit cycles: each unit with ops is idle the step's cycles less its busy
    ones, so the sum lies between 0 and cycles x (units with ops), and below that bound as
    soon as any unit did work."""
    from hwflow.perf.machine import UNITS as U
    from hwflow.perf.sim import run_step

    monkeypatch.setenv("HWFLOW_CACHE", str(tmp_path))
    prog = sim.compile_cached(*tiny, 64)
    r = run_step(tiny[2], prog, "decode", Runtime(1, 4))
    working = [u for u in U[:5] if r.stats.ops[u]]
    assert len(working) >= 3
    assert 0 <= r.actions.idle_unit_cycles < r.cycles * len(working)


def test_the_program_table_keeps_the_newest(tiny, tmp_path, monkeypatch):
    """With room for one program in memory, compiling a second drops the first (the oldest),
    not the one just compiled."""
    from hwflow.perf.sim import program_key

    monkeypatch.setenv("HWFLOW_CACHE", str(tmp_path))
    monkeypatch.setattr(sim, "_PROGRAMS", type(sim._PROGRAMS)())
    monkeypatch.setattr(sim, "_PROGRAMS_KEPT", 1)
    cfg, plan, hw = tiny
    sim.compile_cached(cfg, plan, hw, 64)
    sim.compile_cached(cfg, plan, hw, 32)
    assert list(sim._PROGRAMS) == [program_key(cfg, plan, hw, 32)]


def _simulate_in_a_worker(args):
    cfg, plan, hw = args
    return sim.simulate(cfg, plan, hw, 4, 2, mode="exact", workers=2).decode_cycles


def test_workers_inside_a_daemon_process_run_in_it(tiny, tmp_path, monkeypatch):
    """A pool worker (a daemonic process, e.g. a sweep's) may not start processes of its own:
    asked for 2 workers there, the simulation runs its steps in the worker itself, with the
    same cycles as in the main process."""
    import multiprocessing as mp

    monkeypatch.setenv("HWFLOW_CACHE", str(tmp_path))
    want = sim.simulate(*tiny, 4, 2, mode="exact").decode_cycles
    with mp.get_context("fork").Pool(1) as pool:
        assert pool.apply(_simulate_in_a_worker, (tiny,)) == want


def test_reuse_sees_through_a_loop_that_never_runs():
    """Twice: a loop of 0 iterations (holding an inner loop, then R3 = 999), LD 256 bytes
    from R3, R3 += 256. The 0-iteration loop never sets R3, so the loads come from 0 and
    256 (channels 0 and 1): R3 is live into every iteration and keys it; the write inside
    the nested loop is not a write of the body's top level."""
    from hwflow.isa import make

    body = [
        make("SETI", rd=3, imm=0),
        make("LOOP", count=2),
        make("LOOP", count=0),
        make("LOOP", count=1),
        make("ENDLOOP"),
        make("SETI", rd=3, imm=999),
        make("ENDLOOP"),
        _ld(reg=3),
        make("ADDI", rd=3, ra=3, imm=256),
        make("ENDLOOP"),
    ]
    _reuse_agrees(body, [[0], [1]])
    direct = [
        make("SETI", rd=3, imm=0),
        make("LOOP", count=2),
        make("LOOP", count=0),
        make("SETI", rd=3, imm=999),
        make("ENDLOOP"),
        _ld(reg=3),
        make("ADDI", rd=3, ra=3, imm=256),
        make("ENDLOOP"),
    ]
    _reuse_agrees(direct, [[0], [1]])


def test_a_matmul_without_sparsity_numbers_is_refused():
    from hwflow.errors import ProgramError
    from hwflow.isa import MatmulFunc, expand, make
    from hwflow.perf.lower import lower

    mv = make("MV", func=MatmulFunc.LINEAR, rows=1, cols=16, k=64, n=0, m=16, wbits=8)
    with pytest.raises(ProgramError) as err:
        lower(load_hw("tiny"), expand(_tpl([mv]), Runtime(1, 0)))
    assert str(err.value) == "MV (pc 0): sparsity n:m = 0:16 needs n, m >= 1"


def test_reuse_keys_every_loop_after_one_that_runs_once():
    """A loop of one iteration (nothing to reuse), then twice: LD 256 bytes from R3, R3 +=
    256: the second loop's iterations load from 0 and 256 (channels 0 and 1)."""
    from hwflow.isa import make

    body = [
        make("SETI", rd=3, imm=0),
        make("LOOP", count=1),
        _ld(reg=4),
        make("ENDLOOP"),
        make("LOOP", count=2),
        _ld(reg=3),
        make("ADDI", rd=3, ra=3, imm=256),
        make("ENDLOOP"),
    ]
    _reuse_agrees(body, [[0], [0], [1]])


def test_reuse_keys_follow_registers_against_program_order():
    """Twice: R6 = R7, R3 = min(R6, 512), LD 256 bytes from R3, R7 += 1024. The load's
    address comes from R7 through two steps, the first written before the second in the
    body, so the key analysis must go round twice to reach R7: keyed by R7 (0, 1024), the
    loads come from 0 and 512 (channels 0 and 2)."""
    from hwflow.isa import make

    body = [
        make("SETI", rd=7, imm=0),
        make("LOOP", count=2),
        make("ADDI", rd=6, ra=7, imm=0),
        make("MINI", rd=3, ra=6, imm=512),
        _ld(reg=3),
        make("ADDI", rd=7, ra=7, imm=1024),
        make("ENDLOOP"),
    ]
    _reuse_agrees(body, [[0], [2]])


def test_a_traced_run_keeps_the_first_decode_steps_timeline(tiny, tmp_path, monkeypatch):
    """Traced, the timeline holds the prefill's ops and then the first decode step's, shifted
    to start where the prefill ends."""
    monkeypatch.setenv("HWFLOW_CACHE", str(tmp_path))
    r = sim.simulate(*tiny, 4, 2, mode="exact", trace=True)
    c0 = r.prefill_step.cycles
    assert r.trace[: len(r.prefill_step.stats.trace)] == r.prefill_step.stats.trace
    later = r.trace[len(r.prefill_step.stats.trace) :]
    assert later and min(s for _, _, s, _ in later) >= c0


def test_workers_report_progress(tiny, tmp_path, monkeypatch):
    """With 2 worker processes, progress still hears every task: 3 of 3 in some order."""
    monkeypatch.setenv("HWFLOW_CACHE", str(tmp_path))
    calls = []
    sim.simulate(*tiny, 4, 2, mode="exact", workers=2, progress=lambda i, n: calls.append((i, n)))
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_a_worker_prefills_the_slot_it_is_given(tiny, tmp_path, monkeypatch):
    """A batched program's prefill task names a KV-cache slot (here 1): the worker runs the
    prefill into that slot, the same step as run on its own."""
    from hwflow.perf.sim import run_step

    monkeypatch.setenv("HWFLOW_CACHE", str(tmp_path))
    cfg, plan, hw = tiny
    prog = sim.compile_cached(cfg, plan, hw, 64, batch=2)
    monkeypatch.setattr(sim, "_JOB", {"hw": hw, "prog": prog})
    [(p, r, simulated)] = sim._job(("prefill", 4, (1,), False, False))
    want = run_step(hw, prog, "prefill", Runtime(4, 0, 1))
    assert (p, simulated, r.phase, r.length) == (1, True, "prefill", 4)
    assert r.cycles == want.cycles and r.stats.busy == want.stats.busy


def test_a_context_serves_one_preset():
    from hwflow.isa import expand
    from hwflow.perf.lower import PerfContext, lower

    tiny = load_hw("tiny")
    other = tiny.model_copy(update={"clock_mhz": 123.0})
    with pytest.raises(ValueError) as err:
        lower(other, expand(_tpl([_ld()]), Runtime(1, 0)), PerfContext(tiny))
    assert str(err.value) == "context of preset tiny used for preset tiny"


def test_buffer_bounds_of_a_transfer():
    """tiny's weight buffer (16 KiB): a row that ends at its last byte fits; two 1-byte rows
    from its last byte reach one past it: refused with the byte range; buffer id 7 names no
    buffer."""
    from hwflow.errors import CapacityError, ProgramError
    from hwflow.isa import expand, make
    from hwflow.perf.lower import lower

    hw = load_hw("tiny")
    have = hw.buffers.bytes("weight")
    assert have == 16 * 1024

    def ld(**kw):
        return lower(hw, expand(_tpl([make("LD", **{**_ld().fields, **kw})]), Runtime(1, 0)))

    assert ld(off=have - 256)[0][0].hbm_bytes == 256
    with pytest.raises(CapacityError) as err:
        ld(off=have - 1, rows=2, row_bytes=1, stride=1, hbm_stride=1)
    assert str(err.value) == (
        f"LD (pc 0) touches weight buffer bytes [{have - 1}, {have + 1}) but preset tiny has {have}"
    )
    with pytest.raises(ProgramError, match=r"^LD \(pc 0\): unknown buffer id 7$"):
        ld(buf=7)


def test_stores_and_hopping_rows_cost_more_channel_time():
    """tiny: a 64-byte store pays the read/write turnaround (2 x 10 ns) on top of its core-side
    2 cycles: 4 cycles of channel 0, where the same load takes 2; four 64-byte rows 1024 apart
    (all in channel 0, hopping between rows) take longer than the 256 contiguous bytes."""
    from hwflow.isa import Buf, XferKind, expand, make
    from hwflow.perf.lower import lower

    hw = load_hw("tiny")

    def occ(instr):
        return lower(hw, expand(_tpl([instr]), Runtime(1, 0)))[0][0].hbm_occupancy

    st = make("ST", kind=XferKind.LOGITS, hbm=0, hbm_stride=64, buf=Buf.ACT, row_bytes=64,
              rows=1)  # fmt: skip
    assert (occ(st), occ(_ld(row_bytes=64, stride=64))) == (4, 2)
    assert occ(_ld(rows=4, row_bytes=64, stride=1024)) > occ(_ld(row_bytes=256))


def test_a_transfer_from_a_negative_hbm_address_is_refused():
    """A register can make an LD's address negative (SETI R3 = -256, then ``hbm = 0 + R3``):
    refused by name with the address; with R3 = 256 the same LD is priced (on channel 1 of
    tiny's 256-byte granules), with R3 = 0 on channel 0."""
    from hwflow.errors import ProgramError
    from hwflow.isa import expand, make
    from hwflow.perf.lower import lower

    hw = load_hw("tiny")

    def ops(imm):
        t = _tpl([make("SETI", rd=3, imm=imm), _ld(hbm=0, reg=3)])
        return lower(hw, expand(t, Runtime(1, 0)))[0]

    with pytest.raises(ProgramError) as err:
        ops(-256)
    assert str(err.value) == "LD (pc 1) starts at HBM byte -256; HBM bytes are 0 and up"
    assert _channels(ops(256)) == [[1]]
    assert _channels(ops(0)) == [[0]]


def test_reuse_keys_an_inner_loop_by_a_register_its_address_is_copied_from():
    """Twice: an inner loop that twice copies R3 into R5 (R5 = R3 + 0) and loads 256 bytes
    from R5, then R3 += 256. The inner body reads R3 only through the copy, which is modular
    arithmetic into an address register: R3 keys the inner loop (modulo the period), so the
    second outer iteration's loads are priced on channel 1, not taken from the first's
    channel 0."""
    from hwflow.isa import make

    body = [
        make("SETI", rd=3, imm=0),
        make("LOOP", count=2),
        make("LOOP", count=2),
        make("ADDI", rd=5, ra=3, imm=0),
        _ld(reg=5),
        make("ENDLOOP"),
        make("ADDI", rd=3, ra=3, imm=256),
        make("ENDLOOP"),
    ]
    _reuse_agrees(body, [[0], [0], [1], [1]])


def test_strided_stores_pay_the_turnaround_on_every_row():
    """tiny: four 64-byte rows 1024 apart (one channel, a new DRAM row each): a store pays the
    read/write turnaround (2 x 10 ns = 2 cycles at 100 MHz) on each row's run, 8 cycles more
    than the same load."""
    from hwflow.isa import Buf, XferKind, expand, make
    from hwflow.perf.lower import lower

    hw = load_hw("tiny")
    assert (hw.hbm.turnaround_ns, hw.clock_mhz) == (10, 100)

    def occ(instr):
        return lower(hw, expand(_tpl([instr]), Runtime(1, 0)))[0][0].hbm_occupancy

    st = make("ST", kind=XferKind.LOGITS, hbm=0, hbm_stride=1024, buf=Buf.ACT, row_bytes=64,
              rows=4)  # fmt: skip
    assert occ(st) == occ(_ld(rows=4, row_bytes=64, stride=1024)) + 8


def test_an_unknown_mode_is_refused_by_name():
    """A simulation mode other than exact or fast: refused, naming it and the allowed ones."""
    from hwflow.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        sim._check_case("slow", 4, 1, 64)
    assert str(err.value) == "mode 'slow' unknown (allowed: exact, fast)"


def test_wall_time_is_the_time_the_simulation_took(tiny, tmp_path, monkeypatch):
    """The reported wall time is positive and no longer than the call measured around it."""
    monkeypatch.setenv("HWFLOW_CACHE", str(tmp_path))
    t0 = time.perf_counter()
    r = sim.simulate(*tiny, 4, 1, mode="exact")
    assert 0 < r.wall_s <= time.perf_counter() - t0


def test_a_fast_traced_run_holds_one_decode_step(tiny, tmp_path, monkeypatch):
    """Fast mode stands one simulated step in for the equal ones of its bucket: traced, the
    timeline is still the prefill's and the first decode step's, as an exact traced run of
    that one step gives (not the stand-in repeated for the steps it stands for)."""
    monkeypatch.setenv("HWFLOW_CACHE", str(tmp_path))
    one = sim.simulate(*tiny, 4, 1, mode="exact", trace=True)
    many = sim.simulate(*tiny, 4, 3, mode="fast", trace=True)
    assert many.simulated_steps < 4  # some step stood in for another
    assert many.trace == one.trace


def test_workers_set_the_pool(tiny, tmp_path, monkeypatch):
    """``workers`` forked processes when above 1 and there are two tasks or more: a pool of
    2 for 2 workers (3 tasks, then 2); none for 1 worker (the calling process runs the
    tasks), nor for a prefill alone (one task)."""
    import multiprocessing.pool

    monkeypatch.setenv("HWFLOW_CACHE", str(tmp_path))
    pools = []

    class Spy(multiprocessing.pool.Pool):
        def __init__(self, processes=None, *args, **kw):
            pools.append(processes)
            super().__init__(processes, *args, **kw)

    monkeypatch.setattr(multiprocessing.pool, "Pool", Spy)
    sim.simulate(*tiny, 4, 2, mode="exact", workers=1)
    assert pools == []
    sim.simulate(*tiny, 4, 0, mode="exact", workers=2)
    assert pools == []
    sim.simulate(*tiny, 4, 2, mode="exact", workers=2)
    assert pools == [2]
    sim.simulate(*tiny, 4, 1, mode="exact", workers=2)  # two tasks
    assert pools == [2, 2]


def test_a_worker_runs_a_batched_decode_task_batched(tiny, tmp_path, monkeypatch):
    """A batched program's decode task of batch 2 at position 7: the worker runs one step of
    LEN 2 (both sequences at 7), the step a batch of two runs on its own, not a single
    sequence's."""
    from hwflow.perf.sim import run_step

    monkeypatch.setenv("HWFLOW_CACHE", str(tmp_path))
    cfg, plan, hw = tiny
    prog = sim.compile_cached(cfg, plan, hw, 64, batch=2)
    monkeypatch.setattr(sim, "_JOB", {"hw": hw, "prog": prog})
    [(p, r, simulated)] = sim._job(("decode", 1, (7,), False, False, 2))
    want = run_step(hw, prog, "decode", Runtime.batch([7, 7]))
    assert (p, simulated, r.phase, r.length, r.pos) == (7, True, "decode", 2, 7)
    assert r.cycles == want.cycles and r.stats.busy == want.stats.busy


def test_a_program_key_holds_max_len(tiny):
    """Programs compiled for other max_len are other programs (other templates and KV
    layout): other cache keys."""
    assert sim.program_key(*tiny, 64) != sim.program_key(*tiny, 128)


def test_a_cached_program_is_named_in_the_notes(tiny, tmp_path, monkeypatch):
    """Read from the on-disk cache, the note names the file."""
    monkeypatch.setenv("HWFLOW_CACHE", str(tmp_path))
    monkeypatch.setattr(sim, "_PROGRAMS", type(sim._PROGRAMS)())
    sim.compile_cached(*tiny, 64)
    monkeypatch.setattr(sim, "_PROGRAMS", type(sim._PROGRAMS)())
    notes: list[str] = []
    sim.compile_cached(*tiny, 64, note=notes.append)
    path = sim.program_path(sim.program_key(*tiny, 64))
    assert notes == [f"compiled program from the cache ({path})"]


def test_the_default_context_is_the_models_up_to_2048():
    """LLaMA-2-7B knows 4096 positions: its programs default to 2048; tiny-llama's 512 stay."""
    assert sim.default_max_len(load_model("llama2-7b")) == 2048
    assert sim.default_max_len(load_model("tiny-llama")) == 512


def test_a_step_run_again_in_its_context_is_replayed(tiny, tmp_path, monkeypatch):
    """The context keeps the priced ops, so the same decode step run again (iteration reuse
    on) consists of the ops already simulated: every segment comes from the memo, all its
    events replayed, none simulated anew."""
    from hwflow.perf.lower import PerfContext

    monkeypatch.setenv("HWFLOW_CACHE", str(tmp_path))
    cfg, plan, hw = tiny
    prog = sim.compile_cached(cfg, plan, hw, 64)
    ctx = PerfContext(hw)
    first = sim.run_step(hw, prog, "decode", Runtime(1, 9), memo=ctx.memo, reuse=True, ctx=ctx)
    misses = ctx.memo.misses
    again = sim.run_step(hw, prog, "decode", Runtime(1, 9), memo=ctx.memo, reuse=True, ctx=ctx)
    assert again.cycles == first.cycles and ctx.memo.misses == misses
    assert again.stats.replayed_events == again.stats.events > 0


def test_pv_runs_at_the_narrowest_n_mode_its_columns_fill():
    """P x V of 32 V columns on tiny's MV engine (2 chains x 16; N modes 2, 4, 8, 16): the
    smallest N whose row group (2 x 16 / N columns) is no wider than 32 is N = 2 (16
    columns), so the op runs at 2:2, with the matmul unit's latency at N = M = 2, not at the
    dense 16:16 of the other ops."""
    from hwflow.costs import matmul_unit_cost
    from hwflow.isa import MatmulFunc, expand, make
    from hwflow.perf.lower import lower

    hw = load_hw("tiny")
    assert hw.chain_n_modes(hw.mv.chain_length) == (2, 4, 8, 16)
    mv = make("MV", func=MatmulFunc.PV, rows=1, cols=32, k=64, n=16, m=16, wbits=8, obits=8)
    op = lower(hw, expand(_tpl([mv]), Runtime(1, 0)))[0][0]
    at2, at16 = (matmul_unit_cost(hw.mv, n, 1, 32, 64, n) for n in (2, 16))
    assert at2.latency != at16.latency
    assert (op.beats, op.latency) == (at2.beats, at2.latency)


def test_a_program_is_compiled_for_the_max_len_asked(tiny, tmp_path, monkeypatch):
    """compile_cached(..., 64) compiles for contexts up to 64 (tiny-llama knows 512): the
    program's header says 64 and its last decode template serves 64."""
    monkeypatch.setenv("HWFLOW_CACHE", str(tmp_path))
    monkeypatch.setattr(sim, "_PROGRAMS", type(sim._PROGRAMS)())
    prog = sim.compile_cached(*tiny, 64)
    assert prog.header["max_len"] == 64
    assert max(t.hi for t in prog.templates if t.phase == "decode") == 64
