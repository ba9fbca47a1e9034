"""Multi-board systems: split a model over a ring of boards and compile one program per board.

``--boards N --parallel tensor|pipeline`` (see :mod:`hwflow.compiler.parallel` for what each
board's program does on the links):

* **tensor**: board ``b`` holds heads ``[b H/N, (b+1) H/N)``, KV heads ``[b KV/N, ...)`` (so N
  must divide both: a KV head is never split, and GQA groups stay on one board) and FFN columns
  ``[b F/N, ...)`` (N divides F); the row-parallel ``o``/``down`` split their reduction axis at
  those boundaries, which must be whole sparsity blocks and weight groups, and their full
  accumulator must fit INT32 (:func:`hwflow.numerics.partial_bound`) for the all-reduce to be
  exact. The embedding, norms and the head are replicated.
* **pipeline**: board ``b`` runs layers ``[L b / N, L (b+1) / N)`` (balanced, the first boards
  taking one more when N does not divide L); N <= L.

Each board's sub-model is an ordinary :class:`~hwflow.config.ModelConfig` (fewer heads, FFN
columns or layers) compiled by :func:`hwflow.compiler.compile_model` with its
:class:`~hwflow.compiler.parallel.Board`; its weights are the single-board quantized model
sliced (:func:`shard_model`), never re-quantized, which is what makes the system bit-exact.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from hwflow import numerics as nx
from hwflow.compiler import Compiled, compile_model
from hwflow.compiler.layout import build_hbm_image
from hwflow.compiler.parallel import (
    PARALLEL_MODES,
    ROW_PARALLEL,
    Board,
    reduce_record,
    reduce_record_bytes,
)
from hwflow.compress import QLinear, QuantizedModel
from hwflow.config import CompressionPlan, HardwarePreset, LinearQuant, ModelConfig
from hwflow.costs import effective_nm
from hwflow.errors import CapacityError, ConfigError, UnsupportedError

__all__ = ["SystemCompiled", "board_plan", "check_system", "compile_system", "shard_model"]


@dataclass(frozen=True)
class SystemCompiled:
    """One compiled program per board, with each board's sub-model and place."""

    boards: tuple[Compiled, ...]
    cfgs: tuple[ModelConfig, ...]
    pars: tuple[Board, ...]
    seconds: float


def check_system(boards: int, mode: str, hw: HardwarePreset) -> None:
    """ConfigError for a board count or parallel mode that no model could run on ``hw``."""
    if mode not in PARALLEL_MODES:
        raise ConfigError(f"--parallel {mode!r} is not a parallel mode (allowed: tensor, pipeline)")
    if boards < 1:
        raise ConfigError(f"--boards {boards}: a system has at least 1 board")
    if boards == 1:
        return
    if hw.system is None:
        raise ConfigError(
            f"--boards {boards}: preset {hw.name} has no system: section (board links), so it "
            "runs on 1 board only"
        )
    if boards > hw.system.max_boards:
        raise ConfigError(
            f"--boards {boards}: preset {hw.name}'s system describes rings of at most "
            f"{hw.system.max_boards} boards (system.max_boards)"
        )


def board_plan(cfg: ModelConfig, boards: int, mode: str) -> list[tuple[ModelConfig, Board]]:
    """Each board's sub-model and place; UnsupportedError naming the numbers when ``boards``
    does not split the model (``mode`` and ``boards`` already checked)."""
    if mode == "pipeline":
        if boards > cfg.layers:
            raise UnsupportedError(
                f"--boards {boards} --parallel pipeline: {cfg.name} has {cfg.layers} layers, "
                f"fewer than the boards (allowed: 1..{cfg.layers})"
            )
        cuts = [cfg.layers * b // boards for b in range(boards + 1)]
        return [
            (cfg.model_copy(update={"layers": cuts[b + 1] - cuts[b]}),
             Board("pipeline", boards, b, (cuts[b], cuts[b + 1])))
            for b in range(boards)
        ]  # fmt: skip
    for what, n in (("attention heads", cfg.heads), ("KV heads", cfg.kv_heads),
                    ("FFN columns (intermediate_size)", cfg.intermediate)):  # fmt: skip
        if n % boards:
            allowed = [d for d in range(1, min(cfg.kv_heads, 64) + 1) if cfg.kv_heads % d == 0
                       and cfg.heads % d == 0 and cfg.intermediate % d == 0]  # fmt: skip
            raise UnsupportedError(
                f"--boards {boards} --parallel tensor: {cfg.name} has {n} {what}, not a "
                f"multiple of {boards} (board counts that split it: {allowed})"
            )
    sub = cfg.model_copy(
        update={
            "heads": cfg.heads // boards,
            "kv_heads": cfg.kv_heads // boards,
            "intermediate": cfg.intermediate // boards,
        }
    )
    return [(sub, Board("tensor", boards, b, (0, cfg.layers))) for b in range(boards)]


def _check_split(
    cfg: ModelConfig, sub: ModelConfig, quant: dict, hw: HardwarePreset, boards: int
) -> None:
    """Tensor parallel: every row-parallel op's K slice is whole sparsity blocks and weight
    groups, and its full accumulator fits INT32 (numerics: tensor-parallel reduction)."""
    for (li, op), q in quant.items():
        if op not in ROW_PARALLEL:
            continue
        k, ks = cfg.linear_shape(op)[1], sub.linear_shape(op)[1]
        block = effective_nm(hw, q.n, q.m)[1]
        for unit, what in ((block, "activation block"), (q.group, "weight group")):
            if unit and ks % unit:
                raise UnsupportedError(
                    f"--boards {boards} --parallel tensor: L{li}.{op}'s reduction of {k} splits "
                    f"into slices of {ks}, not a multiple of its {unit}-wide {what}"
                )
        bound = nx.partial_bound(k, q.bits, q.group)
        if bound >= 2**31:
            raise UnsupportedError(
                f"--boards {boards} --parallel tensor: L{li}.{op}'s accumulator (K = {k}, "
                f"INT{q.bits} weights{', groups of ' + str(q.group) if q.group else ''}) may "
                f"reach {bound:,}, beyond the INT32 partial sums the all-reduce adds "
                f"(< {2**31:,}); use a plan without weight groups for this op"
            )


def _board_quant(
    plan: CompressionPlan, cfg: ModelConfig, sub: ModelConfig, par: Board
) -> dict[tuple[int, str], LinearQuant]:
    """The board's layers' compression, by local layer index (the plan's rules name global
    layers, so resolve them on the whole model)."""
    full = plan.resolve(cfg)
    l0 = par.layers[0]
    return {(li, op): full[(l0 + li, op)] for li in range(sub.layers) for op in sub.linear_ops}


def compile_system(
    cfg: ModelConfig,
    plan: CompressionPlan,
    hw: HardwarePreset,
    max_len: int | None,
    boards: int,
    mode: str,
) -> SystemCompiled:
    """Compile one program per board (see the module doc); CapacityError names the board,
    the resource, what it needs and what it has."""
    t0 = time.perf_counter()
    check_system(boards, mode, hw)
    if boards == 1:
        comp = compile_model(cfg, plan, hw, max_len)
        return SystemCompiled((comp,), (cfg,), (Board(mode, 1, 0, (0, cfg.layers)),),
                              time.perf_counter() - t0)  # fmt: skip  # type: ignore[arg-type]
    shares = board_plan(cfg, boards, mode)
    if mode == "tensor":
        _check_split(cfg, shares[0][0], plan.resolve(cfg), hw, boards)
    out = []
    for sub, par in shares:
        if mode == "tensor" and par.index:  # every tensor-parallel board is the same shape
            prog = out[0].program
            header = {**prog.header, "board": par.info()}
            out.append(replace(out[0], program=replace(prog, header=header)))
            continue
        quant = _board_quant(plan, cfg, sub, par)
        try:
            out.append(compile_model(sub, plan, hw, max_len, par=par, quant=quant))
        except CapacityError as e:
            raise CapacityError(f"{e} (--boards {boards} --parallel {mode})") from None
    return SystemCompiled(tuple(out), tuple(s for s, _ in shares), tuple(p for _, p in shares),
                          time.perf_counter() - t0)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Weights


def _slice_linear(ql: QLinear, rows: slice | None, cols: tuple[int, int] | None) -> QLinear:
    """``ql`` restricted to output rows ``rows`` (column-parallel) or to reduction columns
    ``cols`` = [k0, k1) (row-parallel: identity requantization, the real one moves to the
    reduce record)."""
    if rows is not None:
        return replace(
            ql,
            codes=ql.codes[rows], values=ql.values[rows],
            indices=None if ql.indices is None else ql.indices[rows],
            bias=None if ql.bias is None else ql.bias[rows], mult=ql.mult[rows],
            shift=ql.shift[rows], weight_scale=ql.weight_scale[rows],
            gmult=None if ql.gmult is None else ql.gmult[rows],
        )  # fmt: skip
    if cols is None:  # replicated (the head)
        return ql
    k0, k1 = cols
    q = ql.quant
    n, m = (q.n, q.m) if not q.dense else (1, 1)
    v0, v1 = k0 * n // m, k1 * n // m
    out = ql.codes.shape[0]
    g = q.group
    return replace(
        ql,
        codes=ql.codes[:, k0:k1], values=ql.values[:, v0:v1],
        indices=None if ql.indices is None else ql.indices[:, v0:v1],
        bias=None if ql.bias is None else np.zeros(out, np.int64),
        mult=np.ones(out, np.int64), shift=np.zeros(out, np.int64), guard=0,
        gmult=None if ql.gmult is None else ql.gmult[:, k0 // g : k1 // g],
    )  # fmt: skip


def _rekey(d: dict[str, Any], l0: int, l1: int) -> dict[str, Any]:
    """Entries of layers [l0, l1) renumbered from 0; the others (head, final norm) kept."""
    out = {}
    for key, v in d.items():
        if key.startswith("L") and "." in key and key[1 : key.index(".")].isdigit():
            li = int(key[1 : key.index(".")])
            if l0 <= li < l1:
                out[f"L{li - l0}{key[key.index('.') :]}"] = v
        else:
            out[key] = v
    return out


def _tensor_share(qm: QuantizedModel, sub: ModelConfig, par: Board) -> QuantizedModel:
    cfg, b = qm.cfg, par.index
    hd = cfg.head_dim
    hq, hk, f = sub.heads, sub.kv_heads, sub.intermediate
    rows = {"q": slice(b * hq * hd, (b + 1) * hq * hd), "k": slice(b * hk * hd, (b + 1) * hk * hd),
            "v": slice(b * hk * hd, (b + 1) * hk * hd), "gate": slice(b * f, (b + 1) * f),
            "up": slice(b * f, (b + 1) * f)}  # fmt: skip
    cols = {"o": (b * hq * hd, (b + 1) * hq * hd), "down": (b * f, (b + 1) * f)}
    linears = {}
    for name, ql in qm.linears.items():
        op = name.split(".")[-1] if name != "head" else "head"
        linears[name] = _slice_linear(ql, rows.get(op), cols.get(op))
    params = dict(qm.params)
    heads = slice(b * hq, (b + 1) * hq)
    for li in range(cfg.layers):
        for key in ("scores", "pv"):
            p = dict(params[f"L{li}.{key}"])
            for k in ("mult", "shift"):
                p[k] = np.asarray(p[k])[heads]
            params[f"L{li}.{key}"] = p
    return replace(qm, cfg=sub, linears=linears, params=params)


def shard_model(qm: QuantizedModel, sub: ModelConfig, par: Board) -> QuantizedModel:
    """Board ``par``'s share of the quantized model ``qm`` (sliced, never re-quantized)."""
    if par.boards == 1:
        return qm
    if par.mode == "tensor":
        return _tensor_share(qm, sub, par)
    l0, l1 = par.layers
    return replace(qm, cfg=sub, linears=_rekey(qm.linears, l0, l1),
                   params=_rekey(qm.params, l0, l1))  # fmt: skip


def board_image(comp: Compiled, qm: QuantizedModel, share: QuantizedModel, par: Board):
    """Board ``par``'s HBM image: its share's weights, plus (tensor parallel) the reduce
    records of every layer's row-parallel ops, from the whole model ``qm``."""
    img = build_hbm_image(comp.layout, share)
    if par.tensor:
        base = comp.layout.region("treq").base
        rec = reduce_record_bytes(share.cfg)
        for li in range(share.cfg.layers):
            for j, op in enumerate(ROW_PARALLEL):
                ql = qm.linears[f"L{li}.{op}"]
                data = reduce_record(ql.guard, ql.mult, ql.shift, ql.bias)
                at = base + (li * len(ROW_PARALLEL) + j) * rec
                img[at : at + data.size] = data
    return img
