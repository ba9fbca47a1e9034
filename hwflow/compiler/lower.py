"""Lowering: one step of the model -> a template instruction list (tokens not yet assigned).

A step runs in *chunks* of ``tt`` token rows (decode: one chunk of one row). A prefill template
for the bucket ``(hi - tt, hi]`` loops ``hi / tt`` times over the chunk body; within a chunk
every activation stays on chip (``buffers.act``), weights and the KV cache stream from HBM, and
the chunk's new K/V rows are both stored to the cache (ST) and copied on chip next to the
streamed past rows (SFU ``mov``), so LD never waits for this step's compute to read the cache.
Chunking is exact: every op is per row except attention, which is causal by absolute position.

Activation formats (numerics contract): the residual ``X`` is INT32 (both residual adds write
it in place, so ``x1`` is ``X`` after the first), ``o`` and ``d`` INT32, gate/up INT16, q/k/v
and ``a`` INT8; the per-row INT8 linear inputs (``h1``, ``h2``, the gated product ``mm`` or
OPT's ``ua``, ``hf``) keep each row's row factor in the 4 bytes before the row
(:data:`hwflow.isa.ROW_FACTOR_BYTES`); ``mm``/``ua`` are written over the INT16 tensor they
come from. A score slot holds INT32 scores at ``score_stride`` bytes per row; the softmax
writes the UINT8 probabilities and their row factors (1/row sum) in place at the same stride.
Parameters (norm gains, guards, per-head attention multipliers) are one blob per layer
(:func:`hwflow.compiler.layout.param_blob`) loaded to the param buffer at 0.

Registers (set by SYS in the template; R1 = LEN, R2 = POS from the runtime)::

    R3 ROWS  rows of this chunk: min(LEN - CB, tt)      R4 QPOS  POS + CB (first row's position)
    R5 KEYS  QPOS + ROWS (keys visible to the chunk)    R6 QOFF  QPOS * head_dim
    R7 LW    HBM base of the current layer's region     R8 LKV   HBM base of its KV cache
    R9 LKVQ  LKV + QOFF (where this chunk's rows go)    R10 CB   chunk base row
    R11 IOFF CB * hidden (input rows)                   R12 ROFF QPOS * rope row bytes
    R13 LAST (ROWS - 1) * hidden (the last row, for the head)
    R14 RROW decode: (POS - bucket start) * rope row bytes (this position's RoPE row on chip)

Every prefill instruction whose extent depends on the length clamps it by one of these
registers, so one template serves every length of its bucket. Decode is static per bucket, as
in FlightLLM: attention runs over the bucket's longest context ``hi`` (the KV loads, the score
columns, the softmax and the pv reduction), the keys after the current position masked
causally (probability 0, so what the cache holds there never matters: bit-exact), and one LD
brings the bucket's RoPE rows; one strided ST per layer stores the new K (V) row of every head,
after the KV loads (they read the stored row's place too). Only those stores and on-chip
offsets move with POS, so every step of a bucket costs the same whenever those rows stay on one
HBM channel (:mod:`.layout`). Layers of a run are one loop whose body advances R7/R8. Barriers (emitted as the placeholder op ``BARRIER``, made concrete by
:mod:`hwflow.compiler.sync`) close every loop body and precede every loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from hwflow.compiler.layout import (
    WEIGHT_SLOTS,
    HbmLayout,
    TileSpec,
    final_blob,
    linear_out_bits,
    param_blob,
)
from hwflow.config import CompressionPlan, HardwarePreset, ModelConfig
from hwflow.errors import CapacityError
from hwflow.isa import MATMUL_FUNCS, ROW_FACTOR_BYTES, SFU_FUNCS, Buf
from hwflow.numerics import GATE_BITS, RESIDUAL_BITS

__all__ = ["BufferPlan", "Node", "lower_step", "plan_buffers"]

R_ROWS, R_QPOS, R_KEYS, R_QOFF, R_LW, R_LKV, R_LKVQ, R_CB, R_IOFF, R_ROFF, R_LAST, R_RROW = range(
    3, 15
)
#: Pseudo buffer id of the current layer's KV cache in HBM (offsets from its base) in the
#: footprints the token assignment sees: orders a decode step's KV loads before its KV stores.
HBM_KV = 8

SFU_FUNC = {name: i for i, name in enumerate(SFU_FUNCS)}
MM_FUNC = {name: i for i, name in enumerate(MATMUL_FUNCS)}
KIND = {"weights": 0, "params": 1, "kv": 2, "act": 3, "rope": 4, "logits": 5}

Span = tuple[int, int, int]  # (buffer, first byte, end byte)


@dataclass
class Node:
    """An instruction under construction with its static (worst-case) buffer footprint."""

    op: str
    fields: dict[str, int]
    reads: tuple[Span, ...] = ()
    writes: tuple[Span, ...] = ()


@dataclass(frozen=True)
class BufferPlan:
    """Static on-chip allocation of one template (byte offsets per buffer)."""

    tt: int
    keys_max: int
    rope_rows: int  #: RoPE rows in the param buffer (prefill: tt; decode: the bucket's)
    act: Mapping[str, tuple[int, int]]  #: tensor -> (offset of row 0's data, row stride)
    act_span: Mapping[str, tuple[int, int]]  #: tensor -> allocated [first, end) bytes
    act_bytes: int
    kv_slots: tuple[int, ...]
    kv_slot_bytes: int
    score_slots: tuple[int, ...]
    score_slot_bytes: int
    score_stride: int  #: bytes per score row: INT32 scores, later the probabilities in place
    weight_slots: tuple[int, ...]
    weight_slot_bytes: int
    p_rope: int
    p_final: int

    def info(self) -> dict[str, Any]:
        return {
            "tt": self.tt,
            "keys_max": self.keys_max,
            "act_bytes": self.act_bytes,
            "kv_slots": len(self.kv_slots),
            "kv_slot_bytes": self.kv_slot_bytes,
            "score_slots": len(self.score_slots),
            "weight_slots": len(self.weight_slots),
            "weight_slot_bytes": self.weight_slot_bytes,
        }


def _tensors(cfg: ModelConfig) -> list[tuple[str, int, int, int, bool, str | None]]:
    """(name, bytes per row, first op index, last op index, row factor, written over) of a
    layer's tensors (op order). The residual ``X`` (INT32) is not among them: it has its own
    place, and both residual adds write it in place (``x1`` is ``X`` after add1). Per-row
    tensors hold a row factor in the ``ROW_FACTOR_BYTES`` before each row. A tensor "written
    over" another starts where that one does: the per-row INT8 gated product over ``g`` and
    OPT's quantized ReLU over ``u`` (shorter rows, so a row-by-row SFU never overwrites a row it
    has yet to read); the rest of the INT16 tensor is free once it is consumed."""
    d, f = cfg.hidden, cfg.intermediate
    qd, kd = cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    res, gate = RESIDUAL_BITS // 8, GATE_BITS // 8
    rf = ROW_FACTOR_BYTES
    rope = cfg.positions == "rope"
    # op indices: 0 norm1, 1 qkv, 2 rope, 3 kv/attn, 4 o, 5 add1, 6 norm2, 7 gate/up, 8 act,
    # 9 mul, 10 down, 11 add2
    t: list[tuple[str, int, int, int, bool, str | None]] = [
        ("h1", d + rf, 0, 1, True, None),
        ("q", qd, 1, 3 if not rope else 2, False, None),
        ("k", kd, 1, 3 if not rope else 2, False, None),
        ("v", kd, 1, 3, False, None),
        ("a", qd, 3, 4, False, None),
        ("o", res * d, 4, 5, False, None),
        ("h2", d + rf, 6, 7, True, None),
        ("d", res * d, 10, 11, False, None),
    ]
    if rope:
        t += [("qr", qd, 2, 3, False, None), ("kr", kd, 2, 3, False, None)]
    if cfg.gated_mlp:  # silu on g in place, then the product over it
        t += [("g", gate * f, 7, 9, False, None), ("u", gate * f, 7, 9, False, None)]
        t += [("mm", f + rf, 9, 10, True, "g")]
    else:
        t += [("u", gate * f, 7, 8, False, None), ("ua", f + rf, 8, 10, True, "u")]
    return t


def plan_buffers(
    cfg: ModelConfig, hw: HardwarePreset, tt: int, keys_max: int, rope_rows: int | None = None
) -> BufferPlan:
    """Allocate the on-chip buffers for ``tt`` rows and ``keys_max`` keys (first fit by
    liveness in the activation buffer), with ``rope_rows`` RoPE rows (default ``tt``);
    CapacityError naming the buffer when one overflows."""
    rope_rows = tt if rope_rows is None else rope_rows
    act_cap = hw.buffers.bytes("act")
    d, rf = cfg.hidden, ROW_FACTOR_BYTES
    res = RESIDUAL_BITS // 8
    act: dict[str, tuple[int, int]] = {"X": (0, res * d)}
    span: dict[str, tuple[int, int]] = {"X": (0, tt * res * d)}
    placed: list[tuple[int, int, int, int]] = []  # (lo, hi, first, last)
    base = _al(tt * res * d)
    top = base
    for name, rb, first, last, rowf, over in sorted(_tensors(cfg), key=lambda x: x[2]):
        size = _al(tt * rb)
        at = base
        if over is not None:
            at = span[over][0]
        else:
            for lo, hi, f0, l0 in sorted(placed):
                if f0 <= last and first <= l0 and at < hi and lo < at + size:
                    at = _al(hi)
            # one pass suffices: placements are visited in offset order
        act[name] = (at + (rf if rowf else 0), rb)
        span[name] = (at, at + tt * rb)
        placed.append((at, at + size, first, last))
        top = max(top, at + size)
    act["hf"] = (base + rf, d + rf)
    span["hf"] = (base, base + d + rf)
    lg = base + _al(d + rf)
    act["logits"] = (lg, 4 * cfg.vocab)
    span["logits"] = (lg, lg + 4 * cfg.vocab)
    top = max(top, lg + _al(4 * cfg.vocab))
    if top > act_cap:
        raise CapacityError(
            f"activations of a {tt}-token chunk need {top} bytes but buffers.act_kib holds "
            f"{act_cap} bytes"
        )
    kv_slot = _al(keys_max * cfg.head_dim)
    n_kv = min(hw.buffers.bytes("kv") // kv_slot, 2 * cfg.kv_heads, 16)
    if n_kv < 2:
        raise CapacityError(
            f"attention at {keys_max} keys needs two KV slots of {kv_slot} bytes (K and V of one "
            f"head) but buffers.kv_kib holds {hw.buffers.bytes('kv')} bytes"
        )
    sst = max(4 * keys_max, keys_max + rf)  # INT32 scores; UINT8 p and its factor in place
    sc_slot = _al(tt * sst)
    n_sc = min(hw.buffers.bytes("score") // sc_slot, 4)
    if n_sc < 1:
        raise CapacityError(
            f"scores of a {tt}-token chunk at {keys_max} keys need {sc_slot} bytes but "
            f"buffers.score_kib holds {hw.buffers.bytes('score')} bytes"
        )
    wslot = hw.buffers.bytes("weight") // WEIGHT_SLOTS
    p_rope = _al(param_blob(cfg).size)
    p_final = p_rope + _al(rope_rows * 2 * cfg.head_dim)
    need = p_final + final_blob(cfg).size
    if need > hw.buffers.bytes("param"):
        raise CapacityError(
            f"layer parameters and {rope_rows} RoPE rows need {need} bytes but "
            f"buffers.param_kib holds {hw.buffers.bytes('param')} bytes"
        )
    return BufferPlan(
        tt,
        keys_max,
        rope_rows,
        MappingProxyType(act),
        MappingProxyType(span),
        top,
        tuple(i * kv_slot for i in range(n_kv)),
        kv_slot,
        tuple(i * sc_slot for i in range(n_sc)),
        sc_slot,
        sst,
        tuple(i * wslot for i in range(WEIGHT_SLOTS)),
        wslot,
        p_rope,
        p_final,
    )


def _weight_operand(ts: TileSpec, slot: int) -> dict[str, int]:
    """The fields of an engine op (linear or head) whose B operand is weight tile ``ts`` in
    the weight slot at ``slot``: reduction length, N:M, weight bits, bias and the slot."""
    q = ts.quant
    return {"k": ts.k, "n": q.n, "m": q.m, "wbits": q.bits, "bias": int(ts.bias),
            "b_buf": Buf.WEIGHT, "b_off": slot, "b_stride": ts.row_bytes}  # fmt: skip


def _al(n: int) -> int:
    return -(-n // 64) * 64


@dataclass
class _Emitter:
    nodes: list[Node] = field(default_factory=list)

    def sys(self, op: str, **f: int) -> None:
        self.nodes.append(Node(op, f))

    def unit(
        self, op: str, reads: tuple[Span, ...] = (), writes: tuple[Span, ...] = (), **f: int
    ) -> None:
        self.nodes.append(Node(op, f, reads, writes))

    def barrier(self) -> None:
        self.nodes.append(Node("BARRIER", {}))


def lower_step(
    cfg: ModelConfig,
    plan: CompressionPlan,
    hw: HardwarePreset,
    layout: HbmLayout,
    bp: BufferPlan,
    phase: str,
    nchunks: int,
    lo: int = 1,
) -> list[Node]:
    """The node list of a template: ``nchunks`` chunks of ``bp.tt`` rows, then the head
    (decode: ``lo``..``bp.keys_max`` is the bucket's context range)."""
    e = _Emitter()
    eng = "MM" if phase == "prefill" else "MV"
    dec = phase == "decode"
    tt, d, hd = bp.tt, cfg.hidden, cfg.head_dim
    nh, nkv = cfg.heads, cfg.kv_heads
    rep = nh // nkv
    A = Buf.ACT
    rope = cfg.positions == "rope"

    def act(name: str) -> tuple[int, int]:
        return bp.act[name]

    def aspan(name: str) -> Span:
        lo, hi = bp.act_span[name]
        return (A, lo, hi)

    pb, fb = param_blob(cfg), final_blob(cfg)
    params_span: Span = (Buf.PARAM, 0, pb.size)
    rope_span: Span = (Buf.PARAM, bp.p_rope, bp.p_final)
    final_span: Span = (Buf.PARAM, bp.p_final, bp.p_final + fb.size)
    # linear inputs with row factors (``a`` has a static scale): the per-row tensors and hf
    rowf = {t[0] for t in _tensors(cfg) if t[4]} | {"hf"}

    def sfu(
        func: str,
        a: str | tuple[int, int, int, int],
        o: str | tuple[int, int, int, int],
        cols: int,
        reads: tuple[Span, ...] = (),
        writes: tuple[Span, ...] = (),
        b: str | tuple[int, int, int, int] | None = None,
        **f: int,
    ) -> None:
        def opnd(x: Any) -> tuple[int, int, int, int]:
            if isinstance(x, str):
                off, rb = act(x)
                return (A, off, rb, 0)
            return x

        ab, ao, ast, ar = opnd(a)
        ob, oo, ost, orr = opnd(o)
        extra: dict[str, int] = {}
        if b is not None:
            bb, bo, bs, br = opnd(b)
            extra = {"b_buf": bb, "b_off": bo, "b_stride": bs, "b_reg": br}
            if isinstance(b, str):
                reads = (*reads, aspan(b))
        if isinstance(a, str):
            reads = (*reads, aspan(a))
        if isinstance(o, str):
            writes = (*writes, aspan(o))
        e.unit(
            "SFU",
            reads,
            writes,
            func=SFU_FUNC[func],
            rows=f.pop("rows", tt),
            rows_reg=f.pop("rows_reg", R_ROWS),
            cols=cols,
            a_buf=ab,
            a_off=ao,
            a_stride=ast,
            a_reg=ar,
            o_buf=ob,
            o_off=oo,
            o_stride=ost,
            o_reg=orr,
            **extra,
            **f,
        )

    # ---- weight tiles: LD of global tile j is emitted just before the engine op of tile
    # j - (slots - 1), i.e. right after the engine op that last used its slot
    class Tiles:
        def __init__(self, specs: list[tuple[TileSpec, int, int, int]], base_reg: int) -> None:
            self.items = specs  # (spec, r0, rows, region offset)
            self.base_reg = base_reg
            self.loaded = 0

        def load_upto(self, j: int) -> None:
            while self.loaded <= min(j, len(self.items) - 1):
                ts, _r0, r, off = self.items[self.loaded]
                s = bp.weight_slots[self.loaded % len(bp.weight_slots)]
                nbytes = ts.tile_bytes(r)
                e.unit(
                    "LD",
                    (),
                    ((Buf.WEIGHT, s, s + bp.weight_slot_bytes),),
                    kind=KIND["weights"],
                    hbm=off,
                    hbm_reg=self.base_reg,
                    hbm_stride=nbytes,
                    buf=Buf.WEIGHT,
                    off=s,
                    stride=nbytes,
                    row_bytes=nbytes,
                    rows=1,
                )
                self.loaded += 1

    def linear_ops(tiles: Tiles, index: dict[str, int], op: str, src: str, dst: str) -> None:
        obits = linear_out_bits(op)
        for j in range(index[op], index[op] + sum(1 for t in tiles.items if t[0].name == op)):
            tiles.load_upto(j + len(bp.weight_slots) - 1)
            ts, r0, r, _ = tiles.items[j]
            s = bp.weight_slots[j % len(bp.weight_slots)]
            so, srb = act(src)
            do, drb = act(dst)
            e.unit(
                eng,
                (aspan(src), (Buf.WEIGHT, s, s + bp.weight_slot_bytes)),
                (aspan(dst),),
                func=MM_FUNC["linear"],
                rows=tt,
                rows_reg=R_ROWS,
                cols=r,
                a_buf=A,
                a_off=so,
                a_stride=srb,
                o_buf=A,
                o_off=do + r0 * obits // 8,
                o_stride=drb,
                p_off=pb[f"{op}.guard"],
                obits=obits,
                arow=int(src in rowf),
                **_weight_operand(ts, s),
            )

    def layer_body(li: int) -> None:
        specs = layout.tiles[li]
        items = [(ts, r0, r, off) for ts in specs for (r0, r, off) in ts.tiles]
        index: dict[str, int] = {}
        for j, it in enumerate(items):
            index.setdefault(it[0].name, j)
        tiles = Tiles(items, R_LW)
        e.sys("ADD", rd=R_LKVQ, ra=R_LKV, rb=R_QOFF)
        e.unit(
            "LD",
            (),
            (params_span,),
            kind=KIND["params"],
            hbm=0,
            hbm_reg=R_LW,
            hbm_stride=pb.size,
            buf=Buf.PARAM,
            off=0,
            stride=pb.size,
            row_bytes=pb.size,
            rows=1,
        )
        tiles.load_upto(0)
        sfu("norm", "X", "h1", d, reads=(params_span,), p_off=pb["norm1"],
            aux=int(cfg.norm == "layer"))  # fmt: skip
        for op in ("q", "k", "v"):
            linear_ops(tiles, index, op, "h1", op)
        qn, kn = "q", "k"
        if rope:
            for src, dst, n in (("q", "qr", nh), ("k", "kr", nkv)):
                sfu("rope", src, dst, n * hd, reads=(rope_span,),
                    b=(Buf.PARAM, bp.p_rope, 2 * hd, R_RROW if dec else 0), aux=hd,
                    qpos_reg=R_QPOS)  # fmt: skip
            qn, kn = "qr", "kr"
        kvoff = {"K": 0, "V": layout.kv_v_offset}
        att = plan.attention
        block = phase == "prefill" and att.pattern == "block"
        qo, qrb = act(qn)
        ao, arb = act("a")
        n_kv, n_sc = len(bp.kv_slots), len(bp.score_slots)
        # Software pipeline over heads, in program order per step s: the K/V of head s + ahead's
        # group (ST, LD, on-chip mov), qk + softmax of head s, pv of head s - lag. The engine then
        # computes scores while the SFU runs a softmax, and the SFU moves the next group's rows
        # while the engine works. A KV slot is rewritten D = n_kv // 2 groups later, so
        # ahead + lag <= (D - 1) * rep keeps its last reader before its next writer in program
        # order; lag < score slots does the same for the score buffer.
        budget = (n_kv // 2 - 1) * rep
        ahead = 1 if budget >= 2 else 0
        lag = max(0, min(n_sc - 1, budget - ahead, 2))
        kv_of: dict[int, dict[str, int]] = {}
        sc_of: dict[int, int] = {}

        def kv_load(g: int) -> None:
            slots = {}
            for j, (which, src) in enumerate((("K", kn), ("V", "v"))):
                so, srb = act(src)
                hb = kvoff[which] + g * layout.kv_head_bytes
                ks = bp.kv_slots[(2 * g + j) % n_kv]
                kspan = (Buf.KV, ks, ks + bp.kv_slot_bytes)
                slots[which] = ks
                if not dec:  # past rows only: disjoint from the rows stored
                    e.unit("ST", (aspan(src),), (), kind=KIND["kv"], hbm=hb, hbm_reg=R_LKVQ,
                           hbm_stride=hd, buf=A, off=so + g * hd, stride=srb, row_bytes=hd,
                           rows=tt, rows_reg=R_ROWS)  # fmt: skip
                e.unit("LD", ((HBM_KV, hb, hb + bp.keys_max * hd),) if dec else (), (kspan,),
                       kind=KIND["kv"], hbm=hb, hbm_reg=R_LKV, hbm_stride=hd, buf=Buf.KV, off=ks,
                       stride=hd, row_bytes=hd, rows=bp.keys_max,
                       rows_reg=0 if dec else R_QPOS)  # fmt: skip
                sfu("mov", (A, so + g * hd, srb, 0), (Buf.KV, ks, hd, R_QOFF), hd,
                    reads=(aspan(src),), writes=(kspan,))  # fmt: skip
            kv_of[g] = slots

        def kvspan(g: int, which: str) -> Span:
            o = kv_of[g][which]
            return (Buf.KV, o, o + bp.kv_slot_bytes)

        def scores(h: int) -> None:
            g = h // rep
            ss = sc_of[h] = bp.score_slots[h % n_sc]
            sspan = (Buf.SCORE, ss, ss + bp.score_slot_bytes)
            sst = bp.score_stride
            e.unit(eng, (aspan(qn), kvspan(g, "K"), params_span), (sspan,), func=MM_FUNC["qk"],
                   rows=tt, rows_reg=R_ROWS, cols=bp.keys_max, cols_reg=0 if dec else R_KEYS,
                   k=hd, n=1, m=1,
                   wbits=8, a_buf=A, a_off=qo + h * hd, a_stride=qrb, b_buf=Buf.KV,
                   b_off=kv_of[g]["K"], b_stride=hd, o_buf=Buf.SCORE, o_off=ss,
                   o_stride=sst, p_off=pb["scores"] + 8 * h, obits=32)  # fmt: skip
            sfu("softmax", (Buf.SCORE, ss, sst, 0), (Buf.SCORE, ss + ROW_FACTOR_BYTES, sst, 0),
                bp.keys_max, reads=(sspan,), writes=(sspan,),
                cols_reg=0 if dec else R_KEYS,
                mask=2 if block else 1, qpos_reg=R_QPOS,
                blk=att.block if block else 0, local=att.local_blocks if block else 0,
                glob=att.global_blocks if block else 0)  # fmt: skip

        def pv(h: int) -> None:
            g = h // rep
            ss = sc_of[h]
            sspan = (Buf.SCORE, ss, ss + bp.score_slot_bytes)
            e.unit(eng, (sspan, kvspan(g, "V"), params_span), (aspan("a"),), func=MM_FUNC["pv"],
                   rows=tt, rows_reg=R_ROWS, cols=hd, k=bp.keys_max, k_reg=0 if dec else R_KEYS,
                   n=1, m=1, wbits=8, a_buf=Buf.SCORE, a_off=ss + ROW_FACTOR_BYTES,
                   a_stride=bp.score_stride, arow=1, b_buf=Buf.KV,
                   b_off=kv_of[g]["V"], b_stride=hd, o_buf=A, o_off=ao + h * hd, o_stride=arb,
                   p_off=pb["pv"] + 12 * h, obits=8)  # fmt: skip

        for step in range(-ahead, nh + lag):
            if 0 <= step + ahead < nh and (step + ahead) % rep == 0:
                kv_load((step + ahead) // rep)
            if 0 <= step < nh:
                scores(step)
            if 0 <= step - lag < nh:
                pv(step - lag)
        if dec:  # the new K (V) row of every head in one strided store, after the bucket's
            # rows were loaded (the loads read the row stored here)
            for which, src in (("K", kn), ("V", "v")):
                so, _ = act(src)
                h0, hn = kvoff[which], kvoff[which] + (nkv - 1) * layout.kv_head_bytes
                e.unit("ST", (aspan(src),), ((HBM_KV, h0 + (lo - 1) * hd, hn + bp.keys_max * hd),),
                       kind=KIND["kv"], hbm=h0, hbm_reg=R_LKVQ, hbm_stride=layout.kv_head_bytes,
                       buf=A, off=so, stride=hd, row_bytes=hd, rows=nkv)  # fmt: skip
        linear_ops(tiles, index, "o", "a", "o")
        sfu("add", "X", "X", d, b="o")  # x1, in place
        sfu("norm", "X", "h2", d, reads=(params_span,), p_off=pb["norm2"],
            aux=int(cfg.norm == "layer"))  # fmt: skip
        f = cfg.intermediate
        if cfg.gated_mlp:
            linear_ops(tiles, index, "gate", "h2", "g")
            linear_ops(tiles, index, "up", "h2", "u")
            sfu("silu", "g", "g", f, reads=(params_span,), p_off=pb["act"])
            sfu("mul", "g", "mm", f, b="u")
            linear_ops(tiles, index, "down", "mm", "d")
        else:
            linear_ops(tiles, index, "up", "h2", "u")
            sfu("reluq", "u", "ua", f)
            linear_ops(tiles, index, "down", "ua", "d")
        sfu("add", "X", "X", d, b="d")  # x{l+1}, in place

    # ---- program
    inp = layout.region("input").base
    kv = layout.region("kv").base
    e.sys("SETI", rd=R_CB, imm=0)
    e.barrier()
    e.sys("LOOP", count=nchunks)
    e.sys("SUB", rd=R_ROWS, ra=1, rb=R_CB)
    e.sys("MINI", rd=R_ROWS, ra=R_ROWS, imm=tt)
    e.sys("ADD", rd=R_QPOS, ra=2, rb=R_CB)
    e.sys("ADD", rd=R_KEYS, ra=R_QPOS, rb=R_ROWS)
    e.sys("MULI", rd=R_QOFF, ra=R_QPOS, imm=hd)
    xrow = RESIDUAL_BITS // 8 * d  # INT32 residual rows
    e.sys("MULI", rd=R_IOFF, ra=R_CB, imm=xrow)
    e.unit(
        "LD",
        (),
        ((A, 0, tt * xrow),),
        kind=KIND["act"],
        hbm=inp,
        hbm_reg=R_IOFF,
        hbm_stride=xrow,
        buf=A,
        off=0,
        stride=xrow,
        row_bytes=xrow,
        rows=tt,
        rows_reg=R_ROWS,
    )
    if rope:
        rope_base = layout.region("rope").base
        if dec:  # the bucket's rows, static; the step's row is RROW bytes into them
            e.sys("ADDI", rd=R_RROW, ra=R_QPOS, imm=1 - lo)
            e.sys("MULI", rd=R_RROW, ra=R_RROW, imm=layout.rope_row)
            rope_at = dict(hbm=rope_base + (lo - 1) * layout.rope_row, rows=bp.rope_rows)
        else:
            e.sys("MULI", rd=R_ROFF, ra=R_QPOS, imm=layout.rope_row)
            rope_at = dict(hbm=rope_base, hbm_reg=R_ROFF, rows=tt, rows_reg=R_ROWS)
        e.unit(
            "LD",
            (),
            (rope_span,),
            kind=KIND["rope"],
            hbm_stride=layout.rope_row,
            buf=Buf.PARAM,
            off=bp.p_rope,
            stride=layout.rope_row,
            row_bytes=layout.rope_row,
            **rope_at,
        )
    for first, count, stride in layout.runs:
        e.sys("SETI", rd=R_LW, imm=layout.region(f"L{first}").base)
        e.sys("SETI", rd=R_LKV, imm=kv + first * layout.kv_layer_bytes)
        e.barrier()
        e.sys("LOOP", count=count)
        layer_body(first)
        e.sys("ADDI", rd=R_LW, ra=R_LW, imm=stride)
        e.sys("ADDI", rd=R_LKV, ra=R_LKV, imm=layout.kv_layer_bytes)
        e.barrier()
        e.sys("ENDLOOP")
    e.sys("ADDI", rd=R_CB, ra=R_CB, imm=tt)
    e.barrier()
    e.sys("ENDLOOP")
    # ---- head on the last row of the last chunk
    fbase = layout.region("final").base
    e.sys("ADDI", rd=R_LAST, ra=R_ROWS, imm=-1)
    e.sys("MULI", rd=R_LAST, ra=R_LAST, imm=xrow)
    e.sys("SETI", rd=R_LW, imm=fbase)
    e.unit(
        "LD",
        (),
        (final_span,),
        kind=KIND["params"],
        hbm=0,
        hbm_reg=R_LW,
        hbm_stride=fb.size,
        buf=Buf.PARAM,
        off=bp.p_final,
        stride=fb.size,
        row_bytes=fb.size,
        rows=1,
    )
    hf_off, hf_rb = act("hf")
    sfu("norm", (A, 0, xrow, R_LAST), (A, hf_off, hf_rb, 0), d,
        reads=((A, 0, tt * xrow), final_span), writes=(aspan("hf"),), rows=1, rows_reg=0,
        p_off=bp.p_final + fb["norm"], aux=int(cfg.norm == "layer"))  # fmt: skip
    head = layout.head
    items = [(head, r0, r, off) for (r0, r, off) in head.tiles]
    tiles = Tiles(items, R_LW)
    lo, lrb = act("logits")
    lspan = aspan("logits")
    hbits = linear_out_bits("head")
    for j, (ts, r0, r, _) in enumerate(items):
        tiles.load_upto(j + len(bp.weight_slots) - 1)
        s = bp.weight_slots[j % len(bp.weight_slots)]
        e.unit(
            eng,
            (aspan("hf"), (Buf.WEIGHT, s, s + bp.weight_slot_bytes), final_span),
            (lspan,),
            func=MM_FUNC["head"],
            rows=1,
            cols=r,
            a_buf=A,
            a_off=hf_off,
            a_stride=hf_rb,
            arow=1,
            **_weight_operand(ts, s),
            o_buf=A,
            o_off=lo + hbits // 8 * r0,
            o_stride=lrb,
            p_off=bp.p_final + fb["head.guard"],
            obits=hbits,
        )
    e.unit(
        "ST",
        (lspan,),
        (),
        kind=KIND["logits"],
        hbm=layout.region("logits").base,
        hbm_stride=lrb,
        buf=A,
        off=lo,
        stride=lrb,
        row_bytes=lrb,
        rows=1,
    )
    e.barrier()
    e.sys("END")
    return e.nodes
