"""Compression: float weights -> the integer model the accelerator runs.

Steps (all deterministic):

1. :func:`random_weights` makes seeded float weights of any config; a real checkpoint gives the
   same dict layout (:mod:`hwflow.checkpoint`).
2. :func:`fold_norm_biases` folds LayerNorm betas into the biases of the linears that consume
   the norm (exact in real arithmetic); the norm *gains* stay in the norm (INT16 per channel,
   applied before the per-token quantization: folding them into the weights would leave the
   massive-activation channels in the quantized rows).
3. Calibration: a float64 run of the model on calibration tokens (real text for a real
   checkpoint) gives the residual's binary point, the static scales (per head for q/k/v and the
   KV cache, per tensor for ``a``, gate/up and the logits) and each linear's row-stage guard.
   With the plan's ``method.smooth`` (SmoothQuant alpha) the norms' consumers (the head too) are smoothed
   (``1/s`` into the norm gain, ``s`` into the weights), and so are ``o``'s input (``1/s`` into
   v's rows) and ``down``'s (into up's rows); q and k are always balanced per
   channel (:func:`hwflow.smooth.qk_factors` into the q/k weights); then the run is repeated.
4. Weights: N:M pruning along K and symmetric per-channel INT``bits`` quantization by the
   plan's method (:mod:`hwflow.prune`, :mod:`hwflow.wquant`: magnitude/Wanda/SparseGPT, round to
   nearest/scale search/GPTQ, statistics of each linear's float input), the compressed
   values/indices and their packed bytes; biases to INT32 at the row stage's scale; per-channel
   requantization (mult, shift) of the channel stage. With a weight group (``group`` of the
   plan, per linear) the scales are per (row, group): integer group multipliers times a row
   unit (:func:`hwflow.wquant.quantize_grouped`), the unit taking the per-channel scale's place.
5. Integer parameters of every other op (norm gains and pre-shifts, score multipliers, SiLU
   index multiplier, RoPE tables).

The arithmetic itself lives in :mod:`hwflow.numerics`; this module only chooses its constants.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hwflow import numerics as nx
from hwflow.calib import Calibration
from hwflow.config import CompressionMethod, CompressionPlan, LinearQuant, ModelConfig
from hwflow.errors import UnsupportedError
from hwflow.model import attention_mask, step_graph
from hwflow.prune import prune
from hwflow.reference import KVCache, run_float
from hwflow.reference import _heads as split_heads
from hwflow.smooth import qk_factors, smooth_factors
from hwflow.wquant import quantize, quantize_grouped

__all__ = [
    "QLinear",
    "QuantizedModel",
    "check_keys",
    "fold_norm_biases",
    "quantize_model",
    "random_weights",
]

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


def fold_norm_biases(cfg: ModelConfig, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Fold LayerNorm betas into the consuming linears' biases, ``W(n*g + b) + c = W(n*g) +
    (W b + c)``; returns a new dict without the norms' ``*.b`` (gains ``*.g`` are kept)."""
    out = {k: v for k, v in weights.items() if not (k.endswith(".b") and _is_norm(k))}

    def fold(norm: str, linear: str) -> None:
        b = weights.get(norm + ".b")
        if b is not None:
            out[linear + ".b"] = weights.get(linear + ".b", 0.0) + weights[linear + ".w"] @ b

    for li in range(cfg.layers):
        for norm, consumers in _NORM_CONSUMERS.items():
            for op in consumers:
                if op in cfg.linear_ops:
                    fold(f"L{li}.{norm}", f"L{li}.{op}")
    fold("final.norm", "head")
    return out


def _smooth(
    cfg: ModelConfig, w: dict[str, np.ndarray], ten: dict[str, np.ndarray], alpha: float
) -> dict[str, np.ndarray]:
    """SmoothQuant (:mod:`hwflow.smooth`) wherever a factor folds for free: the inputs of the
    norms' consumers, the final norm's head included (``1/s`` into the norm's gain, applied on
    chip before the per-token quantization; ``s`` into the consuming linears' columns), the
    attention output read by ``o`` (:func:`_smooth_vo`) and the MLP product read by ``down``
    (:func:`_smooth_up_down`). Exact in real arithmetic; ``ten`` is one float run of ``w``
    (the sites do not change each other's inputs). The head's weight is its own array after
    :func:`fold_norm_biases` (a tied embedding keeps its values)."""
    out = dict(w)
    sites = [
        (
            f"L{li}.{norm}",
            f"L{li}.{'h1' if norm == 'norm1' else 'h2'}",
            [f"L{li}.{op}" for op in ops],
        )
        for li in range(cfg.layers)
        for norm, ops in _NORM_CONSUMERS.items()
    ]
    for norm, act, ops in [*sites, ("final.norm", "hf", ["head"])]:
        ops = [o for o in ops if o + ".w" in w]
        amax = np.abs(ten[act]).reshape(-1, cfg.hidden).max(axis=0)
        s = smooth_factors(amax, [w[o + ".w"] for o in ops], alpha)
        out[f"{norm}.g"] = w.get(f"{norm}.g", np.ones(cfg.hidden)) / s
        for o in ops:
            out[o + ".w"] = w[o + ".w"] * s[None, :]
    for li in range(cfg.layers):  # on top of the norms' factors (v and up read h1/h2)
        _smooth_vo(cfg, out, ten, alpha, li)
        _smooth_up_down(cfg, out, ten, alpha, li)
    return out


def _scale_rows(w: dict[str, np.ndarray], op: str, f: np.ndarray) -> None:
    """Linear ``op``'s output rows (and bias) times ``f``, in place in ``w``."""
    w[op + ".w"] = w[op + ".w"] * f[:, None]
    if op + ".b" in w:
        w[op + ".b"] = w[op + ".b"] * f


def _smooth_vo(
    cfg: ModelConfig,
    w: dict[str, np.ndarray],
    ten: dict[str, np.ndarray],
    alpha: float,
    li: int,
) -> None:
    """Smooth ``o``'s input, the attention output ``a = P V``: the probabilities mix tokens,
    not channels, so channel ``c`` of KV head ``g`` divided by ``s`` in ``v``'s rows divides
    channel ``c`` of every query head of ``g``'s group in ``a``; ``o``'s columns of those
    heads take ``s``. One ``s`` per KV-head channel (GQA: maxima over the group's heads).
    Updates ``w`` in place (new arrays, never the caller's)."""
    p, kvh, hd = f"L{li}.", cfg.kv_heads, cfg.head_dim
    rep = cfg.heads // kvh
    amax = np.abs(ten[p + "a"]).reshape(-1, kvh, rep, hd).max(axis=(0, 2))
    ow = w[p + "o.w"].reshape(-1, kvh, rep, hd)
    s = np.stack([smooth_factors(amax[g], [ow[:, g].reshape(-1, hd)], alpha) for g in range(kvh)])
    _scale_rows(w, p + "v", 1.0 / s.ravel())
    w[p + "o.w"] = w[p + "o.w"] * np.repeat(s, rep, axis=0).ravel()[None, :]


def _smooth_up_down(
    cfg: ModelConfig,
    w: dict[str, np.ndarray],
    ten: dict[str, np.ndarray],
    alpha: float,
    li: int,
) -> None:
    """Smooth ``down``'s input: ``up``'s rows divided by ``s`` divide the product
    ``silu(gate) * up`` (or ReLU's output: ``relu(u / s) = relu(u) / s`` for ``s > 0``) channel
    by channel; ``down``'s columns take ``s``. Updates ``w`` in place (new arrays)."""
    p = f"L{li}."
    act = ten[p + ("mm" if cfg.gated_mlp else "ua")]
    amax = np.abs(act).reshape(-1, cfg.intermediate).max(axis=0)
    s = smooth_factors(amax, [w[p + "down.w"]], alpha)
    _scale_rows(w, p + "up", 1.0 / s)
    w[p + "down.w"] = w[p + "down.w"] * s[None, :]


def _is_norm(key: str) -> bool:
    return key.rsplit(".", 1)[0].endswith(("norm1", "norm2", "norm"))


@dataclass(frozen=True)
class QLinear:
    """One compressed linear op.

    ``codes`` is the dense INT``bits`` weight with zeros where pruned (what the reference
    multiplies); ``values``/``indices`` are the N:M-compressed form the hardware stores (for a
    dense op ``values`` is ``codes`` and ``indices`` is None). ``guard`` is the row stage's
    ``G``; ``bias`` is INT32 at ``y``'s scale;
    ``mult``/``shift`` requantize each output channel to ``out_bits``. Inputs without row
    factors use the constant factor 1 (``m = 2**14, e = 14``), so every linear has a row stage.
    """

    name: str
    quant: LinearQuant
    codes: np.ndarray = field(repr=False)
    values: np.ndarray = field(repr=False)
    indices: np.ndarray | None = field(repr=False)
    bias: np.ndarray | None = field(repr=False)
    mult: np.ndarray = field(repr=False)
    shift: np.ndarray = field(repr=False)
    weight_scale: np.ndarray = field(repr=False)
    out_bits: int = 8
    guard: int = 0
    #: integer group multipliers [out, K/group] (``quant.group`` set), else None; then
    #: ``weight_scale`` is each row's unit (numerics, weights)
    gmult: np.ndarray | None = field(default=None, repr=False)

    def packed(self) -> dict[str, np.ndarray]:
        """The bytes stored in HBM, row by row (each row padded to whole bytes)."""
        vals = np.concatenate([nx.pack_bits(r, self.quant.bits) for r in self.values])
        out = {"values": vals}
        if self.indices is not None:
            ib = int(math.log2(self.quant.m))
            out["indices"] = np.concatenate([nx.pack_bits(r, ib) for r in self.indices])
        if self.gmult is not None:
            out["scales"] = np.asarray(self.gmult, np.uint8).ravel()
        return out


@dataclass(frozen=True)
class QuantizedModel:
    """Everything the accelerator needs to run ``cfg`` compressed by ``plan``.

    ``linears[op_name]``: :class:`QLinear`; ``params[op_name]``: integer constants of the
    other ops (see the module docstring); ``scales[tensor]``: the static real scale of every
    integer tensor (per-row tensors: the static part, the row factor aside); ``res_frac``: the
    residual's binary point F; ``rope_cos/rope_sin``: Q14 tables (LLaMA family, else empty).
    """

    cfg: ModelConfig
    plan: CompressionPlan
    linears: dict[str, QLinear] = field(repr=False)
    params: dict[str, dict[str, Any]] = field(repr=False)
    scales: dict[str, Any] = field(repr=False)
    res_frac: int
    rope_cos: np.ndarray = field(repr=False)
    rope_sin: np.ndarray = field(repr=False)
    embed_table: np.ndarray = field(repr=False)
    pos_table: np.ndarray | None = field(repr=False)

    def embed(self, ids: np.ndarray, start: int) -> np.ndarray:
        """The program input: INT32 embeddings of ``ids`` at positions ``start...`` (host side)."""
        x = self.embed_table[np.asarray(ids)]
        if self.pos_table is not None:
            x = x + self.pos_table[start + self.cfg.position_offset + np.arange(len(ids))]
        return nx.saturate(np.rint(x * 2.0**self.res_frac), nx.RESIDUAL_BITS)

    def dequant_logits(self, logits: np.ndarray) -> np.ndarray:
        """Real logits from the INT32 logits the head writes."""
        return np.asarray(logits, np.float64) * self.scales["logits"]


#: Headroom (bits) over the calibrated maxima of the residual and the row stages.
HEADROOM_BITS = 2
#: Row-stage guard of P x V: |y| = |sum(p v) / S| * 2**G <= 127 * 2**22 < 2**29 (no calibration).
PV_GUARD = 22


def _absmax(t: np.ndarray, axis: Any = None) -> np.ndarray:
    return np.maximum(np.abs(t).max(axis=axis), 1e-30)


def _heads(t: np.ndarray, n: int) -> np.ndarray:
    """A per-head tensor ([T, n*hd] or [n, T, hd]) as [n, T, hd]."""
    return t if t.ndim == 3 else split_heads(t, n)


def _head_max(ts: list[np.ndarray], n: int) -> np.ndarray:
    """Per-head maximum magnitude of the INT8 tensors ``ts`` (the same ``n`` heads): the static
    per-head scale is ``max / 127``, nothing clipped. Clipping to the least squared error was
    measured worse (SmolLM2-135M w8a8, 256 tokens, float 21.67: without q/k balancing 24.28
    clipped vs 22.80 at the maximum; with it 22.38 vs 22.10, inside the ~1 % this figure moves
    under float-rounding changes of the factors): the clipped values are the attention sinks'
    and the massive tokens', whose error the squared error of the tensor does not weigh."""
    return np.array(
        [
            max(float(np.abs(np.concatenate([_heads(t, n)[h].ravel() for t in ts])).max()), 1e-30)
            for h in range(n)
        ]
    )


def _balance_qk(
    cfg: ModelConfig, w: dict[str, np.ndarray], ten: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Balance the channel ranges of q and k per KV head (:func:`hwflow.smooth.qk_factors`):
    the q linear's rows times ``lam``, the k linear's rows divided by it (biases too), exact in
    real arithmetic (RoPE rotates channel pairs that share a factor); returns a new dict."""
    out = dict(w)
    rep, hd = cfg.heads // cfg.kv_heads, cfg.head_dim
    rope = cfg.positions == "rope"
    for li in range(cfg.layers):
        p = f"L{li}."
        kmax = np.abs(_heads(ten[p + ("kr" if rope else "k")], cfg.kv_heads)).max(axis=1)
        qmax = np.abs(_heads(ten[p + ("qr" if rope else "q")], cfg.heads)).max(axis=1)
        qmax = qmax.reshape(cfg.kv_heads, rep, hd).max(axis=1)
        lam = np.stack([qk_factors(kmax[h], qmax[h], rope) for h in range(cfg.kv_heads)])
        for op, f in (("q", np.repeat(lam, rep, axis=0).ravel()), ("k", 1.0 / lam.ravel())):
            out[p + op + ".w"] = w[p + op + ".w"] * f[:, None]
            if p + op + ".b" in w:
                out[p + op + ".b"] = w[p + op + ".b"] * f
    return out


def _calibrate(cfg: ModelConfig, plan: CompressionPlan, w: dict[str, np.ndarray], ids: np.ndarray):
    """Float64 run of the (bias-folded) model on ``ids``: every tensor, all rows."""
    t = len(ids)
    graph = step_graph(cfg, plan, "prefill", t)
    x0 = w["embed"][ids]
    if cfg.positions == "learned":
        x0 = x0 + w["pos"][cfg.position_offset + np.arange(t)]
    mask = attention_mask(cfg, plan.attention, "prefill", t, 0)
    run = run_float(cfg, w, graph, x0, KVCache.empty(cfg, np.float64, t), mask, all_rows=True)
    return graph, run.tensors


def quantize_model(
    cfg: ModelConfig,
    plan: CompressionPlan,
    weights: dict[str, np.ndarray],
    calib_tokens: int = 64,
    calib_ids: np.ndarray | None = None,
) -> QuantizedModel:
    """Compress ``weights`` of ``cfg`` by ``plan`` (see the module docstring for the steps).

    ``calib_ids``: calibration token ids (real text for a real checkpoint); default
    ``calib_tokens`` seeded random ids (what random weights are calibrated on).
    """
    check_keys(cfg, plan)
    w = fold_norm_biases(cfg, weights)
    if calib_ids is None:
        t = min(calib_tokens, cfg.max_positions)
        calib_ids = np.random.default_rng(CALIBRATION_SEED).integers(cfg.vocab, size=t)
    calib_ids = np.asarray(calib_ids)[: cfg.max_positions]
    graph, ten = _calibrate(cfg, plan, w, calib_ids)
    if plan.method.smooth is not None:
        w = _smooth(cfg, w, ten, plan.method.smooth)
    w = _balance_qk(cfg, w, ten)  # q/k unchanged by smoothing: one run's maxima serve both
    graph, ten = _calibrate(cfg, plan, w, calib_ids)
    res_max = max(float(_absmax(ten[f"x{li}"])) for li in range(cfg.layers + 1))
    res_frac = math.floor(math.log2((2**31 - 1) / res_max)) - HEADROOM_BITS
    scales: dict[str, Any] = {f"x{li}": 2.0**-res_frac for li in range(cfg.layers + 1)}
    params: dict[str, dict[str, Any]] = {}
    row_inputs: dict[str, float] = {}  #: per-row tensor -> static scale (row factor aside)
    _elementwise_params(cfg, graph, w, ten, res_frac, scales, params, row_inputs)
    if plan.method.keys == "rotated":
        _rotated_qk_params(cfg, graph, ten, scales, params)
    _static_scales(cfg, w, ten, res_frac, scales)
    linears = _matmul_params(cfg, plan, graph, w, ten, scales, params, row_inputs)
    for name, s_in in row_inputs.items():
        scales[name] = s_in
    if cfg.positions == "rope":
        cos, sin = nx.rope_tables(cfg.max_positions, cfg.head_dim, cfg.rope_theta)
    else:
        cos = sin = np.zeros((0, 0), np.int64)
    return QuantizedModel(
        cfg, plan, linears, params, scales, res_frac, cos, sin, w["embed"], w.get("pos")
    )


def check_keys(cfg: ModelConfig, plan: CompressionPlan) -> None:
    """Rotated keys need RoPE (the rotation follows it; without RoPE it would fold into the
    weights, not implemented) and a power-of-two head dimension (the Hadamard transform)."""
    if plan.method.keys != "rotated":
        return
    if cfg.positions != "rope":
        raise UnsupportedError(
            f"plan {plan.name}: method.keys 'rotated' needs RoPE positions; {cfg.name} has "
            f"{cfg.positions!r} (use method.keys 'static')"
        )
    hd = cfg.head_dim
    if hd & (hd - 1):
        raise UnsupportedError(
            f"plan {plan.name}: method.keys 'rotated' needs a power-of-two head_dim for the "
            f"Hadamard transform; {cfg.name} has {hd} (use method.keys 'static')"
        )


def _elementwise_params(
    cfg: ModelConfig,
    graph: Any,
    w: dict[str, np.ndarray],
    ten: dict[str, np.ndarray],
    res_frac: int,
    scales: dict[str, Any],
    params: dict[str, dict[str, Any]],
    row_inputs: dict[str, float],
) -> None:
    """Norm gains and pre-shifts, RoPE's per-head scales, the INT16 gate/up scales and SiLU
    index multiplier; which tensors carry row factors (with their static scale)."""
    for op in graph.ops:
        if op.kind == "norm":
            g = w.get(op.name + ".g", np.ones(cfg.hidden))
            gs = float(_absmax(g)) / 32767
            xmax = float(_absmax(ten[op.inputs[0]])) * 2.0**res_frac
            pre = max(0, int(xmax * 2**HEADROOM_BITS).bit_length() - nx.NORM_IN_BITS)
            params[op.name] = {
                "gamma": np.rint(g / gs).astype(np.int64),
                "pre": pre,
                "center": cfg.norm == "layer",
            }
            row_inputs[op.output] = gs / 127
        elif op.kind == "rope":
            n = cfg.heads if op.name.endswith("rope_q") else cfg.kv_heads
            hmax = _head_max([ten[op.inputs[0]], ten[op.output]], n)
            scales[op.inputs[0]] = scales[op.output] = hmax / 127
        elif op.kind == "lut":
            src = op.inputs[0]
            scales[src] = float(_absmax(ten[src])) * 2**HEADROOM_BITS / 32767
            if cfg.gated_mlp:
                scales[op.output] = scales[src]
                params[op.name] = _mult(nx.SIG_STEPS * scales[src])
            else:  # OPT: relu, then the per-row quantization for down
                params[op.name] = {}
                row_inputs[op.output] = scales[src] / 127
        elif op.kind == "mul":
            a, b = op.inputs
            scales[b] = float(_absmax(ten[b])) * 2**HEADROOM_BITS / 32767
            row_inputs[op.output] = scales[a] * scales[b] / 127


def _static_scales(
    cfg: ModelConfig,
    w: dict[str, np.ndarray],
    ten: dict[str, np.ndarray],
    res_frac: int,
    scales: dict[str, Any],
) -> None:
    """Static scales of the rest: per-head q/k/v (OPT: no RoPE), the attention output per head
    (folded into o's columns: ``w`` is updated), the residual-stream tensors, the logits."""
    hd = cfg.head_dim
    for li in range(cfg.layers):
        p = f"L{li}."
        for t, n in (("q", cfg.heads), ("k", cfg.kv_heads), ("v", cfg.kv_heads)):
            if p + t not in scales:
                scales[p + t] = _head_max([ten[p + t]], n) / 127
        # the attention output per head: each head's own INT8 scale, folded into o's columns
        # (exact in real arithmetic), so o reads one tensor at scale 1
        sa = _head_max([ten[p + "a"]], cfg.heads) / 127
        scales[p + "a.heads"], scales[p + "a"] = sa, 1.0
        w[p + "o.w"] = w[p + "o.w"] * np.repeat(sa, hd)[None, :]
        scales[p + "p"] = 1.0  # probabilities are normalised in P x V
        for t in ("x1", "o", "d"):  # residual-stream tensors
            scales[p + t] = 2.0**-res_frac
    scales["logits"] = float(_absmax(ten["logits"])) * 2**HEADROOM_BITS / (2**31 - 1)


def _rotated_qk_params(
    cfg: ModelConfig,
    graph: Any,
    ten: dict[str, np.ndarray],
    scales: dict[str, Any],
    params: dict[str, dict[str, Any]],
) -> None:
    """Scales and multipliers of rotated keys (:mod:`hwflow.numerics`, "Rotated keys").

    q and k leave their linears as INT16 at a static per-head scale with two bits of headroom
    (RoPE keeps a pair's norm; INT16 has the bits to spare). RoPE's ``rope_q`` then maps the
    rotated q, ``H q16`` (real ``H q16 * s16 / sqrt(hd)`` in the orthonormal basis), to INT8 at
    the static per-head scale of its calibrated maximum (``mult/shift`` per head); ``rope_k``
    quantizes ``H k16`` per token and head (``k8 * M / 127``), so ``scales[kr]`` is the unit of
    ``H k16``. The scores' row stage applies each key's ``M`` (``y = acc * M * 2**G``, the guard
    ``G`` from the calibrated maximum of ``|q . k|``), the channel stage the head's constant.
    """
    hd = cfg.head_dim
    rep = cfg.heads // cfg.kv_heads
    had = nx.hadamard_int(np.eye(hd, dtype=np.int64)).astype(np.float64) / math.sqrt(hd)
    for op in graph.ops:
        if op.kind == "rope":
            n = cfg.heads if op.name.endswith("rope_q") else cfg.kv_heads
            s16 = _head_max([ten[op.inputs[0]], ten[op.output]], n) * 2**HEADROOM_BITS / 32767
            scales[op.inputs[0]] = s16
            if op.name.endswith("rope_q"):
                sq8 = _head_max([_heads(ten[op.output], n) @ had], n) / 127
                m, s = nx.quant_multiplier(s16 / math.sqrt(hd) / sq8)
                params[op.name] = {"mult": m, "shift": s}
                scales[op.output] = sq8
            else:
                params[op.name] = {}
                scales[op.output] = s16 / math.sqrt(hd)
        elif op.kind == "scores":
            li = op.layer
            q = _heads(ten[op.inputs[0]], cfg.heads)
            k = _heads(ten[f"L{li}.kr"], cfg.kv_heads)
            qk = np.array([np.abs(q[h] @ k[h // rep].T).max() for h in range(cfg.heads)])
            sq = np.asarray(scales[op.inputs[0]])
            sk = np.repeat(np.asarray(scales[f"L{li}.kr"]), rep)
            unit = sq * sk / 127  # real q . k per unit of acc * M
            guard = math.floor(math.log2(2**29 / max(float(np.max(qk / unit)), 1.0)))
            real = 2.0**-guard * unit / math.sqrt(hd) * math.log2(math.e) * 256
            m, s = nx.quant_multiplier(real)
            params[op.name] = {"mult": m, "shift": s, "guard": guard}


def _matmul_params(
    cfg: ModelConfig,
    plan: CompressionPlan,
    graph: Any,
    w: dict[str, np.ndarray],
    ten: dict[str, np.ndarray],
    scales: dict[str, Any],
    params: dict[str, dict[str, Any]],
    row_inputs: dict[str, float],
) -> dict[str, QLinear]:
    """Every linear compressed by the plan's method; the scores' and P x V's multipliers."""
    quant = plan.resolve(cfg)
    linears: dict[str, QLinear] = {}
    calibs: dict[str, Calibration] = {}  #: input statistics shared by the linears reading them
    rep = cfg.heads // cfg.kv_heads
    hd = cfg.head_dim
    for op in graph.ops:
        if op.kind in ("linear", "head"):
            lq = quant[(op.layer, op.name.split(".")[1])] if op.kind == "linear" else plan.head()
            src = op.inputs[0]
            if src not in calibs and _needs_calibration(plan.method):
                calibs[src] = Calibration.of(ten[src])
            linears[op.name] = _quantize_linear(
                op, lq, w, ten, scales, row_inputs, cfg, plan.method, calibs.get(src)
            )
        elif op.kind == "scores" and plan.method.keys == "rotated":
            pass  # _rotated_qk_params
        elif op.kind == "scores":
            q_name, li = op.inputs[0], op.layer
            k_name = f"L{li}.kr" if cfg.positions == "rope" else f"L{li}.k"
            sq = np.asarray(scales[q_name])
            sk = np.repeat(np.asarray(scales[k_name]), rep)
            real = sq * sk / math.sqrt(hd) * math.log2(math.e) * 256
            m, s = nx.quant_multiplier(real)
            params[op.name] = {"mult": m, "shift": s}
        elif op.kind == "pv":
            sv = np.repeat(np.asarray(scales[f"L{op.layer}.v"]), rep)
            sa = np.asarray(scales[op.output + ".heads"])
            m, s = nx.quant_multiplier(sv * 2.0**-PV_GUARD / sa)
            params[op.name] = {"mult": m, "shift": s, "guard": PV_GUARD}
    return linears


def _needs_calibration(method: CompressionMethod) -> bool:
    return method.prune != "magnitude" or method.quant != "rtn"


def _mult(real: float) -> dict[str, int]:
    m, s = nx.quant_multiplier(real)
    return {"mult": int(m), "shift": int(s)}


def _out_format(
    op_name: str, out: str, scales: dict[str, Any], cfg: ModelConfig, rotated: bool = False
):
    """(bits, per-channel real output scale) of a linear op's output tensor (q and k INT16
    with rotated keys: the rotation and the keys' per-token scales follow RoPE)."""
    kind = op_name.split(".")[-1]
    n_out = cfg.linear_shape(kind)[0] if kind != "head" else cfg.vocab
    if kind == "head":
        return 32, np.full(n_out, scales["logits"])
    if kind in ("o", "down"):
        return 32, np.full(n_out, scales[out])
    if kind in ("gate", "up"):
        return nx.GATE_BITS, np.full(n_out, scales[out])
    bits = 16 if rotated and kind in ("q", "k") else 8
    return bits, np.repeat(np.asarray(scales[out]), cfg.head_dim)  # q, k, v: per head


def _compress_weight(
    wf: np.ndarray, lq: LinearQuant, method: CompressionMethod, calib: Calibration | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """N:M pruning then INT``bits`` quantization by the plan's method: (codes, scale[out]
    (with a group: the row unit), keep-mask or None when dense, group multipliers or None)."""
    needs = method.prune != "magnitude" and not lq.dense
    needs = needs or method.quant in ("gptq", "gptq-search")
    calib = calib if needs or method.quant == "search" else None
    wp, mask = prune(method.prune, wf, lq.n, lq.m, calib) if not lq.dense else (wf, None)
    if lq.group is not None:
        codes, gmult, unit = quantize_grouped(method.quant, wp, lq.bits, lq.group, mask, calib)
        return codes.astype(np.int8), np.asarray(unit, np.float64), mask, gmult
    codes, scale = quantize(method.quant, wp, lq.bits, mask, None, calib)
    return codes.astype(np.int8), np.asarray(scale, np.float64), mask, None


def _quantize_linear(
    op: Any,
    lq: LinearQuant,
    w: dict[str, np.ndarray],
    ten: dict[str, np.ndarray],
    scales: dict[str, Any],
    row_inputs: dict[str, float],
    cfg: ModelConfig,
    method: CompressionMethod,
    calib: Calibration | None,
) -> QLinear:
    name, src = op.name, op.inputs[0]
    if name.split(".")[-1] in ("gate", "up") and op.output not in scales:
        scales[op.output] = float(_absmax(ten[op.output])) / 32767
    codes, wscale, mask, gmult = _compress_weight(w[name + ".w"], lq, method, calib)
    if lq.dense:
        values, indices = codes, None
    else:
        values, indices = nx.nm_compress(codes, mask, lq.n, lq.m)
    bits, s_out = _out_format(name, op.output, scales, cfg, method.keys == "rotated")
    # row stage y = acc * f * 2**G (f = 1 for inputs without row factors): real = y * y_scale
    s_in = row_inputs.get(src, scales[src] if src not in row_inputs else 0.0)
    ymax = float(np.max(_absmax(ten[op.output], axis=0) / (s_in * wscale)))
    guard = math.floor(math.log2(2**29 / ymax))
    y_scale = 2.0**-guard * s_in * wscale
    bias = None
    if name + ".b" in w:
        bias = np.clip(np.rint(w[name + ".b"] / y_scale), -(2**31), 2**31 - 1).astype(np.int64)
    mult, shift = nx.quant_multiplier(y_scale / s_out)
    return QLinear(name, lq, codes, values, indices, bias, mult, shift, wscale, bits, guard, gmult)
