"""Compiler: bucket coverage, layout, token assignment, deadlock proof, capacity and plan errors."""

from __future__ import annotations

import itertools

import pytest

from hwflow import isa
from hwflow.compiler import compile_model, storage_report
from hwflow.compiler.layout import pack_rows, unpack_rows
from hwflow.compiler.sync import check_deadlock
from hwflow.config import load_hw, load_model, load_plan
from hwflow.errors import CapacityError, ConfigError, SyncError, UnsupportedError
from hwflow.isa import Runtime, Unit, XferKind, make


@pytest.fixture(scope="module")
def tiny():
    cfg, hw, plan = load_model("tiny-llama"), load_hw("tiny"), load_plan("flightllm")
    return cfg, hw, plan, compile_model(cfg, plan, hw, 256)


def test_templates_cover_every_length_once(tiny):
    _, _, _, comp = tiny
    prog = comp.program
    assert comp.tt == 128
    for phase in ("prefill", "decode"):
        ts = [t for t in prog.templates if t.phase == phase]
        covered = [n for t in ts for n in range(t.lo, t.hi + 1)]
        assert covered == list(range(1, 257))
    assert [t.hi for t in prog.templates if t.phase == "prefill"] == [128, 256]
    assert len([t for t in prog.templates if t.phase == "decode"]) == 16
    for n in (1, 127, 128, 129, 256):
        assert prog.select("prefill", Runtime(n)).lo <= n
    assert prog.header["preset_digest"] == load_hw("tiny").digest


def test_program_is_frozen_and_round_trips(tiny):
    _, _, _, comp = tiny
    prog = comp.program
    with pytest.raises(AttributeError):
        prog.templates = ()  # type: ignore[misc]
    with pytest.raises(TypeError):
        prog.templates[0].instrs[0].fields["wait"] = 1  # type: ignore[index]
    back = isa.Program.from_bytes(prog.to_bytes())
    assert [t.instrs for t in back.templates] == [t.instrs for t in prog.templates]


def test_layers_loop_over_runs():
    cfg, hw = load_model("llama2-7b"), load_hw("u280")
    comp = compile_model(cfg, load_plan("flightllm"), hw, 64)
    # flightllm: layers 0 and 31 are denser -> three runs; layers 1..30 share one loop body
    assert [r[:2] for r in comp.layout.runs] == [(0, 1), (1, 30), (31, 1)]
    t = comp.program.select("decode", Runtime(1, 40))
    assert [i["count"] for i in t.instrs if i.op == "LOOP"] == [1, 1, 30, 1]
    # HBM: regions of a run at a constant stride, everything inside the preset's capacity
    bases = [comp.layout.region(f"L{i}").base for i in range(1, 31)]
    assert len({b - a for a, b in itertools.pairwise(bases)}) == 1
    assert comp.layout.total <= hw.hbm.capacity_bytes
    per = comp.layout.channel_bytes(hw.hbm.channels, hw.hbm.interleave_bytes)
    assert max(per) - min(per) <= hw.hbm.interleave_bytes


def test_ld_never_waits_for_sfu_and_reads_weights_ahead():
    """Weight and KV loads wait only for the engine to free a slot, never for SFU work."""
    cfg, hw = load_model("llama2-7b"), load_hw("u280")
    comp = compile_model(cfg, load_plan("flightllm"), hw, 64)
    for t in comp.program.templates:
        eng = Unit.MM if t.phase == "prefill" else Unit.MV
        for ins in t.instrs:
            if ins.op == "LD" and ins["kind"] in (XferKind.WEIGHTS, XferKind.KV):
                assert ins.wait & ~(1 << eng) == 0, isa.disasm(ins)


def test_storage_is_counted_from_the_real_expansion(tiny):
    *_, comp = tiny
    st = storage_report(comp)
    assert st["templates"] == len(comp.program.templates)
    assert st["ratio"] > 10
    # per-length bytes = the expanded unit instructions of that length (+ END)
    t = comp.program.select("prefill", Runtime(200))
    words = sum(isa.spec(c.op).words for c in isa.expand(t, Runtime(200)))
    from hwflow.compiler import _unrolled_bytes

    spans = isa.loop_spans(t.instrs)
    assert _unrolled_bytes(t.instrs, {min(spans): 2}) == 4 * words + 4


def test_deadlock_checker_catches_broken_schedules(tiny):
    _, _, _, comp = tiny
    instrs = list(comp.program.templates[2].instrs)
    check_deadlock(instrs)
    # a wait no one releases
    i = next(k for k, ins in enumerate(instrs) if ins.op == "MV")
    broken = [*instrs]
    broken[i] = instrs[i].with_masks(instrs[i].wait | 1 << Unit.ST, instrs[i].release)
    with pytest.raises(SyncError, match=r"deadlock.*MV at pc"):
        check_deadlock(broken)
    # a release no one waits for: tokens left over
    broken = [*instrs]
    broken[i] = instrs[i].with_masks(instrs[i].wait, instrs[i].release | 1 << Unit.ST)
    with pytest.raises(SyncError, match=r"changes the token counts|left in queues"):
        check_deadlock(broken)
    # a cycle: two units each waiting for the other first
    cyc = [
        make("SYNC.LD", wait=1 << Unit.MV, release=1 << Unit.MV),
        make("SYNC.MV", wait=1 << Unit.LD, release=1 << Unit.LD),
        make("END"),
    ]
    with pytest.raises(SyncError, match="deadlock"):
        check_deadlock(cyc)


def test_unsupported_plan_is_refused_with_allowed_values():
    with pytest.raises(
        UnsupportedError, match=r"2:4 sparsity \(allowed: 2:16, 4:16, 8:16, 16:16, or dense\)"
    ):
        compile_model(load_model("tiny-llama"), load_plan("w4a8-2of4"), load_hw("tiny"), 64)


def test_capacity_errors_name_the_sizes():
    with pytest.raises(CapacityError, match=r"needs .* GiB of HBM .* but preset tiny has 1.00 GiB"):
        compile_model(load_model("llama2-7b"), load_plan("w4a8"), load_hw("tiny"), 64)
    hw = load_hw("tiny")
    small = hw.model_copy(update={"buffers": hw.buffers.model_copy(update={"act_kib": 1})})
    with pytest.raises(CapacityError, match=r"buffers.act_kib holds 1024 bytes"):
        compile_model(load_model("tiny-llama"), load_plan("w4a8"), small, 64)
    tiny_w = hw.model_copy(update={"buffers": hw.buffers.model_copy(update={"weight_kib": 0})})
    with pytest.raises(CapacityError, match="weight slot"):
        compile_model(load_model("tiny-llama"), load_plan("w8a8"), tiny_w, 64)


def test_max_len_is_checked():
    with pytest.raises(ConfigError, match=r"max_len = 0 must lie in 1..512"):
        compile_model(load_model("tiny-llama"), load_plan("w4a8"), load_hw("tiny"), 0)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pack_rows_matches_numerics(bits):
    import numpy as np

    from hwflow import numerics as nx

    rng = np.random.default_rng(bits)
    lo = -(1 << (bits - 1)) + 1
    x = rng.integers(lo, -lo + 1, size=(5, 13))
    packed = pack_rows(x, bits)
    for r in range(5):
        assert np.array_equal(packed[r], nx.pack_bits(x[r], bits))
    assert np.array_equal(unpack_rows(packed.ravel(), bits, 5, 13, True), x)


@pytest.mark.parametrize("seed", range(40))
def test_token_assignment_orders_every_conflict(seed):
    """Property: on random straight-line programs, every pair of conflicting accesses by two
    units (in program order a before b) is ordered a -> b by the FIFO token pairing, and the
    schedule is deadlock-free."""
    import numpy as np

    from hwflow.compiler.lower import Node
    from hwflow.compiler.sync import assign_tokens

    rng = np.random.default_rng(seed)
    ops = ["LD", "ST", "MV", "SFU"]
    spans = [(0, 0, 64), (0, 64, 128), (0, 0, 128), (1, 0, 32), (1, 16, 48)]
    nodes = []
    for _ in range(int(rng.integers(5, 60))):
        if rng.random() < 0.05:
            nodes.append(Node("BARRIER", {}))
            continue
        reads, writes = (
            tuple(spans[i] for i in rng.choice(5, int(rng.integers(0, 3)), False)) for _ in "rw"
        )
        nodes.append(Node(str(rng.choice(ops)), {}, reads, writes))
    nodes.append(Node("END", {}))
    instrs = assign_tokens(nodes)
    check_deadlock(instrs)
    # replay: vector clocks through FIFO token queues, in an order the tokens allow
    units = [int(i.unit) for i in instrs]
    streams = {
        u: [k for k, x in enumerate(instrs) if units[k] == u and x.unit != Unit.SYS]
        for u in range(5)
    }
    pos = dict.fromkeys(range(5), 0)
    vc = {u: [-1] * 5 for u in range(5)}
    stamp: dict[int, list[int]] = {}
    queues: dict[tuple[int, int], list[list[int]]] = {}
    progress = True
    while progress:
        progress = False
        for u in range(5):
            while pos[u] < len(streams[u]):
                k = streams[u][pos[u]]
                w = instrs[k].wait
                if any(w >> v & 1 and not queues.get((v, u)) for v in range(5)):
                    break
                for v in range(5):
                    if w >> v & 1:
                        vc[u] = [
                            max(a, b) for a, b in zip(vc[u], queues[(v, u)].pop(0), strict=True)
                        ]
                vc[u][u] = k
                stamp[k] = list(vc[u])
                for v in range(5):
                    if instrs[k].release >> v & 1:
                        queues.setdefault((u, v), []).append(list(vc[u]))
                pos[u] += 1
                progress = True
    assert all(pos[u] == len(streams[u]) for u in range(5))
    # map nodes to instruction indices (barriers expand to several SYNCs)
    at, node_at = 0, {}
    for n_i, n in enumerate(nodes):
        if n.op == "BARRIER":
            while at < len(instrs) and instrs[at].op.startswith("SYNC"):
                at += 1
        else:
            node_at[n_i] = at
            at += 1

    def overlap(x, y):
        return any(a[0] == b[0] and a[1] < b[2] and b[1] < a[2] for a in x for b in y)

    for j, nb in enumerate(nodes):
        if j not in node_at or nb.op == "END":
            continue
        for i in range(j):
            na = nodes[i]
            if i not in node_at or na.op == "END" or na.op == nb.op:
                continue
            if any(n.op == "BARRIER" for n in nodes[i:j]):
                continue
            if (
                overlap(na.writes, nb.reads)
                or overlap(na.writes, nb.writes)
                or overlap(na.reads, nb.writes)
            ):
                a, b = node_at[i], node_at[j]
                assert stamp[b][units[a]] >= a, (i, j, na, nb)


@pytest.mark.parametrize(
    "name", ["tinyllama-1.1b", "mistral-7b-v0.1", "opt-125m", "llama-head-dim"]
)
def test_published_hf_configs_compile(name, tmp_path):
    """Published config.json files (see test_config) compile as they are, on both presets."""
    from test_config import HF_ACCEPTED, write_hf

    cfg = load_model(write_hf(tmp_path / name, HF_ACCEPTED[name][0]))
    for preset in ("u280", "vhk158"):
        comp = compile_model(cfg, load_plan("flightllm"), load_hw(preset), 16)
        assert [(t.phase, t.lo, t.hi) for t in comp.program.templates] == [
            ("prefill", 1, 16),
            ("decode", 1, 16),
        ]
        check_deadlock(comp.program.templates[1].instrs)


def test_model_too_large_for_the_preset_is_named(tmp_path):
    from test_config import MISTRAL_7B, write_hf

    cfg = load_model(write_hf(tmp_path / "mistral", MISTRAL_7B))
    with pytest.raises(UnsupportedError, match="sliding_window 4096 < max_len 4097"):
        compile_model(cfg, load_plan("w4a8"), load_hw("u280"), 4097)
    with pytest.raises(CapacityError, match=r"mistral / w4a8 on preset tiny .* GiB of HBM"):
        compile_model(cfg, load_plan("w4a8"), load_hw("tiny"), 16)


def test_template_larger_than_instruction_memory_is_refused():
    hw = load_hw("tiny")
    small = hw.model_copy(update={"buffers": hw.buffers.model_copy(update={"instr_kib": 1})})
    with pytest.raises(
        CapacityError,
        match=r"template for 1..16 needs [\d,]+ bytes .* buffers.instr_kib holds 1,024",
    ):
        compile_model(load_model("tiny-llama"), load_plan("w8a8"), small, 16)


def test_attention_block_beyond_the_isa_field_is_refused():
    plan = load_plan("flightllm")
    big = plan.model_copy(update={"attention": plan.attention.model_copy(update={"block": 5000})})
    with pytest.raises(UnsupportedError, match=r"attention.block = 5000 does not fit .* 0..4095"):
        compile_model(load_model("tiny-llama"), big, load_hw("tiny"), 16)


def test_sparsity_group_beyond_the_isa_field_is_refused_up_front():
    """A preset may declare M = 32, but the engine instructions carry M in 5 bits."""
    hw = load_hw("tiny")
    m32 = hw.model_copy(update={"sparsity": hw.sparsity.model_copy(update={"m": 32})})
    plan = load_plan("w4a8")
    sparse = plan.model_copy(
        update={"weights": plan.weights.model_copy(update={"sparsity": "4:32"})}
    )
    with pytest.raises(
        UnsupportedError, match=r"L0.q: 4:32 sparsity, M = 32 does not fit the 5-bit MM.m"
    ):
        compile_model(load_model("tiny-llama"), sparse, m32, 16)


def test_model_beyond_an_instruction_field_is_unsupported(tmp_path):
    """An extent wider than its 16-bit field is the instruction set's limit, said as such."""
    import json

    from hwflow.config import MAPPINGS

    cfg = json.loads((MAPPINGS / "models" / "tiny-llama.json").read_text())
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**cfg, "intermediate_size": 65552}))
    with pytest.raises(
        UnsupportedError, match=r"exceeds the instruction set: SFU.cols = 65552 does not fit 16"
    ):
        compile_model(load_model(path), load_plan("w8a8"), load_hw("u280"), 16)


@pytest.mark.parametrize(("model", "preset"), [("llama2-7b", "u280"), ("tiny-llama", "tiny")])
def test_layout_channel_alignment(model, preset):
    """Layers of a run share one channel pattern (strides are multiples of the channel map's
    period); a layer's K heads start on distinct channels, each V head half the channels away
    from its K head; a decode bucket's 16 new K/V rows of a head stay in one granule."""
    from hwflow.compiler.layout import plan_hbm

    cfg, plan, hw = load_model(model), load_plan("flightllm"), load_hw(preset)
    lay = plan_hbm(cfg, plan.resolve(cfg), plan.head(), hw, 2048 if preset == "u280" else 256)
    g, c = hw.hbm.interleave_bytes, hw.hbm.channels
    period = g * c
    assert all(stride % period == 0 for _, n, stride in lay.runs if n > 1)
    assert lay.kv_layer_bytes % period == 0 and lay.region("kv").base % period == 0
    base = lay.region("kv").base
    heads = range(cfg.kv_heads)
    k = [isa.hbm_channel(base + h * lay.kv_head_bytes, c, g) for h in heads]
    v = [isa.hbm_channel(base + lay.kv_v_offset + h * lay.kv_head_bytes, c, g) for h in heads]
    assert len(set(k)) == min(cfg.kv_heads, c)
    assert all((b - a) % c == c // 2 for a, b in zip(k, v, strict=True))
    assert lay.kv_head_bytes % g == 0 and g % (16 * cfg.head_dim) == 0


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-opt"])
def test_hbm_image_holds_the_numerics_parameters_at_their_offsets(model):
    """Decoded by hand from the formats of the layout docstring: each layer's blob holds both
    norms' pre-shift (int32) and INT16 gains, every linear's guard, per head the scores'
    (mult, shift) and P x V's (mult, shift, guard), the SiLU index (mult, shift); the final
    blob the final norm and the head's guard; input rows are INT32 and logits INT32."""

    from hwflow.compiler.layout import build_hbm_image, final_blob, param_blob
    from hwflow.compress import quantize_model, random_weights

    cfg, hw, plan = load_model(model), load_hw("tiny"), load_plan("w8a8")
    comp = compile_model(cfg, plan, hw, 64)
    qm = quantize_model(cfg, plan, random_weights(cfg, 1))
    img = build_hbm_image(comp.layout, qm)
    d, nh = cfg.hidden, cfg.heads

    def i32(at: int, n: int) -> list[int]:
        return img[at : at + 4 * n].view("<i4").tolist()

    def norm(at: int, p: dict) -> None:
        assert i32(at, 1) == [p["pre"]]
        assert img[at + 4 : at + 4 + 2 * d].view("<i2").tolist() == list(p["gamma"])

    pb = param_blob(cfg)
    for li in range(cfg.layers):
        base, p = comp.layout.region(f"L{li}").base, f"L{li}."
        norm(base + pb["norm1"], qm.params[p + "norm1"])
        norm(base + pb["norm2"], qm.params[p + "norm2"])
        for op in cfg.linear_ops:
            assert i32(base + pb[f"{op}.guard"], 1) == [qm.linears[p + op].guard]
        sc, pv = qm.params[p + "scores"], qm.params[p + "pv"]
        want = [v for h in range(nh) for v in (sc["mult"][h], sc["shift"][h])]
        assert i32(base + pb["scores"], 2 * nh) == want
        want = [v for h in range(nh) for v in (pv["mult"][h], pv["shift"][h], pv["guard"])]
        assert i32(base + pb["pv"], 3 * nh) == want
        act = qm.params[p + "act"]
        assert i32(base + pb["act"], 2) == [act.get("mult", 0), act.get("shift", 0)]
    fb, fbase = final_blob(cfg), comp.layout.region("final").base
    norm(fbase + fb["norm"], qm.params["final.norm"])
    assert i32(fbase + fb["head.guard"], 1) == [qm.linears["head"].guard]
    assert comp.layout.region("input").size >= 64 * 4 * d
    assert comp.layout.region("logits").size >= 4 * cfg.vocab


def test_weight_tile_ends_with_the_group_multipliers():
    """Decoded by hand from the layout docstring: a tile of R rows holds R rows of packed INT4
    values (K/2 bytes each), R (uint16 mult, int8 shift) pairs... then, trailing, R rows of K/G
    uint8 group multipliers; the engine op names the group as log2(G) in ``wgroup``."""
    from hwflow.compiler.layout import build_hbm_image
    from hwflow.compress import quantize_model, random_weights
    from hwflow.isa import MATMUL_FUNCS, Runtime, expand

    cfg, hw, plan = load_model("tiny-llama"), load_hw("tiny"), load_plan("w4a8-gptq-g32")
    comp = compile_model(cfg, plan, hw, 64)
    qm = quantize_model(cfg, plan, random_weights(cfg, 1))
    img = build_hbm_image(comp.layout, qm)
    for li in range(cfg.layers):
        base = comp.layout.region(f"L{li}").base
        for ts in comp.layout.tiles[li]:
            ql = qm.linears[f"L{li}.{ts.name}"]
            groups = ts.k // 32
            assert ql.gmult.shape == (ts.out, groups) and ql.gmult.min() >= 1
            for r0, r, at in ts.tiles:
                head = r * (ts.k // 2 + 3)  # dense INT4 values, then mult/shift; no bias
                got = img[base + at + head : base + at + head + r * groups]
                # per stripe of 2 dense rows (the tiny stripe), group by group
                want = [
                    v
                    for s in range(0, r, 2)
                    for v in ql.gmult[r0 + s : r0 + min(s + 2, r)].T.ravel()
                ]
                assert got.tolist() == want, (li, ts.name)
    prog = comp.program
    t = prog.templates[0]
    seen: dict[str, set[int]] = {"linear": set(), "head": set()}
    for c in expand(t, Runtime(t.lo, 0)):
        if c.op in ("MM", "MV") and MATMUL_FUNCS[c["func"]] in seen:
            seen[MATMUL_FUNCS[c["func"]]].add(c["wgroup"])
    assert seen == {"linear": {5}, "head": {0}}  # log2(32); the head has per-row scales
