"""Compression: float weights -> the integer model the accelerator runs.

Steps (all deterministic):

1. :func:`random_weights` makes seeded float weights of any config (hwflow never downloads
   weights; a user with real weights passes the same dict layout).
2. :func:`fold_norms` folds every normalisation's gain (and LayerNorm's bias) into the linear
   ops that consume it, so the accelerator's norms have unit gain (exact in real arithmetic).
3. Calibration: a float64 run of the folded model on seeded calibration tokens gives each
   activation tensor's scale, ``max|t| / 127`` (per tensor, symmetric).
4. Weights: magnitude N:M pruning along K, symmetric per-channel INT``bits`` quantization,
   the compressed values/indices and their packed bytes; biases to INT32 at the accumulator
   scale; per-channel requantization (mult, shift) from the scales.
5. Integer parameters of every non-linear op: normalisation and attention requantizers, the
   softmax exponential table, activation LUTs, residual-add multipliers, RoPE tables.

The arithmetic itself lives in :mod:`hwflow.numerics`; this module only chooses its constants.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hwflow import numerics as nx
from hwflow.config import CompressionPlan, LinearQuant, ModelConfig
from hwflow.model import attention_mask, step_graph
from hwflow.reference import KVCache, run_float

__all__ = ["QLinear", "QuantizedModel", "fold_norms", "quantize_model", "random_weights"]

CALIBRATION_SEED = 1  #: seed of the calibration token ids


def random_weights(cfg: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded float64 weights for ``cfg``, named ``L{l}.<op>.w|b``, ``L{l}.norm1.g|b``,
    ``embed``, ``pos`` (OPT), ``final.norm.g|b``, ``head.w``.

    Linear weights are N(0, 1/in); output projections are scaled by 1/sqrt(2 layers) (GPT-2
    style) to keep the residual stream bounded; norm gains are 1 + N(0, 0.1).
    """
    rng = np.random.default_rng(seed)
    w: dict[str, np.ndarray] = {"embed": rng.normal(0, 1.0, (cfg.vocab, cfg.hidden))}
    if cfg.positions == "learned":
        w["pos"] = rng.normal(0, 0.5, (cfg.max_positions + cfg.position_offset, cfg.hidden))
    depth = 1 / math.sqrt(2 * cfg.layers)

    def norm(name: str) -> None:
        w[name + ".g"] = 1 + rng.normal(0, 0.1, cfg.hidden)
        if cfg.norm == "layer":
            w[name + ".b"] = rng.normal(0, 0.1, cfg.hidden)

    for li in range(cfg.layers):
        norm(f"L{li}.norm1")
        norm(f"L{li}.norm2")
        for op in cfg.linear_ops:
            out_f, in_f = cfg.linear_shape(op)
            scale = (depth if op in ("o", "down") else 1.0) / math.sqrt(in_f)
            w[f"L{li}.{op}.w"] = rng.normal(0, scale, (out_f, in_f))
            if cfg.bias:
                w[f"L{li}.{op}.b"] = rng.normal(0, 0.02, out_f)
    norm("final.norm")
    w["head.w"] = (
        w["embed"]
        if cfg.tie_word_embeddings
        else rng.normal(0, 1 / math.sqrt(cfg.hidden), (cfg.vocab, cfg.hidden))
    )
    return w


_NORM_CONSUMERS = {"norm1": ("q", "k", "v"), "norm2": ("gate", "up")}


def fold_norms(cfg: ModelConfig, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Fold norm gains into the consuming linears' columns and LayerNorm biases into their
    biases: ``W(n*g + b) + c = (W diag g) n + (W b + c)``. Returns a new dict without ``*.g``/``*.b``
    of norms."""
    out = {
        k: v
        for k, v in weights.items()
        if not k.rsplit(".", 1)[0].endswith(("norm1", "norm2", "norm"))
    }

    def fold(norm: str, linear: str) -> None:
        g = weights.get(norm + ".g")
        b = weights.get(norm + ".b")
        w = weights[linear + ".w"]
        out[linear + ".w"] = w * g[None, :] if g is not None else w
        if b is not None:
            out[linear + ".b"] = weights.get(linear + ".b", 0.0) + w @ b

    for li in range(cfg.layers):
        for norm, consumers in _NORM_CONSUMERS.items():
            for op in consumers:
                if op in cfg.linear_ops:
                    fold(f"L{li}.{norm}", f"L{li}.{op}")
    fold("final.norm", "head")
    return out


@dataclass(frozen=True)
class QLinear:
    """One compressed linear op.

    ``codes`` is the dense INT``bits`` weight with zeros where pruned (what the reference
    multiplies); ``values``/``indices`` are the N:M-compressed form the hardware stores
    (for a dense op ``values`` is ``codes`` and ``indices`` is None). ``mult``/``shift``
    requantize each output channel; both are None for the head (raw logits).
    """

    name: str
    quant: LinearQuant
    codes: np.ndarray = field(repr=False)
    values: np.ndarray = field(repr=False)
    indices: np.ndarray | None = field(repr=False)
    bias: np.ndarray | None = field(repr=False)
    mult: np.ndarray | None = field(repr=False)
    shift: np.ndarray | None = field(repr=False)
    weight_scale: np.ndarray = field(repr=False)

    def packed(self) -> dict[str, np.ndarray]:
        """The bytes stored in HBM, row by row (each row padded to whole bytes)."""
        vals = np.concatenate([nx.pack_bits(r, self.quant.bits) for r in self.values])
        out = {"values": vals}
        if self.indices is not None:
            ib = int(math.log2(self.quant.m))
            out["indices"] = np.concatenate([nx.pack_bits(r, ib) for r in self.indices])
        return out


@dataclass(frozen=True)
class QuantizedModel:
    """Everything the accelerator needs to run ``cfg`` compressed by ``plan``.

    ``linears[op_name]``: :class:`QLinear`; ``params[op_name]``: integer constants of
    non-linear ops (see the module docstring); ``scales[tensor]``: the float scale of every
    INT8 tensor; ``rope_cos/rope_sin``: Q14 tables (LLaMA family, else empty).
    """

    cfg: ModelConfig
    plan: CompressionPlan
    linears: dict[str, QLinear] = field(repr=False)
    params: dict[str, dict[str, Any]] = field(repr=False)
    scales: dict[str, float] = field(repr=False)
    rope_cos: np.ndarray = field(repr=False)
    rope_sin: np.ndarray = field(repr=False)
    embed_table: np.ndarray = field(repr=False)
    pos_table: np.ndarray | None = field(repr=False)

    def embed(self, ids: np.ndarray, start: int) -> np.ndarray:
        """The program input: INT8 embeddings of ``ids`` at positions ``start...`` (host side)."""
        x = self.embed_table[np.asarray(ids)]
        if self.pos_table is not None:
            x = x + self.pos_table[start + self.cfg.position_offset + np.arange(len(ids))]
        return nx.saturate(np.rint(x / self.scales["x0"]), 8)

    def dequant_logits(self, acc: np.ndarray) -> np.ndarray:
        head = self.linears["head"]
        return acc * self.scales["hf"] * head.weight_scale[None, :]


def _scale(t: np.ndarray) -> float:
    m = float(np.abs(t).max())
    return m / 127 if m > 0 else 1.0


def quantize_model(
    cfg: ModelConfig, plan: CompressionPlan, weights: dict[str, np.ndarray], calib_tokens: int = 64
) -> QuantizedModel:
    """Compress ``weights`` of ``cfg`` by ``plan`` (see the module docstring for the steps)."""
    folded = fold_norms(cfg, weights)
    t = min(calib_tokens, cfg.max_positions)
    ids = np.random.default_rng(CALIBRATION_SEED).integers(cfg.vocab, size=t)
    graph = step_graph(cfg, plan, "prefill", t)
    x0 = folded["embed"][ids]
    if cfg.positions == "learned":
        x0 = x0 + folded["pos"][cfg.position_offset + np.arange(t)]
    mask = attention_mask(cfg, plan.attention, "prefill", t, 0)
    run = run_float(cfg, folded, graph, x0, KVCache.empty(cfg, np.float64, t), mask, all_rows=True)
    tensors = run.tensors
    scales = {name: _scale(v) for name, v in tensors.items() if name != "logits"}
    for name in list(scales):  # RoPE keeps its input's scale: cover both sides
        if name.endswith(".qr") or name.endswith(".kr"):
            base = name[:-1]
            scales[base] = scales[name] = max(scales[base], scales[name])
    for o in graph.ops:
        if o.kind == "softmax":
            scales[o.output] = 1 / 127  # probabilities 0..127

    linears: dict[str, QLinear] = {}
    params: dict[str, dict[str, Any]] = {}
    quant = plan.resolve(cfg)
    for op in graph.ops:
        if op.kind in ("linear", "head"):
            lq = quant[(op.layer, op.name.split(".")[1])] if op.kind == "linear" else plan.head()
            linears[op.name] = _quantize_linear(
                op.name,
                lq,
                folded,
                scales[op.inputs[0]],
                None if op.kind == "head" else scales[op.output],
            )
        elif op.kind == "norm":
            params[op.name] = _mult(2.0**-nx.NORM_FRAC / scales[op.output])
        elif op.kind == "scores":
            q = op.inputs[0]
            k_name = q.replace(".qr", ".kr").replace(".q", ".k")
            params[op.name] = _mult(
                scales[q] * scales[k_name] / math.sqrt(cfg.head_dim) / scales[op.output]
            )
        elif op.kind == "softmax":
            params[op.name] = {"table": nx.exp_table(scales[op.inputs[0]])}
        elif op.kind == "pv":
            v_name = f"L{op.layer}.v"
            params[op.name] = _mult(scales[v_name] / 127 / scales[op.output])
        elif op.kind == "add":
            params[op.name] = _add_mults(
                scales[op.inputs[0]] / scales[op.output], scales[op.inputs[1]] / scales[op.output]
            )
        elif op.kind == "lut":
            fn = (
                (lambda x: x / (1 + np.exp(-x)))
                if cfg.activation == "silu"
                else (lambda x: np.maximum(x, 0))
            )
            params[op.name] = {"lut": nx.lut_from_fn(fn, scales[op.inputs[0]], scales[op.output])}
        elif op.kind == "mul":
            a, b = op.inputs
            params[op.name] = _mult(scales[a] * scales[b] / scales[op.output])
    if cfg.positions == "rope":
        cos, sin = nx.rope_tables(cfg.max_positions, cfg.head_dim, cfg.rope_theta)
    else:
        cos = sin = np.zeros((0, 0), np.int64)
    return QuantizedModel(
        cfg, plan, linears, params, scales, cos, sin, folded["embed"], folded.get("pos")
    )


def _mult(real: float) -> dict[str, int]:
    m, s = nx.quant_multiplier(real)
    return {"mult": int(m), "shift": int(s)}


def _add_mults(ra: float, rb: float) -> dict[str, int]:
    """Two multipliers sharing one shift, the larger normalised to 15 bits."""
    _, shift = nx.quant_multiplier(max(ra, rb))
    return {
        "mult_a": round(ra * 2.0 ** int(shift)),
        "mult_b": round(rb * 2.0 ** int(shift)),
        "shift": int(shift),
    }


def _quantize_linear(
    name: str, lq: LinearQuant, w: dict[str, np.ndarray], s_in: float, s_out: float | None
) -> QLinear:
    wf = w[name + ".w"]
    mask = None if lq.dense else nx.nm_prune_mask(wf, lq.n, lq.m)
    codes, wscale = nx.quantize_weight(wf, lq.bits, mask)
    if lq.dense:
        values, indices = codes, None
    else:
        values, indices = nx.nm_compress(codes, mask, lq.n, lq.m)
    acc_scale = s_in * wscale
    bias = None
    if name + ".b" in w:
        bias = np.rint(w[name + ".b"] / acc_scale).astype(np.int64)
        bias = np.clip(bias, -(2**31), 2**31 - 1)
    mult = shift = None
    if s_out is not None:
        mult, shift = nx.quant_multiplier(acc_scale / s_out)
    return QLinear(name, lq, codes, values, indices, bias, mult, shift, wscale)
