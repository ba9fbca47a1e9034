"""Batched decode: one decode step of up to B sequences, each with its own KV cache and position.

Why it pays. At batch 1 a decode step streams every weight from HBM once for one token, and the
engines wait for HBM (FlightLLM's regime). With B sequences, every weight beat that enters an
engine serves all B rows: the step still streams each weight once, so the weight bytes per
generated token fall as 1/B, while the KV cache (one per sequence) and the engines' work grow
with B. Decode moves from HBM-bound towards compute-bound (:func:`compute_bound_batch`).

Where the rows go (:func:`batch_engine`). The decode linears and the LM head become thin
matrix-matrix products ``[B, k] @ W^T``: they run on the engine that finishes them in fewer
cycles at B rows by :func:`hwflow.costs.matmul_cost`, the one definition of an engine's cost.
The matrix-matrix engine's ``rows`` token lanes share each weight beat (``dual_int8``: two
INT8 tokens per DSP), so on every shipped preset it takes ceil(B / rows) passes per row group
where the matrix-vector engine, one lane, streams the B rows through its chains one after the
other (B passes): the MM engine wins from B = 2 on, and at B = 1 the two tie and decode keeps
the MV engine. Attention stays per sequence (one query row against that sequence's own K and
V: a matrix-vector op, no weight beat to share) on the MV engine. The sequences' attention
runs one after another (a barrier closes each iteration of the sequence loop), so in a step
the two engines mostly take turns; running a batch's linears on both at once is not done.

Template (one per decode bucket, :func:`hwflow.compiler.compile_model` with ``batch``). The
step's ``LEN`` is the number of sequences ``b <= B`` (row i is KV-cache slot i); each
sequence's ``POS`` is in the runtime's context table, read through ``R15 = SEQ``
(:mod:`hwflow.isa`, ISA v4). The bucket is the longest context's; every sequence's attention
runs at its own length: the prefill path of :mod:`.lower` with a one-row chunk (past rows
loaded up to POS, the new K/V row stored and moved on chip, scores, softmax and P x V over
POS + 1 keys), all extents clamped by registers, so one template serves any mix of lengths
and any b. The row-wise ops (norms, linears, residual adds, the head) take the b rows at once.
Registers (besides those of :mod:`.lower`)::

    R3  ROWS  min(LEN, B): the sequences of this step
    R4  QPOS  POS of sequence SEQ (= R2)        R5 KEYS  QPOS + 1      R6 QOFF  QPOS * head_dim
    R8  LKV   the layer's KV base of slot 0     R9 LKVQ  LKVS + QOFF (where the new row goes)
    R10 LKVS  LKV + SEQ * kv_seq_bytes          R11 ACT  ROWS - SEQ: > 0 iff the slot is
              active (every per-sequence extent is one row, clamped by it to 0 or 1)
    R12 ROFF  QPOS * rope row bytes             R13 SQ   SEQ * q row bytes   R14 SK  SEQ * kv row bytes
    R15 SEQ   the sequence whose attention runs (the loop walks 0 .. B-1)

The sequence loop runs B times whatever b is (a loop count is static); for an idle slot
(SEQ >= b) every extent is 0, so it costs its instructions' issue and synchronisation only.
"""

from __future__ import annotations

from hwflow.compiler.layout import HbmLayout, linear_out_bits, slot_factors
from hwflow.compiler.lower import (
    R_KEYS,
    R_LKV,
    R_LKVQ,
    R_LW,
    R_QOFF,
    R_QPOS,
    R_ROFF,
    R_ROWS,
    BufferPlan,
    Node,
    _Attention,
    _Lowering,
    _Tiles,
    _weight_operand,
)
from hwflow.config import CompressionPlan, HardwarePreset, ModelConfig
from hwflow.costs import effective_nm, matmul_cost
from hwflow.errors import ConfigError
from hwflow.isa import REG_POS, REG_SEQ, Buf, MatmulFunc, SfuFunc, XferKind, spec

__all__ = ["RTL_NO_BATCH", "batch_engine", "check_batch", "lower_batched_decode"]

#: Why the RTL machine runs batch-1 programs only (hwflow cosim and the machine runner say it).
RTL_NO_BATCH = (
    "the RTL SYS dispatcher has no context table yet (ISA v4: R2 reads CTX[R15]), so the "
    "machine runs batch-1 programs only; check batched programs with hwflow check --batch"
)

R_LKVS, R_ACT, R_SQ, R_SK = 10, 11, 13, 14


def check_batch(batch: int, what: str = "--batch") -> int:
    """``batch`` if it is a usable batch size (1 .. the LOOP count field's maximum), else a
    ConfigError naming ``what`` was bad and what is allowed."""
    hi = (1 << spec("LOOP").index["count"].bits) - 1
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= hi:
        raise ConfigError(f"{what} {batch!r}: a batch is 1..{hi} sequences")
    return batch


def engine_beats(
    cfg: ModelConfig, plan: CompressionPlan, hw: HardwarePreset, engine: str, batch: int
) -> int:
    """Engine cycles (:func:`hwflow.costs.matmul_cost` beats) of one layer's linears for
    ``batch`` token rows on ``engine`` ("MM": the preset's ``mpe``, "MV": its ``mv``)."""
    eng = hw.mpe if engine == "MM" else hw.mv
    total = 0
    for (li, op), q in plan.resolve(cfg).items():
        if li != 0:
            continue
        n, m = effective_nm(hw, q.n, q.m)
        out, k = cfg.linear_shape(op)
        total += matmul_cost(eng, m, batch, out, k, n, q.group).beats
    return total


def batch_engine(cfg: ModelConfig, plan: CompressionPlan, hw: HardwarePreset, batch: int) -> str:
    """The engine of a batch's linears and head: the one whose :func:`engine_beats` at
    ``batch`` rows is lower; the MV engine (decode's) on a tie (module doc)."""
    mm = engine_beats(cfg, plan, hw, "MM", batch)
    mv = engine_beats(cfg, plan, hw, "MV", batch)
    return "MM" if mm < mv else "MV"


class _BatchLowering(_Lowering):
    """The batched decode step (module doc): row-wise ops over the step's sequences, then per
    layer a loop over the sequences for RoPE and attention."""

    def __init__(
        self,
        cfg: ModelConfig,
        plan: CompressionPlan,
        layout: HbmLayout,
        bp: BufferPlan,
        lo: int,
        engine: str,
    ) -> None:
        super().__init__(cfg, plan, layout, bp, "decode", lo)
        self.dec = False  # attention on the clamped path: every sequence at its own length
        self.eng, self.att_eng = engine, "MV"
        self.att_rows, self.att_reg = 1, R_ACT
        self.r_lkv, self.r_sq, self.r_sk = R_LKVS, R_SQ, R_SK
        self.slot_kv = False  # LKV is slot 0's layer base; the sequence loop adds the slot's
        self.batch = bp.tt
        self.qd = cfg.heads * cfg.head_dim
        self.kd = cfg.kv_heads * cfg.head_dim
        if layout.batch < self.batch:
            raise ConfigError(f"layout holds {layout.batch} KV caches, the batch is {self.batch}")

    def program(self, nchunks: int = 1) -> list[Node]:
        """ROWS, the sequences' input rows, every layer run, the head of every row."""
        e, lay, tt, xrow = self.e, self.layout, self.tt, self.xrow
        e.sys("MINI", rd=R_ROWS, ra=1, imm=tt)
        e.unit("LD", (), ((Buf.ACT, 0, tt * xrow),), kind=XferKind.ACT,
               hbm=lay.region("input").base, hbm_stride=xrow, buf=Buf.ACT, off=0, stride=xrow,
               row_bytes=xrow, rows=tt, rows_reg=R_ROWS)  # fmt: skip
        for run in lay.runs:
            self.layer_run(*run)
        self.head()
        e.barrier()
        e.sys("END")
        return e.nodes

    def layer(self, li: int) -> None:
        """Layer ``li``: norm and q/k/v of every row, the sequence loop, the rest row-wise."""
        e, pb, d = self.e, self.pb, self.cfg.hidden
        tiles = _Tiles(e, self.bp, list(self.layout.tiles[li]), R_LW)
        e.unit("LD", (), (self.params_span,), kind=XferKind.PARAMS, hbm=0, hbm_reg=R_LW,
               hbm_stride=pb.size, buf=Buf.PARAM, off=0, stride=pb.size, row_bytes=pb.size,
               rows=1)  # fmt: skip
        tiles.load_upto(0)
        self.norm("X", "h1", pb["norm1"], reads=(self.params_span,))
        for op in ("q", "k", "v"):
            self.linear(tiles, op, "h1", op)
        self.sequences()
        self.linear(tiles, "o", "a", "o")
        self.sfu(SfuFunc.ADD, "X", "X", d, b="o")
        self.norm("X", "h2", pb["norm2"], reads=(self.params_span,))
        self.mlp(tiles)
        self.sfu(SfuFunc.ADD, "X", "X", d, b="d")

    def sequences(self) -> None:
        """The loop over the B slots: the sequence's registers, RoPE of its q/k row at its
        position, its attention over its own KV cache."""
        e = self.e
        e.sys("SETI", rd=REG_SEQ, imm=0)
        e.barrier()
        e.sys("LOOP", count=self.batch)
        e.sys("ADD", rd=R_QPOS, ra=REG_POS, rb=0)
        e.sys("ADDI", rd=R_KEYS, ra=R_QPOS, imm=1)
        e.sys("MULI", rd=R_QOFF, ra=R_QPOS, imm=self.cfg.head_dim)
        # LKVS = LKV + SEQ * kv_seq_bytes, in two factors (MULI's immediate is 24 bits)
        a, b = slot_factors(self.layout.kv_seq_bytes)
        e.sys("MULI", rd=R_LKVS, ra=REG_SEQ, imm=a)
        e.sys("MULI", rd=R_LKVS, ra=R_LKVS, imm=b)
        e.sys("ADD", rd=R_LKVS, ra=R_LKVS, rb=R_LKV)
        e.sys("ADD", rd=R_LKVQ, ra=R_LKVS, rb=R_QOFF)
        e.sys("SUB", rd=R_ACT, ra=R_ROWS, rb=REG_SEQ)
        e.sys("MULI", rd=R_SQ, ra=REG_SEQ, imm=self.qd)
        e.sys("MULI", rd=R_SK, ra=REG_SEQ, imm=self.kd)
        qn, kn = self.rotate() if self.rope else ("q", "k")
        _Attention(self, qn, kn).emit()
        e.sys("ADDI", rd=REG_SEQ, ra=REG_SEQ, imm=1)
        e.barrier()
        e.sys("ENDLOOP")

    def rotate(self) -> tuple[str, str]:
        """RoPE of the sequence's q and k rows with the cos/sin row of its position (one row
        loaded from the RoPE table at ROFF)."""
        e, lay, hd, bp = self.e, self.layout, self.cfg.head_dim, self.bp
        e.sys("MULI", rd=R_ROFF, ra=R_QPOS, imm=lay.rope_row)
        e.unit("LD", (), (self.rope_span,), kind=XferKind.ROPE, hbm=lay.region("rope").base,
               hbm_reg=R_ROFF, hbm_stride=lay.rope_row, buf=Buf.PARAM, off=bp.p_rope,
               stride=lay.rope_row, row_bytes=lay.rope_row, rows=1, rows_reg=R_ACT)  # fmt: skip
        for src, dst, n, r in (("q", "qr", self.cfg.heads, R_SQ),
                               ("k", "kr", self.cfg.kv_heads, R_SK)):  # fmt: skip
            so, srb = self.act(src)
            do, drb = self.act(dst)
            self.sfu(SfuFunc.ROPE, (Buf.ACT, so, srb, r), (Buf.ACT, do, drb, r), n * hd,
                     reads=(self.rope_span, self.aspan(src)), writes=(self.aspan(dst),),
                     b=(Buf.PARAM, bp.p_rope, 2 * hd, 0), aux=hd, qpos_reg=R_QPOS, rows=1,
                     rows_reg=R_ACT)  # fmt: skip
        return "qr", "kr"

    def head(self) -> None:
        """Final norm and LM head of every sequence's row; each head tile's logit columns of
        the b rows go to HBM as they come (two tiles' worth on chip, as the weight slots)."""
        e, bp, fb, lay, tt = self.e, self.bp, self.fb, self.layout, self.tt
        e.sys("SETI", rd=R_LW, imm=lay.region("final").base)
        e.unit("LD", (), (self.final_span,), kind=XferKind.PARAMS, hbm=0, hbm_reg=R_LW,
               hbm_stride=fb.size, buf=Buf.PARAM, off=bp.p_final, stride=fb.size,
               row_bytes=fb.size, rows=1)  # fmt: skip
        hf_off, hf_rb = self.act("hf")
        self.norm("X", "hf", bp.p_final + fb["norm"], reads=(self.final_span,))
        tiles = _Tiles(e, bp, [lay.head], R_LW)
        lg, lrb = self.act("logits")  # row stride: the widest tile's columns
        hbits = linear_out_bits("head")
        vrow = hbits // 8 * self.cfg.vocab  # a logit row in HBM
        for j, (ts, r0, r, _) in enumerate(tiles.items):
            tiles.prefetch(j)
            at = lg + (j % 2) * tt * lrb
            lspan = (Buf.ACT, at, at + tt * lrb)
            e.unit(self.eng, (self.aspan("hf"), tiles.slot_span(j), self.final_span), (lspan,),
                   func=MatmulFunc.HEAD, rows=tt, rows_reg=R_ROWS, cols=r, a_buf=Buf.ACT,
                   a_off=hf_off, a_stride=hf_rb, arow=1, **_weight_operand(ts, tiles.slot(j)),
                   o_buf=Buf.ACT, o_off=at, o_stride=lrb,
                   p_off=bp.p_final + fb["head.guard"], obits=hbits)  # fmt: skip
            e.unit("ST", (lspan,), (), kind=XferKind.LOGITS,
                   hbm=lay.region("logits").base + hbits // 8 * r0, hbm_stride=vrow,
                   buf=Buf.ACT, off=at, stride=lrb, row_bytes=hbits // 8 * r, rows=tt,
                   rows_reg=R_ROWS)  # fmt: skip


def lower_batched_decode(
    cfg: ModelConfig,
    plan: CompressionPlan,
    layout: HbmLayout,
    bp: BufferPlan,
    lo: int,
    engine: str,
) -> list[Node]:
    """The node list of a batched decode template for ``bp.tt`` sequences (module doc)."""
    return _BatchLowering(cfg, plan, layout, bp, lo, engine).program()
