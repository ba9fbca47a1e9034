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

Rotated keys (plan ``method.keys: rotated``; :mod:`hwflow.numerics`, "Rotated keys"): the q and
k linears write INT16; the SFU's ``ropeq`` turns q into ``qr`` (INT8) and ``ropek`` k into
``kr``, whose rows hold one *record* per KV head, the key's row factor then its INT8 codes
(``head_dim + 4`` bytes, the KV cache's K format, :func:`hwflow.compiler.layout.key_row_bytes`),
so the K rows move as records (ST, LD, ``mov``) and the qk reads their factors (``brow``).

Registers (set by SYS in the template; R1 = LEN, R2 = POS from the runtime)::

    R3 ROWS  rows of this chunk: min(LEN - CB, tt)      R4 QPOS  POS + CB (first row's position)
    R5 KEYS  QPOS + ROWS (keys visible to the chunk)    R6 QOFF  QPOS * head_dim
    R7 LW    HBM base of the current layer's region     R8 LKV   HBM base of its KV cache
    R9 LKVQ  LKV + QOFF (where this chunk's rows go)    R10 CB   chunk base row
    R11 IOFF CB * hidden (input rows)                   R12 ROFF QPOS * rope row bytes
    R13 LAST (ROWS - 1) * hidden (the last row, for the head)
    R14 RROW decode: (POS - bucket start) * rope row bytes (this position's RoPE row on chip)
    rotated keys: R12 KOFF  QPOS * (head_dim + 4) once the RoPE rows are loaded (a K record's
             offset), R13 LKVK  LKV + KOFF (where this chunk's K records go); LAST is set
             after the chunk loop
    R15 SEQ  (read) a program for a batch (:mod:`.batch`): the KV-cache slot whose cache LKV
             points into (a prefill's slot comes from the runtime)

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

from hwflow.compiler import parallel
from hwflow.compiler.layout import (
    WEIGHT_SLOTS,
    HbmLayout,
    TileSpec,
    final_blob,
    key_row_bytes,
    linear_out_bits,
    param_blob,
    slot_factors,
)
from hwflow.config import CompressionPlan, HardwarePreset, ModelConfig
from hwflow.errors import CapacityError
from hwflow.isa import (
    REG_SEQ,
    ROW_FACTOR_BYTES,
    Buf,
    MatmulFunc,
    SfuFunc,
    SoftmaxMask,
    XferKind,
)
from hwflow.numerics import GATE_BITS, RESIDUAL_BITS

__all__ = ["BufferPlan", "Node", "lower_step", "plan_buffers"]

R_ROWS, R_QPOS, R_KEYS, R_QOFF, R_LW, R_LKV, R_LKVQ, R_CB, R_IOFF, R_ROFF, R_LAST, R_RROW = range(
    3, 15
)
#: Pseudo buffer id of the current layer's KV cache in HBM (offsets from its base) in the
#: footprints the token assignment sees: orders a decode step's KV loads before its KV stores.
HBM_KV = 8
#: Rotated keys (module doc): registers free within the chunk loop reused for the K records
R_KOFF, R_LKVK = R_ROFF, R_LAST


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


def _tensors(
    cfg: ModelConfig, rotated: bool = False
) -> list[tuple[str, int, int, int, bool, str | None]]:
    """(name, bytes per row, first op index, last op index, row factor, written over) of a
    layer's tensors (op order). The residual ``X`` (INT32) is not among them: it has its own
    place, and both residual adds write it in place (``x1`` is ``X`` after add1). Per-row
    tensors hold a row factor in the ``ROW_FACTOR_BYTES`` before each row. A tensor "written
    over" another starts where that one does: the per-row INT8 gated product over ``g`` and
    OPT's quantized ReLU over ``u`` (shorter rows, so a row-by-row SFU never overwrites a row it
    has yet to read); the rest of the INT16 tensor is free once it is consumed. With
    ``rotated`` keys q and k are INT16 and ``kr`` holds a K record per KV head (module doc):
    its row 0 starts 4 bytes in, at head 0's codes, like a per-row tensor's."""
    d, f = cfg.hidden, cfg.intermediate
    qd, kd = cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    qkb = 2 if rotated else 1
    res, gate = RESIDUAL_BITS // 8, GATE_BITS // 8
    rf = ROW_FACTOR_BYTES
    rope = cfg.positions == "rope"
    # op indices: 0 norm1, 1 qkv, 2 rope, 3 kv/attn, 4 o, 5 add1, 6 norm2, 7 gate/up, 8 act,
    # 9 mul, 10 down, 11 add2
    t: list[tuple[str, int, int, int, bool, str | None]] = [
        ("h1", d + rf, 0, 1, True, None),
        ("q", qkb * qd, 1, 3 if not rope else 2, False, None),
        ("k", qkb * kd, 1, 3 if not rope else 2, False, None),
        ("v", kd, 1, 3, False, None),
        ("a", qd, 3, 4, False, None),
        ("o", res * d, 4, 5, False, None),
        ("h2", d + rf, 6, 7, True, None),
        ("d", res * d, 10, 11, False, None),
    ]
    if rope:
        kr = cfg.kv_heads * key_row_bytes(cfg, rotated)
        t += [("qr", qd, 2, 3, False, None), ("kr", kr, 2, 3, rotated, None)]
    if cfg.gated_mlp:  # silu on g in place, then the product over it
        t += [("g", gate * f, 7, 9, False, None), ("u", gate * f, 7, 9, False, None)]
        t += [("mm", f + rf, 9, 10, True, "g")]
    else:
        t += [("u", gate * f, 7, 8, False, None), ("ua", f + rf, 8, 10, True, "u")]
    return t


def plan_buffers(
    cfg: ModelConfig,
    hw: HardwarePreset,
    tt: int,
    keys_max: int,
    rope_rows: int | None = None,
    *,
    score_rows: int | None = None,
    head_rows: int = 1,
    logit_cols: int | None = None,
    rotated: bool = False,
) -> BufferPlan:
    """Allocate the on-chip buffers for ``tt`` rows and ``keys_max`` keys (first fit by
    liveness in the activation buffer), with ``rope_rows`` RoPE rows (default ``tt``),
    ``score_rows`` query rows per score slot (default ``tt``; a batched decode's attention
    runs one sequence's row at a time) and ``head_rows`` rows through the LM head (a batched
    decode: every sequence's) whose logits are kept ``logit_cols`` wide (default: the whole
    vocabulary; a batched decode stores each head tile's columns as they come, two tiles'
    worth on chip; ``rotated`` keys: their formats, module doc); CapacityError naming the buffer
    when one overflows."""
    rope_rows = tt if rope_rows is None else rope_rows
    act, span, top = _place_activations(cfg, hw, tt, head_rows, logit_cols, rotated)
    kv_slot, n_kv = _kv_slots(cfg, hw, keys_max, rotated)
    sst, sc_slot, n_sc = _score_slots(hw, tt if score_rows is None else score_rows, keys_max)
    wslot = hw.buffers.bytes("weight") // WEIGHT_SLOTS
    p_rope, p_final = _param_places(cfg, hw, rope_rows, rotated)
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


def _place_activations(
    cfg: ModelConfig,
    hw: HardwarePreset,
    tt: int,
    head_rows: int = 1,
    logit_cols: int | None = None,
    rotated: bool = False,
) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[int, int]], int]:
    """(tensor -> (row 0 offset, row stride), tensor -> [first, end) bytes, bytes used) of the
    activation buffer: the residual at 0, then a layer's tensors first fit by liveness, then
    the head's ``hf`` and logits over the (by then dead) layer tensors."""
    d, rf = cfg.hidden, ROW_FACTOR_BYTES
    res = RESIDUAL_BITS // 8
    act: dict[str, tuple[int, int]] = {"X": (0, res * d)}
    span: dict[str, tuple[int, int]] = {"X": (0, tt * res * d)}
    placed: list[tuple[int, int, int, int]] = []  # (lo, hi, first, last)
    base = _al(tt * res * d)
    top = base
    for name, rb, first, last, rowf, over in sorted(_tensors(cfg, rotated), key=lambda x: x[2]):
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
    hr = head_rows
    act["hf"] = (base + rf, d + rf)
    span["hf"] = (base, base + hr * (d + rf))
    lg = base + _al(hr * (d + rf))
    lrow, slots = (4 * cfg.vocab, 1) if logit_cols is None else (4 * logit_cols, 2)
    act["logits"] = (lg, lrow)
    span["logits"] = (lg, lg + slots * hr * lrow)
    top = max(top, lg + _al(slots * hr * lrow))
    act_cap = hw.buffers.bytes("act")
    if top > act_cap:
        what = f"a batch of {tt} sequences" if hr > 1 else f"a {tt}-token chunk"
        raise CapacityError(
            f"activations of {what} need {top} bytes but buffers.act_kib holds {act_cap} bytes"
        )
    return act, span, top


def _kv_slots(
    cfg: ModelConfig, hw: HardwarePreset, keys_max: int, rotated: bool = False
) -> tuple[int, int]:
    """(bytes, count) of the KV slots: one head's K or V over ``keys_max`` keys each (rotated
    keys: K records, :func:`~hwflow.compiler.layout.key_row_bytes`), at most every K and V of
    the KV heads and 16; at least two (K and V of one head)."""
    kv_slot = _al(keys_max * key_row_bytes(cfg, rotated))
    n_kv = min(hw.buffers.bytes("kv") // kv_slot, 2 * cfg.kv_heads, 16)
    if n_kv < 2:
        raise CapacityError(
            f"attention at {keys_max} keys needs two KV slots of {kv_slot} bytes (K and V of one "
            f"head) but buffers.kv_kib holds {hw.buffers.bytes('kv')} bytes"
        )
    return kv_slot, n_kv


def _score_slots(hw: HardwarePreset, tt: int, keys_max: int) -> tuple[int, int, int]:
    """(row stride, slot bytes, count) of the score slots: ``tt`` rows of INT32 scores (later
    the UINT8 probabilities and their row factor in place), at most 4 slots, at least one."""
    sst = max(4 * keys_max, keys_max + ROW_FACTOR_BYTES)
    sc_slot = _al(tt * sst)
    n_sc = min(hw.buffers.bytes("score") // sc_slot, 4)
    if n_sc < 1:
        raise CapacityError(
            f"scores of a {tt}-token chunk at {keys_max} keys need {sc_slot} bytes but "
            f"buffers.score_kib holds {hw.buffers.bytes('score')} bytes"
        )
    return sst, sc_slot, n_sc


def _param_places(
    cfg: ModelConfig, hw: HardwarePreset, rope_rows: int, rotated: bool = False
) -> tuple[int, int]:
    """(RoPE rows' offset, final blob's offset) in the param buffer, after the layer blob."""
    p_rope = _al(param_blob(cfg, rotated).size)
    p_final = p_rope + _al(rope_rows * 2 * cfg.head_dim)
    need = p_final + final_blob(cfg).size
    if need > hw.buffers.bytes("param"):
        raise CapacityError(
            f"layer parameters and {rope_rows} RoPE rows need {need} bytes but "
            f"buffers.param_kib holds {hw.buffers.bytes('param')} bytes"
        )
    return p_rope, p_final


def _weight_operand(ts: TileSpec, slot: int) -> dict[str, int]:
    """The fields of an engine op (linear or head) whose B operand is weight tile ``ts`` in
    the weight slot at ``slot``: reduction length, N:M, weight bits, bias, weight group
    (log2) and the slot."""
    q = ts.quant
    wgroup = 0 if q.group is None else q.group.bit_length() - 1
    return {"k": ts.k, "n": q.n, "m": q.m, "wbits": q.bits, "bias": int(ts.bias),
            "wgroup": wgroup, "b_buf": Buf.WEIGHT, "b_off": slot,
            "b_stride": ts.row_bytes}  # fmt: skip


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


Operand = tuple[int, int, int, int]  # (buffer, offset, row stride, offset register)


class _Tiles:
    """The weight tiles of one layer (or the head) streamed through the weight slots: the LD of
    tile ``j`` is emitted just before the engine op of tile ``j - (slots - 1)``, i.e. right after
    the engine op that last used its slot (double buffering with two slots)."""

    def __init__(self, e: _Emitter, bp: BufferPlan, specs: list[TileSpec], base_reg: int) -> None:
        self.e, self.bp, self.base_reg = e, bp, base_reg
        #: (spec, first output row, rows, offset in the region at ``base_reg``) per tile
        self.items = [(ts, r0, r, off) for ts in specs for (r0, r, off) in ts.tiles]
        self.first: dict[str, int] = {}  #: op -> index of its first tile
        for j, it in enumerate(self.items):
            self.first.setdefault(it[0].name, j)
        self.loaded = 0

    def slot(self, j: int) -> int:
        """Offset of the weight slot tile ``j`` goes to."""
        return self.bp.weight_slots[j % len(self.bp.weight_slots)]

    def slot_span(self, j: int) -> Span:
        s = self.slot(j)
        return (Buf.WEIGHT, s, s + self.bp.weight_slot_bytes)

    def prefetch(self, j: int) -> None:
        """Load every tile up to the one the slots can hold ahead of the engine at tile ``j``."""
        self.load_upto(j + len(self.bp.weight_slots) - 1)

    def load_upto(self, j: int) -> None:
        """Emit the LDs of the tiles not yet loaded up to ``j`` (capped at the last)."""
        while self.loaded <= min(j, len(self.items) - 1):
            ts, _r0, r, off = self.items[self.loaded]
            s = self.slot(self.loaded)
            nbytes = ts.tile_bytes(r)
            self.e.unit("LD", (), (self.slot_span(self.loaded),), kind=XferKind.WEIGHTS, hbm=off,
                        hbm_reg=self.base_reg, hbm_stride=nbytes, buf=Buf.WEIGHT, off=s,
                        stride=nbytes, row_bytes=nbytes, rows=1)  # fmt: skip
            self.loaded += 1


class _Lowering:
    """The lowering of one template: the model, plan, layouts and phase every part reads, and
    one method per part of the program (chunk loop, layer, attention, MLP, head)."""

    def __init__(
        self,
        cfg: ModelConfig,
        plan: CompressionPlan,
        layout: HbmLayout,
        bp: BufferPlan,
        phase: str,
        lo: int,
        hw: HardwarePreset | None = None,
        par: parallel.Board | None = None,
    ) -> None:
        self.cfg, self.plan, self.layout, self.bp, self.lo = cfg, plan, layout, bp, lo
        self.hw, self.par = hw, par  # multi-board: this board's share (compiler.parallel)
        self.rows_reg = R_ROWS
        self.e = _Emitter()
        self.dec = phase == "decode"
        self.eng = "MV" if self.dec else "MM"
        self.block = not self.dec and plan.attention.pattern == "block"
        self.rope = cfg.positions == "rope"
        self.tt = bp.tt
        self.xrow = RESIDUAL_BITS // 8 * cfg.hidden  # INT32 residual rows
        self.rot = layout.rotated  # rotated keys (module doc)
        self.kb = key_row_bytes(cfg, self.rot)  # bytes of a K row (rotated: a record)
        self.pb, self.fb = param_blob(cfg, self.rot), final_blob(cfg)
        self.params_span: Span = (Buf.PARAM, 0, self.pb.size)
        self.rope_span: Span = (Buf.PARAM, bp.p_rope, bp.p_final)
        self.final_span: Span = (Buf.PARAM, bp.p_final, bp.p_final + self.fb.size)
        # linear inputs with row factors (``a`` has a static scale): the per-row tensors and hf
        self.rowf = {t[0] for t in _tensors(cfg, self.rot) if t[4]} | {"hf"}
        # attention's rows (clamped by a register), engine, KV base register and the registers
        # added to the offsets of its q-wide (q, qr, a) and kv-wide (k, kr, v) rows: the
        # chunk's here; one sequence's row in a batched decode (:mod:`.batch`)
        self.att_rows, self.att_reg, self.att_eng = self.tt, R_ROWS, self.eng
        self.r_lkv, self.r_sq, self.r_sk = R_LKV, 0, 0
        # a program for several sequences: each layer's KV base is the slot SEQ's (R15)
        self.slot_kv = layout.batch > 1

    # ---- operands

    def act(self, name: str) -> tuple[int, int]:
        """(offset of row 0's data, row stride) of an activation tensor."""
        return self.bp.act[name]

    def aspan(self, name: str) -> Span:
        """The bytes allocated to an activation tensor."""
        lo, hi = self.bp.act_span[name]
        return (Buf.ACT, lo, hi)

    def operand(self, x: str | Operand) -> Operand:
        """An SFU operand: an activation tensor by name, or (buffer, offset, stride, reg)."""
        if isinstance(x, str):
            off, rb = self.act(x)
            return (Buf.ACT, off, rb, 0)
        return x

    def sfu(
        self,
        func: SfuFunc,
        a: str | Operand,
        o: str | Operand,
        cols: int,
        reads: tuple[Span, ...] = (),
        writes: tuple[Span, ...] = (),
        b: str | Operand | None = None,
        **f: int,
    ) -> None:
        """An SFU op (``rows`` default: the chunk's rows); a named tensor operand adds its
        span to the footprint."""
        ab, ao, ast, ar = self.operand(a)
        ob, oo, ost, orr = self.operand(o)
        extra: dict[str, int] = {}
        if b is not None:
            bb, bo, bs, br = self.operand(b)
            extra = {"b_buf": bb, "b_off": bo, "b_stride": bs, "b_reg": br}
            if isinstance(b, str):
                reads = (*reads, self.aspan(b))
        if isinstance(a, str):
            reads = (*reads, self.aspan(a))
        if isinstance(o, str):
            writes = (*writes, self.aspan(o))
        self.e.unit("SFU", reads, writes, func=func, rows=f.pop("rows", self.tt),
                    rows_reg=f.pop("rows_reg", R_ROWS), cols=cols, a_buf=ab, a_off=ao,
                    a_stride=ast, a_reg=ar, o_buf=ob, o_off=oo, o_stride=ost, o_reg=orr,
                    **extra, **f)  # fmt: skip

    def norm(self, a: str | Operand, o: str | Operand, p_off: int, **f: Any) -> None:
        """RMSNorm / LayerNorm (the model's) of ``a`` into ``o``, gains at ``p_off``."""
        aux = int(self.cfg.norm == "layer")
        self.sfu(SfuFunc.NORM, a, o, self.cfg.hidden, p_off=p_off, aux=aux, **f)

    def linear(self, tiles: _Tiles, op: str, src: str, dst: str) -> None:
        """Linear op ``op`` of the layer: ``dst = src @ W^T``, one engine op per weight tile."""
        obits = linear_out_bits(op, self.rot)
        so, srb = self.act(src)
        do, drb = self.act(dst)
        first = tiles.first[op]
        for j in range(first, first + sum(1 for t in tiles.items if t[0].name == op)):
            tiles.prefetch(j)
            ts, r0, r, _ = tiles.items[j]
            self.e.unit(self.eng, (self.aspan(src), tiles.slot_span(j)), (self.aspan(dst),),
                        func=MatmulFunc.LINEAR, rows=self.tt, rows_reg=R_ROWS, cols=r,
                        a_buf=Buf.ACT, a_off=so, a_stride=srb, o_buf=Buf.ACT,
                        o_off=do + r0 * obits // 8, o_stride=drb, p_off=self.pb[f"{op}.guard"],
                        obits=obits, **{"arow": int(src in self.rowf),
                                        **parallel.row_parallel_fields(self, op)},
                        **_weight_operand(ts, tiles.slot(j)))  # fmt: skip

    # ---- program structure

    def program(self, nchunks: int) -> list[Node]:
        """Chunk loop (input rows, RoPE rows, every layer run), then the head."""
        e, tt = self.e, self.tt
        e.sys("SETI", rd=R_CB, imm=0)
        e.barrier()
        e.sys("LOOP", count=nchunks)
        self.chunk_registers()
        self.chunk_loads()
        if self.rot:  # after the RoPE rows' LD, which reads ROFF (= KOFF)
            e.sys("MULI", rd=R_KOFF, ra=R_QPOS, imm=self.kb)
        for run in self.layout.runs:
            self.layer_run(*run)
        parallel.chunk_output(self)
        e.sys("ADDI", rd=R_CB, ra=R_CB, imm=tt)
        e.barrier()
        e.sys("ENDLOOP")
        if parallel.runs_head(self):
            self.head()
        e.barrier()
        e.sys("END")
        return e.nodes

    def chunk_registers(self) -> None:
        """ROWS, QPOS, KEYS, QOFF and IOFF of the chunk at CB (see the module doc)."""
        e = self.e
        e.sys("SUB", rd=R_ROWS, ra=1, rb=R_CB)
        e.sys("MINI", rd=R_ROWS, ra=R_ROWS, imm=self.tt)
        e.sys("ADD", rd=R_QPOS, ra=2, rb=R_CB)
        e.sys("ADD", rd=R_KEYS, ra=R_QPOS, rb=R_ROWS)
        e.sys("MULI", rd=R_QOFF, ra=R_QPOS, imm=self.cfg.head_dim)
        e.sys("MULI", rd=R_IOFF, ra=R_CB, imm=self.xrow)

    def chunk_loads(self) -> None:
        """The chunk's input rows, then (RoPE models) its RoPE rows (decode: the bucket's)."""
        e, lay, tt, xrow = self.e, self.layout, self.tt, self.xrow
        if not parallel.chunk_input(self):
            e.unit("LD", (), ((Buf.ACT, 0, tt * xrow),), kind=XferKind.ACT,
                   hbm=lay.region("input").base, hbm_reg=R_IOFF, hbm_stride=xrow, buf=Buf.ACT,
                   off=0, stride=xrow, row_bytes=xrow, rows=tt, rows_reg=R_ROWS)  # fmt: skip
        if not self.rope:
            return
        rope_base = lay.region("rope").base
        rope_at: dict[str, int]
        if self.dec:  # the bucket's rows, static; the step's row is RROW bytes into them
            e.sys("ADDI", rd=R_RROW, ra=R_QPOS, imm=1 - self.lo)
            e.sys("MULI", rd=R_RROW, ra=R_RROW, imm=lay.rope_row)
            rope_at = dict(hbm=rope_base + (self.lo - 1) * lay.rope_row, rows=self.bp.rope_rows)
        else:
            e.sys("MULI", rd=R_ROFF, ra=R_QPOS, imm=lay.rope_row)
            rope_at = dict(hbm=rope_base, hbm_reg=R_ROFF, rows=tt, rows_reg=R_ROWS)
        e.unit("LD", (), (self.rope_span,), kind=XferKind.ROPE, hbm_stride=lay.rope_row,
               buf=Buf.PARAM, off=self.bp.p_rope, stride=lay.rope_row, row_bytes=lay.rope_row,
               **rope_at)  # fmt: skip

    def layer_run(self, first: int, count: int, stride: int) -> None:
        """A loop over ``count`` identical layers from ``first``, advancing LW / LKV."""
        e, lay = self.e, self.layout
        e.sys("SETI", rd=R_LW, imm=lay.region(f"L{first}").base)
        kv0 = lay.region("kv").base + first * lay.kv_layer_bytes
        if self.slot_kv:  # LKV = SEQ * kv_seq_bytes + kv0 (two 24-bit factors)
            a, b = slot_factors(lay.kv_seq_bytes)
            e.sys("MULI", rd=R_LKV, ra=REG_SEQ, imm=a)
            e.sys("MULI", rd=R_LKV, ra=R_LKV, imm=b)
            e.sys("ADDI", rd=R_LKV, ra=R_LKV, imm=kv0)
        else:
            e.sys("SETI", rd=R_LKV, imm=kv0)
        parallel.layer_run_start(self, first)
        e.barrier()
        e.sys("LOOP", count=count)
        self.layer(first)
        parallel.layer_run_step(self)
        e.sys("ADDI", rd=R_LW, ra=R_LW, imm=stride)
        e.sys("ADDI", rd=R_LKV, ra=R_LKV, imm=lay.kv_layer_bytes)
        e.barrier()
        e.sys("ENDLOOP")

    # ---- one layer

    def layer(self, li: int) -> None:
        """The body of layer ``li`` (and of every layer of its run)."""
        e, pb, d = self.e, self.pb, self.cfg.hidden
        tiles = _Tiles(e, self.bp, list(self.layout.tiles[li]), R_LW)
        e.sys("ADD", rd=R_LKVQ, ra=R_LKV, rb=R_QOFF)
        if self.rot:
            e.sys("ADD", rd=R_LKVK, ra=R_LKV, rb=R_KOFF)
        e.unit("LD", (), (self.params_span,), kind=XferKind.PARAMS, hbm=0, hbm_reg=R_LW,
               hbm_stride=pb.size, buf=Buf.PARAM, off=0, stride=pb.size, row_bytes=pb.size,
               rows=1)  # fmt: skip
        parallel.load_records(self)
        tiles.load_upto(0)
        self.norm("X", "h1", pb["norm1"], reads=(self.params_span,))
        for op in ("q", "k", "v"):
            self.linear(tiles, op, "h1", op)
        qn, kn = self.rotate() if self.rope else ("q", "k")
        _Attention(self, qn, kn).emit()
        self.linear(tiles, "o", "a", "o")
        parallel.reduce(self, "o", "o", "a")
        self.sfu(SfuFunc.ADD, "X", "X", d, b="o")  # x1, in place
        self.norm("X", "h2", pb["norm2"], reads=(self.params_span,))
        self.mlp(tiles)
        self.sfu(SfuFunc.ADD, "X", "X", d, b="d")  # x{l+1}, in place

    def rotate(self) -> tuple[str, str]:
        """RoPE of q and k into qr and kr (decode: the step's row RROW bytes into the bucket's
        rows; rotated keys: ``ropeq`` and ``ropek``, module doc); returns the tensors attention
        reads."""
        hd, bp = self.cfg.head_dim, self.bp
        funcs = (SfuFunc.ROPEQ, SfuFunc.ROPEK) if self.rot else (SfuFunc.ROPE, SfuFunc.ROPE)
        for (src, dst, n), func in zip(
            (("q", "qr", self.cfg.heads), ("k", "kr", self.cfg.kv_heads)), funcs, strict=True
        ):
            extra = {}
            if func == SfuFunc.ROPEQ:  # the per-head multipliers
                extra = dict(p_off=self.pb["rope_q"], reads=(self.rope_span, self.params_span))
            self.sfu(func, src, dst, n * hd, **{"reads": (self.rope_span,), **extra},
                     b=(Buf.PARAM, bp.p_rope, 2 * hd, R_RROW if self.dec else 0), aux=hd,
                     qpos_reg=R_QPOS)  # fmt: skip
        return "qr", "kr"

    def mlp(self, tiles: _Tiles) -> None:
        """Gated (SiLU) or OPT's ReLU MLP from h2 into d."""
        f = self.cfg.intermediate
        if self.cfg.gated_mlp:
            self.linear(tiles, "gate", "h2", "g")
            self.linear(tiles, "up", "h2", "u")
            self.sfu(SfuFunc.SILU, "g", "g", f, reads=(self.params_span,), p_off=self.pb["act"])
            if not parallel.quant_ffn(self, "g", "u", "mm", f):
                self.sfu(SfuFunc.MUL, "g", "mm", f, b="u")
            self.linear(tiles, "down", "mm", "d")
            parallel.reduce(self, "down", "d", "mm")
        else:
            self.linear(tiles, "up", "h2", "u")
            if not parallel.quant_ffn(self, "u", None, "ua", f):
                self.sfu(SfuFunc.RELUQ, "u", "ua", f)
            self.linear(tiles, "down", "ua", "d")
            parallel.reduce(self, "down", "d", "ua")

    # ---- head

    def head(self) -> None:
        """Final norm and LM head on the last row of the last chunk; the logits to HBM."""
        e, bp, fb, lay, xrow = self.e, self.bp, self.fb, self.layout, self.xrow
        e.sys("ADDI", rd=R_LAST, ra=R_ROWS, imm=-1)
        e.sys("MULI", rd=R_LAST, ra=R_LAST, imm=xrow)
        e.sys("SETI", rd=R_LW, imm=lay.region("final").base)
        e.unit("LD", (), (self.final_span,), kind=XferKind.PARAMS, hbm=0, hbm_reg=R_LW,
               hbm_stride=fb.size, buf=Buf.PARAM, off=bp.p_final, stride=fb.size,
               row_bytes=fb.size, rows=1)  # fmt: skip
        hf_off, hf_rb = self.act("hf")
        self.norm((Buf.ACT, 0, xrow, R_LAST), (Buf.ACT, hf_off, hf_rb, 0),
                  bp.p_final + fb["norm"], reads=((Buf.ACT, 0, self.tt * xrow), self.final_span),
                  writes=(self.aspan("hf"),), rows=1, rows_reg=0)  # fmt: skip
        tiles = _Tiles(e, bp, [lay.head], R_LW)
        lg, lrb = self.act("logits")
        lspan = self.aspan("logits")
        hbits = linear_out_bits("head")
        for j, (ts, r0, r, _) in enumerate(tiles.items):
            tiles.prefetch(j)
            e.unit(self.eng, (self.aspan("hf"), tiles.slot_span(j), self.final_span), (lspan,),
                   func=MatmulFunc.HEAD, rows=1, cols=r, a_buf=Buf.ACT, a_off=hf_off,
                   a_stride=hf_rb, arow=1, **_weight_operand(ts, tiles.slot(j)), o_buf=Buf.ACT,
                   o_off=lg + hbits // 8 * r0, o_stride=lrb,
                   p_off=bp.p_final + fb["head.guard"], obits=hbits)  # fmt: skip
        e.unit("ST", (lspan,), (), kind=XferKind.LOGITS, hbm=lay.region("logits").base,
               hbm_stride=lrb, buf=Buf.ACT, off=lg, stride=lrb, row_bytes=lrb,
               rows=1)  # fmt: skip


class _Attention:
    """One layer's attention, software-pipelined over heads. In program order per step ``s``:
    the K/V of head ``s + ahead``'s group (ST, LD, on-chip mov), qk + softmax of head ``s``, pv
    of head ``s - lag``. The engine then computes scores while the SFU runs a softmax, and the
    SFU moves the next group's rows while the engine works. A KV slot is rewritten
    ``D = kv slots // 2`` groups later, so ``ahead + lag <= (D - 1) * rep`` keeps its last
    reader before its next writer in program order; ``lag < score slots`` does the same for
    the score buffer."""

    def __init__(self, s: _Lowering, qn: str, kn: str) -> None:
        self.s, self.qn, self.kn = s, qn, kn
        cfg, bp = s.cfg, s.bp
        self.hd, self.nh, self.nkv = cfg.head_dim, cfg.heads, cfg.kv_heads
        self.rep = self.nh // self.nkv
        self.kvoff = {"K": 0, "V": s.layout.kv_v_offset}
        self.n_kv, self.n_sc = len(bp.kv_slots), len(bp.score_slots)
        budget = (self.n_kv // 2 - 1) * self.rep
        self.ahead = 1 if budget >= 2 else 0
        self.lag = max(0, min(self.n_sc - 1, budget - self.ahead, 2))
        self.kv_of: dict[int, dict[str, int]] = {}  #: group -> {"K"/"V": its KV slot}
        self.sc_of: dict[int, int] = {}  #: head -> its score slot

    def emit(self) -> None:
        """The pipelined heads, then (decode) the new K/V rows' store."""
        nh, rep, ahead, lag = self.nh, self.rep, self.ahead, self.lag
        for step in range(-ahead, nh + lag):
            if 0 <= step + ahead < nh and (step + ahead) % rep == 0:
                self.kv_load((step + ahead) // rep)
            if 0 <= step < nh:
                self.scores(step)
            if 0 <= step - lag < nh:
                self.pv(step - lag)
        if self.s.dec:
            self.store_new_rows()

    def kv_load(self, g: int) -> None:
        """K and V of group ``g`` into two KV slots: (prefill) store the chunk's rows, load the
        past rows (decode: the bucket's), copy the chunk's rows next to them on chip."""
        s, bp, hd, dec = self.s, self.s.bp, self.hd, self.s.dec
        slots = {}
        for j, (which, src) in enumerate((("K", self.kn), ("V", "v"))):
            # a row's bytes, its first byte in the tensor's row, its HBM and slot registers
            rb, at, r_hbm, r_off = hd, s.act(src)[0] + g * hd, R_LKVQ, R_QOFF
            if which == "K" and s.rot:  # K records: the factor before the codes
                rb, at, r_hbm, r_off = (
                    s.kb,
                    s.act(src)[0] - ROW_FACTOR_BYTES + g * s.kb,
                    R_LKVK,
                    R_KOFF,
                )
            srb = s.act(src)[1]
            hb = self.kvoff[which] + g * s.layout.head_stride(which)
            ks = bp.kv_slots[(2 * g + j) % self.n_kv]
            kspan = (Buf.KV, ks, ks + bp.kv_slot_bytes)
            slots[which] = ks
            rk = s.r_sk  # the sequence's row of a batched decode (0: the chunk's rows)
            if not dec:  # past rows only: disjoint from the rows stored
                s.e.unit("ST", (s.aspan(src),), (), kind=XferKind.KV, hbm=hb, hbm_reg=r_hbm,
                         hbm_stride=rb, buf=Buf.ACT, off=at, off_reg=rk, stride=srb,
                         row_bytes=rb, rows=s.att_rows, rows_reg=s.att_reg)  # fmt: skip
            s.e.unit("LD", ((HBM_KV, hb, hb + bp.keys_max * rb),) if dec else (), (kspan,),
                     kind=XferKind.KV, hbm=hb, hbm_reg=s.r_lkv, hbm_stride=rb, buf=Buf.KV,
                     off=ks, stride=rb, row_bytes=rb, rows=bp.keys_max,
                     rows_reg=0 if dec else R_QPOS)  # fmt: skip
            s.sfu(SfuFunc.MOV, (Buf.ACT, at, srb, rk), (Buf.KV, ks, rb, r_off), rb,
                  reads=(s.aspan(src),), writes=(kspan,), rows=s.att_rows,
                  rows_reg=s.att_reg)  # fmt: skip
        self.kv_of[g] = slots

    def kvspan(self, g: int, which: str) -> Span:
        o = self.kv_of[g][which]
        return (Buf.KV, o, o + self.s.bp.kv_slot_bytes)

    def scores(self, h: int) -> None:
        """qk of head ``h`` into a score slot, then its softmax in place (causal, or the
        plan's block mask in prefill)."""
        s, bp, hd, dec = self.s, self.s.bp, self.hd, self.s.dec
        att = s.plan.attention
        g = h // self.rep
        ss = self.sc_of[h] = bp.score_slots[h % self.n_sc]
        sspan = (Buf.SCORE, ss, ss + bp.score_slot_bytes)
        sst = bp.score_stride
        qo, qrb = s.act(self.qn)
        rf = ROW_FACTOR_BYTES if s.rot else 0  # rotated: the keys' factors before their rows
        s.e.unit(s.att_eng, (s.aspan(self.qn), self.kvspan(g, "K"), s.params_span), (sspan,),
                 func=MatmulFunc.QK, rows=s.att_rows, rows_reg=s.att_reg, cols=bp.keys_max,
                 cols_reg=0 if dec else R_KEYS, k=hd, n=1, m=1, wbits=8, a_buf=Buf.ACT,
                 a_off=qo + h * hd, a_reg=s.r_sq, a_stride=qrb, b_buf=Buf.KV,
                 b_off=self.kv_of[g]["K"] + rf, b_stride=s.kb, brow=int(s.rot), o_buf=Buf.SCORE,
                 o_off=ss, o_stride=sst,
                 p_off=s.pb["scores"] + (12 if s.rot else 8) * h, obits=32)  # fmt: skip
        if s.block:
            mask = dict(mask=SoftmaxMask.BLOCK, blk=att.block, local=att.local_blocks,
                        glob=att.global_blocks)  # fmt: skip
        else:
            mask = dict(mask=SoftmaxMask.CAUSAL)
        s.sfu(SfuFunc.SOFTMAX, (Buf.SCORE, ss, sst, 0), (Buf.SCORE, ss + ROW_FACTOR_BYTES, sst, 0),
              bp.keys_max, reads=(sspan,), writes=(sspan,), cols_reg=0 if dec else R_KEYS,
              qpos_reg=R_QPOS, rows=s.att_rows, rows_reg=s.att_reg, **mask)  # fmt: skip

    def pv(self, h: int) -> None:
        """Probabilities of head ``h`` times its group's V into its columns of ``a``."""
        s, bp, hd, dec = self.s, self.s.bp, self.hd, self.s.dec
        g = h // self.rep
        ss = self.sc_of[h]
        sspan = (Buf.SCORE, ss, ss + bp.score_slot_bytes)
        ao, arb = s.act("a")
        s.e.unit(s.att_eng, (sspan, self.kvspan(g, "V"), s.params_span), (s.aspan("a"),),
                 func=MatmulFunc.PV, rows=s.att_rows, rows_reg=s.att_reg, cols=hd,
                 k=bp.keys_max, k_reg=0 if dec else R_KEYS, n=1, m=1, wbits=8, a_buf=Buf.SCORE,
                 a_off=ss + ROW_FACTOR_BYTES, a_stride=bp.score_stride, arow=1, b_buf=Buf.KV,
                 b_off=self.kv_of[g]["V"], b_stride=hd, o_buf=Buf.ACT, o_off=ao + h * hd,
                 o_reg=s.r_sq, o_stride=arb, p_off=s.pb["pv"] + 12 * h, obits=8)  # fmt: skip

    def store_new_rows(self) -> None:
        """Decode: the new K (V) row of every head in one strided store, after the bucket's
        rows were loaded (the loads read the row stored here)."""
        s, lay, hd = self.s, self.s.layout, self.hd
        for which, src in (("K", self.kn), ("V", "v")):
            so, _ = s.act(src)
            rb, r_hbm = hd, R_LKVQ
            if which == "K" and s.rot:  # the K records (module doc)
                so, rb, r_hbm = so - ROW_FACTOR_BYTES, s.kb, R_LKVK
            hs = lay.head_stride(which)
            h0, hn = self.kvoff[which], self.kvoff[which] + (self.nkv - 1) * hs
            s.e.unit("ST", (s.aspan(src),),
                     ((HBM_KV, h0 + (s.lo - 1) * rb, hn + s.bp.keys_max * rb),),
                     kind=XferKind.KV, hbm=h0, hbm_reg=r_hbm, hbm_stride=hs,
                     buf=Buf.ACT, off=so, stride=rb, row_bytes=rb, rows=self.nkv)  # fmt: skip


def lower_step(
    cfg: ModelConfig,
    plan: CompressionPlan,
    hw: HardwarePreset,
    layout: HbmLayout,
    bp: BufferPlan,
    phase: str,
    nchunks: int,
    lo: int = 1,
    par: parallel.Board | None = None,
) -> list[Node]:
    """The node list of a template: ``nchunks`` chunks of ``bp.tt`` rows, then the head
    (decode: ``lo``..``bp.keys_max`` is the bucket's context range). ``hw`` is not read: the
    buffer plan ``bp`` holds what the lowering needs of the preset, but for the param buffer's
    room for a multi-board program's reduce records (``par``: :mod:`.parallel`)."""
    return _Lowering(cfg, plan, layout, bp, phase, lo, hw, par).program(nchunks)
