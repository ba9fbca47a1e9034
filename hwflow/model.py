"""The layer graph of one inference step: which ops run, on which tensors, at what size.

A *step* is a prefill of ``tokens`` tokens or a decode step (``tokens == 1``) after ``past``
positions are already in the KV cache; its keys span ``past + tokens`` positions. The graph is
the single description of a decoder layer's dataflow: the integer reference
(:mod:`hwflow.reference`) interprets it op by op, the compiler lowers it op by op, and the
analysis tools sum its MACs and bytes.

Per layer ``l`` (LLaMA/Mistral; OPT differs as noted)::

    x{l} -norm1-> h1 -q/k/v-> q,k,v -rope-> qr,kr -kv_write-> K{l},V{l}     (OPT: no rope)
    qr,K -scores-> s -softmax-> p ; p,V -pv-> a -o-> o ; x{l}+o -add1-> x1
    x1 -norm2-> h2 -gate/up-> g,u -lut(silu g)-> ga ; ga*u -mul-> mm -down-> d  (OPT: up, lut(relu))
    x1+d -add2-> x{l+1}
    after the last layer: x{L} -final.norm-> hf -head-> logits   (last token only)

Tensor names are ``x{l}`` for the residual stream entering layer ``l`` and ``L{l}.<t>`` inside a
layer; op names are ``L{l}.<op>``, ``final.norm`` and ``head``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from hwflow.config import AttentionSparsity, CompressionPlan, LinearQuant, ModelConfig
from hwflow.errors import ConfigError
from hwflow.isa import ROW_FACTOR_BYTES
from hwflow.numerics import GROUP_MULT_BITS

__all__ = [
    "OP_KINDS",
    "Op",
    "StepGraph",
    "attention_mask",
    "block_keep",
    "group_scale_bytes",
    "has_bias",
    "linear_bytes",
    "step_graph",
]

OP_KINDS = (
    "norm",
    "linear",
    "rope",
    "kv_write",
    "scores",
    "softmax",
    "pv",
    "add",
    "lut",
    "mul",
    "head",
)
Phase = Literal["prefill", "decode"]

#: Bytes of the per-output-channel requantization parameters: a 15-bit multiplier in 2 bytes
#: and a 6-bit shift in 1 byte (numerics.REQ_MULT_BITS, REQ_SHIFT_MAX).
REQ_PARAM_BYTES = 3
BIAS_BYTES = 4  #: INT32 bias


def group_scale_bytes(k: int, group: int | None) -> int:
    """Bytes of one output row's weight-group multipliers: K/G of GROUP_MULT_BITS (8) bits
    each (numerics, weights), whole bytes; 0 without a group."""
    return 0 if group is None else -(-(k // group) * GROUP_MULT_BITS // 8)


def has_bias(cfg: ModelConfig, op: str) -> bool:
    """Whether a linear op (or ``"head"``) carries an INT32 bias: the model's own biases, plus
    the LayerNorm beta folded into every op that consumes a norm
    (:func:`hwflow.compress.fold_norm_biases`)."""
    folded = cfg.norm == "layer" and op in ("q", "k", "v", "gate", "up", "head")
    return folded or (cfg.bias and op != "head")


def linear_bytes(
    out_features: int, in_features: int, quant: LinearQuant, bias: bool, requant: bool = True
) -> dict[str, int]:
    """Stored bytes of one compressed linear layer, by part.

    ``values``: kept weights packed at ``quant.bits``; ``indices``: their log2(M)-bit in-group
    indices (none when dense); ``params``: requantization multiplier/shift and INT32 bias per
    output channel; ``scales``: the weight-group multipliers (:func:`group_scale_bytes`).
    Rows are padded to whole bytes (``numerics.pack_bits`` per row).
    """
    kept = in_features // quant.m * quant.n
    values = out_features * math.ceil(kept * quant.bits / 8)
    indices = 0 if quant.dense else out_features * math.ceil(kept * int(math.log2(quant.m)) / 8)
    params = out_features * ((REQ_PARAM_BYTES if requant else 0) + (BIAS_BYTES if bias else 0))
    scales = out_features * group_scale_bytes(in_features, quant.group)
    return {"values": values, "indices": indices, "params": params, "scales": scales}


@dataclass(frozen=True)
class Op:
    """One op of a step. Sizes are per step; ``heads`` independent products for attention."""

    name: str
    kind: str
    layer: int | None
    inputs: tuple[str, ...]
    output: str
    tokens: int  #: rows of the activation operand (T)
    rows: int = 0  #: output features per head (linear: out; scores: keys L; pv: head_dim)
    k: int = 0  #: reduction length (linear: in; scores: head_dim; pv: keys L)
    heads: int = 1
    quant: LinearQuant | None = None
    macs: int = 0  #: useful multiply-accumulates (kept weights, kept attention blocks)
    dense_macs: int = 0  #: multiply-accumulates without any sparsity
    weight_bytes: int = 0  #: streamed weight bytes (values + indices + params)
    kv_bytes: int = 0  #: KV-cache bytes read (scores, pv) or written (kv_write)
    elements: int = 0  #: elements produced (element-wise and normalisation ops)


@dataclass(frozen=True)
class StepGraph:
    """The ordered ops of one step, with totals."""

    phase: Phase
    tokens: int
    past: int
    ops: tuple[Op, ...]
    keys: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", self.past + self.tokens)

    @property
    def macs(self) -> int:
        return sum(o.macs for o in self.ops)

    @property
    def weight_bytes(self) -> int:
        return sum(o.weight_bytes for o in self.ops)

    @property
    def kv_bytes(self) -> int:
        return sum(o.kv_bytes for o in self.ops)

    @property
    def hbm_bytes(self) -> int:
        """Bytes the step must move between HBM and the chip (weights + KV), activations aside."""
        return self.weight_bytes + self.kv_bytes

    def by_name(self, name: str) -> Op:
        for o in self.ops:
            if o.name == name:
                return o
        raise KeyError(name)


def attention_mask(
    cfg: ModelConfig, attn: AttentionSparsity, phase: Phase, tokens: int, past: int
) -> np.ndarray:
    """Boolean [tokens, past+tokens] mask: causal, the model's sliding window, and for prefill
    the plan's block pattern (a query block keeps the first ``global_blocks`` key blocks and the
    ``local_blocks`` nearest, its own included). Decode attention is dense."""
    q = past + np.arange(tokens)[:, None]
    kpos = np.arange(past + tokens)[None, :]
    mask = kpos <= q
    if cfg.sliding_window:
        mask &= q - kpos < cfg.sliding_window
    if phase == "prefill" and attn.pattern == "block":
        mask &= block_keep(q, kpos, attn.block, attn.global_blocks, attn.local_blocks)
    return mask


def block_keep(
    q: np.ndarray, kpos: np.ndarray, block: int, global_blocks: int, local_blocks: int
) -> np.ndarray:
    """The block-sparse pattern (broadcast over query and key positions): a query block keeps
    the first ``global_blocks`` key blocks and the ``local_blocks`` nearest, its own included."""
    qb, kb = q // block, kpos // block
    return (kb < global_blocks) | (qb - kb < local_blocks)


def _block_kept(mask: np.ndarray, block: int) -> int:
    """Entries of the mask's kept ``block x block`` tiles (what a tiled engine computes)."""
    t, keys = mask.shape
    tb, kb = math.ceil(t / block), math.ceil(keys / block)
    padded = np.zeros((tb * block, kb * block), dtype=bool)
    padded[:t, :keys] = mask
    tiles = padded.reshape(tb, block, kb, block).any(axis=(1, 3))
    rows = np.minimum(block, t - np.arange(tb) * block)
    cols = np.minimum(block, keys - np.arange(kb) * block)
    return int((tiles * rows[:, None] * cols[None, :]).sum())


def step_graph(
    cfg: ModelConfig, plan: CompressionPlan, phase: Phase, tokens: int, past: int = 0
) -> StepGraph:
    """The graph of one prefill (``past`` 0) or decode (``tokens`` 1) step."""
    _check_step(cfg, phase, tokens, past)
    g = _GraphBuilder(cfg, plan, phase, tokens, past)
    for li in range(cfg.layers):
        g.layer(li)
    g.head()
    return StepGraph(phase, tokens, past, tuple(g.ops))


def _check_step(cfg: ModelConfig, phase: str, tokens: int, past: int) -> None:
    """ConfigError unless (phase, tokens, past) is a step the model can run."""
    if phase not in ("prefill", "decode"):
        raise ConfigError(f"phase {phase!r} unknown (allowed: prefill, decode)")
    if tokens < 1 or past < 0:
        raise ConfigError(
            f"a step needs tokens >= 1 and past >= 0, got tokens={tokens}, past={past}"
        )
    if phase == "decode" and tokens != 1:
        raise ConfigError(f"a decode step has one token, got {tokens}")
    if past + tokens > cfg.max_positions:
        raise ConfigError(
            f"{past + tokens} positions exceed {cfg.name}'s max_position_embeddings "
            f"{cfg.max_positions}"
        )


class _GraphBuilder:
    """The ops of one step, appended in execution order (see the module doc's dataflow)."""

    def __init__(
        self, cfg: ModelConfig, plan: CompressionPlan, phase: Phase, tokens: int, past: int
    ) -> None:
        self.cfg, self.plan, self.t = cfg, plan, tokens
        self.keys = past + tokens
        self.quant = plan.resolve(cfg)
        mask = attention_mask(cfg, plan.attention, phase, tokens, past)
        #: attention entries computed: the kept blocks' in prefill, all in decode
        self.kept = int(
            _block_kept(mask, plan.attention.block) if phase == "prefill" else mask.size
        )
        self.ops: list[Op] = []

    def linear(self, layer: int, op: str, src: str, dst: str) -> None:
        """Linear op ``op`` of ``layer`` at the plan's quantization and sparsity."""
        out_f, in_f = self.cfg.linear_shape(op)
        lq, t = self.quant[(layer, op)], self.t
        b = sum(linear_bytes(out_f, in_f, lq, has_bias(self.cfg, op)).values())
        o = Op(f"L{layer}.{op}", "linear", layer, (src,), dst, t, out_f, in_f, 1, lq,
               macs=t * out_f * (in_f // lq.m) * lq.n, dense_macs=t * out_f * in_f,
               weight_bytes=b)  # fmt: skip
        self.ops.append(o)

    def elementwise(
        self, layer: int | None, name: str, kind: str, srcs: tuple[str, ...], dst: str, n: int
    ) -> None:
        """An element-wise or normalisation op producing ``n`` elements per token."""
        prefix = f"L{layer}." if layer is not None else "final."
        self.ops.append(Op(prefix + name, kind, layer, srcs, dst, self.t, elements=self.t * n))

    def layer(self, li: int) -> None:
        """Decoder layer ``li``: x{li} -> x{li + 1}."""
        cfg, p, x, d = self.cfg, f"L{li}.", f"x{li}", self.cfg.hidden
        hd = cfg.head_dim
        self.elementwise(li, "norm1", "norm", (x,), p + "h1", d)
        for op in ("q", "k", "v"):
            self.linear(li, op, p + "h1", p + op)
        qn, kn = p + "q", p + "k"
        if cfg.positions == "rope":
            self.elementwise(li, "rope_q", "rope", (qn,), p + "qr", cfg.heads * hd)
            self.elementwise(li, "rope_k", "rope", (kn,), p + "kr", cfg.kv_heads * hd)
            qn, kn = p + "qr", p + "kr"
        self.attention(li, qn, kn)
        self.linear(li, "o", p + "a", p + "o")
        self.elementwise(li, "add1", "add", (x, p + "o"), p + "x1", d)
        self.elementwise(li, "norm2", "norm", (p + "x1",), p + "h2", d)
        self.mlp(li)
        self.elementwise(li, "add2", "add", (p + "x1", p + "d"), f"x{li + 1}", d)

    def attention(self, li: int, qn: str, kn: str) -> None:
        """KV-cache write, scores, softmax and pv of layer ``li`` (q ``qn``, k ``kn``)."""
        p, t, keys, kept = f"L{li}.", self.t, self.keys, self.kept
        hd, nh, nkv = self.cfg.head_dim, self.cfg.heads, self.cfg.kv_heads
        kv, dense = f"KV{li}", nh * t * keys * hd
        # rotated keys: each key carries its row factor (the K record of the KV cache)
        kb = hd + (ROW_FACTOR_BYTES if self.plan.method.keys == "rotated" else 0)
        self.ops.append(
            Op(p + "kv_write", "kv_write", li, (kn, p + "v"), kv, t, kv_bytes=t * nkv * (kb + hd))
        )
        kv_read = nkv * keys * hd  # each KV head's keys are read once per step, shared by its group
        scores = Op(p + "scores", "scores", li, (qn, kv), p + "s", t, keys, hd, nh,
                    macs=nh * kept * hd, dense_macs=dense, kv_bytes=nkv * keys * kb)  # fmt: skip
        self.ops.append(scores)
        self.elementwise(li, "softmax", "softmax", (p + "s",), p + "p", nh * keys)
        pv = Op(p + "pv", "pv", li, (p + "p", kv), p + "a", t, hd, keys, nh,
                macs=nh * kept * hd, dense_macs=dense, kv_bytes=kv_read)  # fmt: skip
        self.ops.append(pv)

    def mlp(self, li: int) -> None:
        """Gated (SiLU) MLP, or OPT's ReLU MLP, of layer ``li``: h2 -> d."""
        p, f = f"L{li}.", self.cfg.intermediate
        if self.cfg.gated_mlp:
            self.linear(li, "gate", p + "h2", p + "g")
            self.linear(li, "up", p + "h2", p + "u")
            self.elementwise(li, "act", "lut", (p + "g",), p + "ga", f)
            self.elementwise(li, "mul", "mul", (p + "ga", p + "u"), p + "mm", f)
            self.linear(li, "down", p + "mm", p + "d")
        else:
            self.linear(li, "up", p + "h2", p + "u")
            self.elementwise(li, "act", "lut", (p + "u",), p + "ua", f)
            self.linear(li, "down", p + "ua", p + "d")

    def head(self) -> None:
        """Final norm and LM head, on the last token only."""
        cfg, d = self.cfg, self.cfg.hidden
        last = f"x{cfg.layers}"
        self.ops.append(Op("final.norm", "norm", None, (last,), "hf", 1, elements=d))
        hq = self.plan.head()
        hb = sum(linear_bytes(cfg.vocab, d, hq, bias=has_bias(cfg, "head")).values())
        head = Op("head", "head", None, ("hf",), "logits", 1, cfg.vocab, d, 1, hq,
                  macs=cfg.vocab * (d // hq.m) * hq.n, dense_macs=cfg.vocab * d,
                  weight_bytes=hb)  # fmt: skip
        self.ops.append(head)
