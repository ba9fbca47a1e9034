"""The numeric reference: one interpreter of the step graph, in integer and in float64.

:func:`run_int` executes a :class:`~hwflow.model.StepGraph` on a
:class:`~hwflow.compress.QuantizedModel` with the functions of :mod:`hwflow.numerics` and
nothing else; it is the golden model every executor (functional simulator, RTL benches) must
match bit for bit. :func:`run_float` executes the same graph in float64 on float weights: on the
original weights with dense causal attention it is the uncompressed model, against which
:func:`quality` measures each plan (SQNR and max abs error per layer output and of the logits).

Both return every tensor of the step by its graph name, and update a KV cache in place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from hwflow import numerics as nx
from hwflow.config import CompressionPlan, ModelConfig
from hwflow.errors import ConfigError
from hwflow.model import StepGraph, attention_mask, step_graph

if TYPE_CHECKING:
    from hwflow.compress import QuantizedModel

__all__ = [
    "QUALITY_MAX_PARAMS",
    "KVCache",
    "check_quality_size",
    "generate_int",
    "quality",
    "quality_sample",
    "run_float",
    "run_int",
]

#: The float64 run holds every weight in 8 bytes (a 7B model: ~50 GB): :func:`quality` is
#: offered for models up to this many parameters (:attr:`ModelConfig.params`).
QUALITY_MAX_PARAMS = 200_000_000


@dataclass
class KVCache:
    """Per layer K and V as [kv_heads, max_positions, head_dim] (int8 or float64); with rotated
    keys also each key's row factor ``kf`` as [kv_heads, max_positions, 2] (``m``, ``e``)."""

    k: list[np.ndarray]
    v: list[np.ndarray]
    length: int = 0
    kf: list[np.ndarray] = field(default_factory=list, repr=False)

    @classmethod
    def empty(cls, cfg: ModelConfig, dtype: Any = np.int8, positions: int | None = None) -> KVCache:
        shape = (cfg.kv_heads, positions or cfg.max_positions, cfg.head_dim)
        return cls(
            [np.zeros(shape, dtype) for _ in range(cfg.layers)],
            [np.zeros(shape, dtype) for _ in range(cfg.layers)],
            kf=[np.zeros((*shape[:2], 2), np.int64) for _ in range(cfg.layers)],
        )


@dataclass
class StepResult:
    """What a step produced: the last token's logits, every tensor by name, the cache."""

    logits: np.ndarray
    tensors: dict[str, np.ndarray] = field(repr=False)
    kv: KVCache = field(repr=False)


def _heads(x: np.ndarray, n: int) -> np.ndarray:
    """[T, n*hd] -> [n, T, hd]."""
    t = x.shape[0]
    return x.reshape(t, n, -1).transpose(1, 0, 2)


def _merge(x: np.ndarray) -> np.ndarray:
    """[n, T, hd] -> [T, n*hd]."""
    n, t, hd = x.shape
    return x.transpose(1, 0, 2).reshape(t, n * hd)


def run_int(
    qm: QuantizedModel,
    graph: StepGraph,
    x0: np.ndarray,
    kv: KVCache,
    plan: CompressionPlan | None = None,
    all_rows: bool = False,
) -> StepResult:
    """Execute ``graph`` in integer arithmetic from the INT8 input ``x0[T, hidden]``.

    ``kv`` must hold ``graph.past`` positions; the step appends its own. ``all_rows`` runs the
    final norm and head on every token, not only the last (perplexity, teacher forcing).
    """
    cfg = qm.cfg
    plan = plan or qm.plan
    if kv.length != graph.past:
        raise ValueError(f"KV cache holds {kv.length} positions, the step expects {graph.past}")
    t, past, keys = graph.tokens, graph.past, graph.keys
    rep = cfg.heads // cfg.kv_heads
    rotated = plan.method.keys == "rotated"
    mask = attention_mask(cfg, plan.attention, graph.phase, t, past)
    env: dict[str, Any] = {"x0": np.asarray(x0, np.int64)}
    rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}  #: row factors of per-row tensors
    for op in graph.ops:
        pr = qm.params.get(op.name, {})
        src = [env[i] for i in op.inputs if not i.startswith("KV")]
        if op.kind == "norm":
            x = src[0][-1:] if op.tokens == 1 and not all_rows else src[0]
            out, rows[op.output] = nx.norm_rows(x, pr["gamma"], pr["center"], pr["pre"])
        elif op.kind in ("linear", "head"):
            ql = qm.linears[op.name]
            acc = nx.weight_matmul(src[0], ql.codes, ql.gmult, ql.quant.group)
            row = rows.get(op.inputs[0], nx.unit_rows(acc.shape[0]))
            out = nx.linear_out(acc, ql.mult, ql.shift, ql.out_bits, row, ql.guard, ql.bias)
        elif op.kind == "rope":
            n = src[0].shape[1] // cfg.head_dim
            c, s = qm.rope_cos[past:keys], qm.rope_sin[past:keys]
            if rotated:
                out = _rotated(op, nx.rope_int(_heads(src[0], n), c, s, 16), pr, rows)
            else:
                out = _merge(nx.rope_int(_heads(src[0], n), c, s))
        elif op.kind == "kv_write":
            li = op.layer
            kv.k[li][:, past:keys] = _heads(src[0], cfg.kv_heads)
            kv.v[li][:, past:keys] = _heads(src[1], cfg.kv_heads)
            if rotated:
                kv.kf[li][:, past:keys] = np.stack(rows[op.inputs[0]], axis=-1)
            continue
        elif op.kind == "scores":
            q = _heads(src[0], cfg.heads)
            k = kv.k[op.layer][:, :keys]
            acc = np.stack([nx.matmul_int(q[h], k[h // rep]) for h in range(cfg.heads)])
            if rotated:
                out = _rotated_scores(acc, kv.kf[op.layer][:, :keys], pr, rep)
            else:
                out = nx.requantize(acc, pr["mult"][:, None, None], pr["shift"][:, None, None], 32)
        elif op.kind == "softmax":
            out, total = nx.softmax_rows(src[0], np.broadcast_to(mask, src[0].shape))
            rows[op.output] = nx.recip_factor(total)
        elif op.kind == "pv":
            v = kv.v[op.layer][:, :keys]
            m, e = rows[op.inputs[0]]
            heads = []
            for h in range(cfg.heads):
                acc = nx.matmul_int(src[0][h], v[h // rep].T)
                heads.append(
                    nx.linear_out(acc, pr["mult"][h], pr["shift"][h], 8, (m[h], e[h]), pr["guard"])
                )
            out = _merge(np.stack(heads))
        elif op.kind == "add":
            out = nx.add_residual(src[0], src[1])
        elif op.kind == "lut":
            if cfg.gated_mlp:
                out = nx.silu_int16(src[0], pr["mult"], pr["shift"])
            else:
                out, rows[op.output] = nx.quant_rows(nx.relu(src[0]))
        elif op.kind == "mul":
            out, rows[op.output] = nx.mul_rows(src[0], src[1])
        else:  # pragma: no cover - the graph only holds OP_KINDS
            raise ValueError(f"op kind {op.kind!r}")
        env[op.output] = out
    env.update({name + "#rows": r for name, r in rows.items()})
    kv.length = keys
    return StepResult(env["logits"], env, kv)


def _rotated(op: Any, y: np.ndarray, pr: dict[str, Any], rows: dict[str, Any]) -> np.ndarray:
    """RoPE's tail with rotated keys: ``H`` of the INT16 rotated heads ``y[n, T, hd]``; q to
    INT8 at its static per-head scale, k per token and head (row factors into ``rows``)."""
    hy = nx.hadamard_int(y)
    if op.name.endswith("rope_q"):
        return _merge(nx.requantize(hy, pr["mult"][:, None, None], pr["shift"][:, None, None], 8))
    kq, rows[op.output] = nx.quant_rows(hy)
    return _merge(kq)


def _rotated_scores(acc: np.ndarray, kf: np.ndarray, pr: dict[str, Any], rep: int) -> np.ndarray:
    """Scores of rotated keys: per head ``h``, the keys' row factors ``kf[kvh, keys, (m, e)]``
    in the row stage of the transposed product (a key is a row of K), then the head's
    constant: :func:`hwflow.numerics.linear_out` of ``acc[h].T``."""
    out = []
    for h in range(acc.shape[0]):
        f = kf[h // rep]
        z = nx.linear_out(
            acc[h].T, pr["mult"][h], pr["shift"][h], 32, (f[:, 0], f[:, 1]), pr["guard"]
        )
        out.append(z.T)
    return np.stack(out)


def run_float(
    cfg: ModelConfig,
    weights: dict[str, np.ndarray],
    graph: StepGraph,
    x0: np.ndarray,
    kv: KVCache,
    mask: np.ndarray | None = None,
    all_rows: bool = False,
) -> StepResult:
    """Execute ``graph`` in float64 on float ``weights`` (see :mod:`hwflow.compress`).

    Norm gains/biases (``*.g``, ``*.b``) are applied when present, so the same interpreter runs
    the original and the gain-folded weights. ``mask`` defaults to dense causal attention.
    ``all_rows`` runs the final norm and head on every token, not only the last (calibration).
    """
    t, past, keys = graph.tokens, graph.past, graph.keys
    rep = cfg.heads // cfg.kv_heads
    if mask is None:
        mask = np.arange(keys)[None, :] <= past + np.arange(t)[:, None]
    env: dict[str, np.ndarray] = {"x0": np.asarray(x0, np.float64)}
    for op in graph.ops:
        src = [env[i] for i in op.inputs if not i.startswith("KV")]
        if op.kind == "norm":
            x = src[0][-1:] if op.tokens == 1 and not all_rows else src[0]
            if cfg.norm == "layer":
                x = x - x.mean(axis=-1, keepdims=True)
            out = x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + cfg.norm_eps)
            out = out * weights.get(op.name + ".g", 1.0) + weights.get(op.name + ".b", 0.0)
        elif op.kind in ("linear", "head"):
            out = src[0] @ weights[op.name + ".w"].T
            if op.name + ".b" in weights:
                out = out + weights[op.name + ".b"]
        elif op.kind == "rope":
            n = src[0].shape[1] // cfg.head_dim
            h = cfg.head_dim // 2
            inv = 1.0 / (cfg.rope_theta ** (np.arange(0, cfg.head_dim, 2) / cfg.head_dim))
            ang = np.arange(past, keys)[:, None] * inv[None, :]
            c, s = np.cos(ang), np.sin(ang)
            x = _heads(src[0], n)
            x1, x2 = x[..., :h], x[..., h:]
            out = _merge(np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1))
        elif op.kind == "kv_write":
            kv.k[op.layer][:, past:keys] = _heads(src[0], cfg.kv_heads)
            kv.v[op.layer][:, past:keys] = _heads(src[1], cfg.kv_heads)
            continue
        elif op.kind == "scores":
            q = _heads(src[0], cfg.heads)
            k = kv.k[op.layer][:, :keys]
            out = np.stack([q[h] @ k[h // rep].T for h in range(cfg.heads)]) / math.sqrt(
                cfg.head_dim
            )
        elif op.kind == "softmax":
            s = np.where(mask, src[0], -np.inf)
            e = np.exp(s - s.max(axis=-1, keepdims=True))
            out = e / e.sum(axis=-1, keepdims=True)
        elif op.kind == "pv":
            v = kv.v[op.layer][:, :keys]
            out = _merge(np.stack([src[0][h] @ v[h // rep] for h in range(cfg.heads)]))
        elif op.kind == "add":
            out = src[0] + src[1]
        elif op.kind == "lut":
            x = src[0]
            out = x / (1.0 + np.exp(-x)) if cfg.activation == "silu" else np.maximum(x, 0.0)
        elif op.kind == "mul":
            out = src[0] * src[1]
        else:  # pragma: no cover
            raise ValueError(f"op kind {op.kind!r}")
        env[op.output] = out
    kv.length = keys
    return StepResult(env["logits"], env, kv)


def generate_int(qm: QuantizedModel, ids: np.ndarray, decode_steps: int) -> list[StepResult]:
    """Prefill ``ids`` then ``decode_steps`` greedy decode steps, all in integer arithmetic."""
    cfg, plan = qm.cfg, qm.plan
    kv = KVCache.empty(cfg)
    res = run_int(qm, step_graph(cfg, plan, "prefill", len(ids)), qm.embed(ids, 0), kv)
    out = [res]
    pos = len(ids)
    for _ in range(decode_steps):
        nxt = np.array([int(np.argmax(out[-1].logits[-1]))])
        res = run_int(qm, step_graph(cfg, plan, "decode", 1, pos), qm.embed(nxt, pos), kv)
        out.append(res)
        pos += 1
    return out


def check_quality_size(cfg: ModelConfig, command: str) -> None:
    """ConfigError unless ``cfg`` is small enough for the float64 reference."""
    if cfg.params > QUALITY_MAX_PARAMS:
        raise ConfigError(
            f"model {cfg.name} has {cfg.params / 1e9:.1f}e9 parameters; {command} runs on models "
            f"up to {QUALITY_MAX_PARAMS / 1e6:.0f}e6 (e.g. tiny-llama, tiny-opt)"
        )


def quality_sample(
    cfg: ModelConfig,
    limit: int,
    rng: np.random.Generator,
    tokens: int = 40,
    decode_steps: int = 4,
) -> tuple[np.ndarray, int]:
    """Prompt ids (drawn from ``rng``) and decode steps for :func:`quality` that fit ``limit``
    positions and the model's ``max_position_embeddings``: up to ``tokens`` prompt tokens, then
    up to ``decode_steps`` decode steps (fewer when the positions run out)."""
    room = min(limit, cfg.max_positions)
    decode = max(0, min(decode_steps, room - 1))
    return rng.integers(cfg.vocab, size=max(1, min(tokens, room - decode))), decode


def quality(
    qm: QuantizedModel, weights: dict[str, np.ndarray], ids: np.ndarray, decode_steps: int = 4
) -> list[dict[str, Any]]:
    """SQNR (dB) and max abs error of every layer's output and of the logits, integer vs float64.

    The float64 run is the original model (``weights`` before folding, dense causal attention)
    on the same tokens; the integer run is the compressed model. Decode steps are teacher-forced
    with the same tokens on both sides, and their logits are reported as ``decode.logits``.
    """
    cfg, plan = qm.cfg, qm.plan
    rows: list[dict[str, Any]] = []
    g = step_graph(cfg, plan, "prefill", len(ids))
    ri = run_int(qm, g, qm.embed(ids, 0), KVCache.empty(cfg))
    rf = run_float(
        cfg, weights, g, _float_embed(cfg, weights, ids, 0), KVCache.empty(cfg, np.float64)
    )

    def row(name: str, ref: np.ndarray, test: np.ndarray) -> None:
        rows.append(
            {
                "tensor": name,
                "sqnr_db": nx.sqnr_db(ref, test),
                "max_abs_error": nx.max_abs_error(ref, test),
                "ref_max_abs": float(np.abs(ref).max()),
            }
        )

    for li in range(1, cfg.layers + 1):
        row(f"prefill.x{li}", rf.tensors[f"x{li}"], ri.tensors[f"x{li}"] * qm.scales[f"x{li}"])
    row("prefill.logits", rf.logits, qm.dequant_logits(ri.logits))
    # decode: continue both models on the same next tokens (teacher forcing)
    kvi, kvf = ri.kv, rf.kv
    rng = np.random.default_rng(1234)
    ref_l, test_l = [], []
    pos = len(ids)
    for _ in range(decode_steps):
        tok = rng.integers(cfg.vocab, size=1)
        g = step_graph(cfg, plan, "decode", 1, pos)
        a = run_int(qm, g, qm.embed(tok, pos), kvi)
        b = run_float(cfg, weights, g, _float_embed(cfg, weights, tok, pos), kvf)
        ref_l.append(b.logits)
        test_l.append(qm.dequant_logits(a.logits))
        pos += 1
    if decode_steps:
        row("decode.logits", np.concatenate(ref_l), np.concatenate(test_l))
    return rows


def _float_embed(
    cfg: ModelConfig, weights: dict[str, np.ndarray], ids: np.ndarray, start: int
) -> np.ndarray:
    x = weights["embed"][np.asarray(ids)]
    if cfg.positions == "learned":
        x = x + weights["pos"][start + cfg.position_offset + np.arange(len(ids))]
    return x
