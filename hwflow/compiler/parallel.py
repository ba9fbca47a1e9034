"""One board's share of a multi-board program: what the lowering emits for the links.

A :class:`Board` names the parallel mode, the ring size and this board's place in it; the
compiler lowers each board's sub-model (:mod:`hwflow.compiler.partition` slices the model) with
it, and this module adds the board-to-board parts:

* **Tensor parallel** (Megatron-LM's split, as DFX runs GPT-2 over four U280): every board
  holds the whole residual stream and runs the norms, the adds and the head itself; q/k/v and
  gate/up are column-parallel (this board's heads and FFN columns), ``o`` and ``down`` are
  row-parallel: the engine writes the INT32 accumulators of this board's K slice (the board's
  tiles carry the identity requantization: multiplier 1, shift 0, no bias, guard 0, and the
  engine op reads its input without row factors, so ``linear_out`` passes the accumulator
  through), ``ALLRED`` sums them over the ring (the numerics contract's tensor-parallel
  reduction) and the SFU's ``requant`` applies the op's real requantization to the sum: the
  row stage with the input's row factors, the bias once, the channel stage. Its parameters are
  this module's *reduce record* per layer (:func:`reduce_record`) in the HBM region ``treq``,
  loaded into the param buffer after the final blob.
* **Pipeline parallel**: board ``b`` runs a contiguous run of layers; board 0 loads the step's
  input rows from HBM, every other board receives the residual rows of each chunk from the
  previous board (``RECV``), every board but the last sends its chunk's residual rows on
  (``SEND``), and only the last runs the head.

Register R15 holds the current layer's reduce record in HBM (the lowering's R3..R14 are taken).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from hwflow.compiler.layout import ALIGN, HbmLayout, final_blob
from hwflow.config import HardwarePreset, ModelConfig
from hwflow.errors import CapacityError
from hwflow.isa import Buf, Region, SfuFunc, XferKind
from hwflow.numerics import RESIDUAL_BITS

__all__ = [
    "PARALLEL_MODES",
    "ROW_PARALLEL",
    "R_LREQ",
    "Board",
    "add_reduce_region",
    "reduce_record",
    "reduce_record_bytes",
]

PARALLEL_MODES = ("tensor", "pipeline")
#: The row-parallel linears of tensor parallelism (reduction axis split over the boards).
ROW_PARALLEL = ("o", "down")
R_LREQ = 15  #: HBM address of the current layer's reduce record (tensor parallel)


@dataclass(frozen=True)
class Board:
    """Board ``index`` of a ring of ``boards`` running ``mode``; ``layers`` is the global
    range of layers it runs (pipeline: its stage; tensor: all)."""

    mode: Literal["tensor", "pipeline"]
    boards: int
    index: int
    layers: tuple[int, int]

    @property
    def tensor(self) -> bool:
        return self.mode == "tensor" and self.boards > 1

    @property
    def first(self) -> bool:
        return self.index == 0

    @property
    def last(self) -> bool:
        return self.index == self.boards - 1

    def info(self) -> dict[str, Any]:
        """The program header's record of this board (JSON-safe)."""
        return {"mode": self.mode, "boards": self.boards, "index": self.index,
                "layers": list(self.layers)}  # fmt: skip


def _al(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def reduce_record_bytes(cfg: ModelConfig) -> int:
    """Bytes of one row-parallel op's requantization record: INT32 guard, then per output
    channel (``hidden``) INT32 multipliers, shifts and biases."""
    return _al(4 + 12 * cfg.hidden)


def reduce_record(guard: int, mult: np.ndarray, shift: np.ndarray, bias: Any) -> np.ndarray:
    """The bytes of a reduce record (:func:`reduce_record_bytes`); ``bias`` None: zeros."""
    n = len(mult)
    b = np.zeros(n, np.int64) if bias is None else np.asarray(bias, np.int64)
    vals = np.concatenate([[guard], np.asarray(mult), np.asarray(shift), b])
    return np.asarray(vals, "<i4").view(np.uint8)


def param_place(cfg: ModelConfig, hw: HardwarePreset, p_final: int, tt: int) -> int:
    """Offset of the reduce records in the param buffer: after the final blob, followed by
    ``tt`` INT32 FFN row maxima (:func:`quant_ffn`); CapacityError when the param buffer
    cannot hold them."""
    at = _al(p_final + final_blob(cfg).size)
    need = at + len(ROW_PARALLEL) * reduce_record_bytes(cfg) + 4 * tt
    if need > hw.buffers.bytes("param"):
        raise CapacityError(
            f"tensor parallel: the layer parameters and the reduce records of "
            f"{list(ROW_PARALLEL)} and {tt} FFN row maxima need {need} bytes but "
            f"buffers.param_kib holds "
            f"{hw.buffers.bytes('param')} bytes"
        )
    return at


def add_reduce_region(layout: HbmLayout, cfg: ModelConfig, hw: HardwarePreset) -> HbmLayout:
    """The layout with the region ``treq`` (one pair of reduce records per layer) appended;
    CapacityError when HBM cannot hold it."""
    size = cfg.layers * len(ROW_PARALLEL) * reduce_record_bytes(cfg)
    at = layout.total
    cap = hw.hbm.capacity_bytes
    if at + size > cap:
        raise CapacityError(
            f"the board's share needs {at + size:,} bytes of HBM (with {size:,} of reduce "
            f"records) but preset {hw.name} has {cap:,} (hbm.capacity_gib)"
        )
    treq = Region("treq", at, size, "weights")
    return replace(layout, regions=(*layout.regions, treq), total=at + size)


# --------------------------------------------------------------------------------------------
# Emission (called by hwflow.compiler.lower with its _Lowering as ``s``)


def layer_run_start(s: Any, first: int) -> None:
    """Tensor parallel: R15 = the reduce records of layer ``first``."""
    if s.par is not None and s.par.tensor:
        rec = len(ROW_PARALLEL) * reduce_record_bytes(s.cfg)
        s.e.sys("SETI", rd=R_LREQ, imm=s.layout.region("treq").base + first * rec)


def layer_run_step(s: Any) -> None:
    """Tensor parallel: advance R15 to the next layer's reduce records."""
    if s.par is not None and s.par.tensor:
        s.e.sys("ADDI", rd=R_LREQ, ra=R_LREQ, imm=len(ROW_PARALLEL) * reduce_record_bytes(s.cfg))


def load_records(s: Any) -> None:
    """Tensor parallel: LD this layer's reduce records into the param buffer."""
    if s.par is None or not s.par.tensor:
        return
    n = len(ROW_PARALLEL) * reduce_record_bytes(s.cfg)
    at = param_place(s.cfg, s.hw, s.bp.p_final, s.tt)
    s.e.unit("LD", (), ((Buf.PARAM, at, at + n),), kind=XferKind.PARAMS, hbm=0,
             hbm_reg=R_LREQ, hbm_stride=n, buf=Buf.PARAM, off=at, stride=n, row_bytes=n,
             rows=1)  # fmt: skip


def row_parallel_fields(s: Any, op: str) -> dict[str, int]:
    """Engine-op field overrides of a linear: a row-parallel op under tensor parallelism
    reads its input without row factors (the identity row stage: the accumulator itself)."""
    if s.par is not None and s.par.tensor and op in ROW_PARALLEL:
        return {"arow": 0}
    return {}


def reduce(s: Any, op: str, acc: str, src: str) -> None:
    """Tensor parallel, after row-parallel ``op`` wrote its partial accumulators to ``acc``:
    ALLRED over the ring, then the SFU's requantization in place (row factors of ``src``)."""
    if s.par is None or not s.par.tensor:
        return
    cfg = s.cfg
    off, rb = s.act(acc)
    span = s.aspan(acc)
    s.e.unit("ALLRED", (span,), (span,), buf=Buf.ACT, off=off, stride=rb,
             row_bytes=RESIDUAL_BITS // 8 * cfg.hidden, rows=s.tt, rows_reg=s.rows_reg,
             peer=s.par.boards)  # fmt: skip
    base = param_place(cfg, s.hw, s.bp.p_final, s.tt)
    at = base + ROW_PARALLEL.index(op) * reduce_record_bytes(cfg)
    rec = (Buf.PARAM, at, at + reduce_record_bytes(cfg))
    rows = src in s.rowf
    s.sfu(SfuFunc.REQUANT, acc, acc, cfg.hidden, reads=(rec,), b=src if rows else None,
          p_off=at, aux=int(rows))  # fmt: skip


def chunk_input(s: Any) -> bool:
    """Pipeline, every board but the first: RECV the chunk's residual rows from the previous
    board instead of loading the step's input (returns whether it did)."""
    if s.par is None or s.par.mode != "pipeline" or s.par.first:
        return False
    xrow = s.xrow
    s.e.unit("RECV", (), ((Buf.ACT, 0, s.tt * xrow),), buf=Buf.ACT, off=0, stride=xrow,
             row_bytes=xrow, rows=s.tt, rows_reg=s.rows_reg, peer=s.par.index - 1)  # fmt: skip
    return True


def chunk_output(s: Any) -> None:
    """Pipeline, every board but the last: SEND the chunk's residual rows to the next."""
    if s.par is None or s.par.mode != "pipeline" or s.par.last:
        return
    xrow = s.xrow
    s.e.unit("SEND", ((Buf.ACT, 0, s.tt * xrow),), (), buf=Buf.ACT, off=0, stride=xrow,
             row_bytes=xrow, rows=s.tt, rows_reg=s.rows_reg, peer=s.par.index + 1)  # fmt: skip


def runs_head(s: Any) -> bool:
    """Whether this board runs the final norm and the head (pipeline: the last only)."""
    return s.par is None or s.par.mode != "pipeline" or s.par.last


def quant_ffn(s: Any, a: str, b: str | None, dst: str, cols: int) -> bool:
    """Tensor parallel: the FFN activation ``dst`` (the gated product ``a * b``, or OPT's
    ``relu(a)`` with ``b`` None) quantized per row with the row maximum over every board's
    columns: ROWMAX into ``dst``'s row-factor slots, ALLRED (maximum) of the slots, QROWS.
    Returns whether it emitted them (else the lowering emits the one-board MUL / RELUQ)."""
    if s.par is None or not s.par.tensor:
        return False
    aux = int(b is None)
    at = param_place(s.cfg, s.hw, s.bp.p_final, s.tt) + len(ROW_PARALLEL) * reduce_record_bytes(
        s.cfg
    )
    span = (Buf.PARAM, at, at + 4 * s.tt)
    s.sfu(SfuFunc.ROWMAX, a, (Buf.PARAM, at, 4, 0), cols, writes=(span,), b=b, aux=aux)
    s.e.unit("ALLRED", (span,), (span,), buf=Buf.PARAM, off=at, stride=4, row_bytes=4,
             rows=s.tt, rows_reg=s.rows_reg, peer=s.par.boards, red=1)  # fmt: skip
    s.sfu(SfuFunc.QROWS, a, dst, cols, b=b, aux=aux, p_off=at, reads=(span,))
    return True
