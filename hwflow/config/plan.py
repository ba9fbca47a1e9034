"""Compression plans (``mappings/plans/*.yaml``): weight precision and N:M sparsity per layer
and per linear op, attention sparsity for prefill, activation and KV-cache precision, and the
``method`` that prunes and quantizes real weights."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import field_validator, model_validator

from hwflow.config.base import Frozen, NonNegativeInt, PositiveInt, UnitInterval, pow2
from hwflow.config.model import LINEAR_OPS, ModelConfig
from hwflow.errors import ConfigError, UnsupportedError

__all__ = [
    "AttentionSparsity",
    "CompressionMethod",
    "CompressionPlan",
    "LinearQuant",
    "PruneMethod",
    "QuantMethod",
    "parse_nm",
]


class LinearQuant(Frozen):
    """How one linear op's weights are compressed: INT``bits``, N:M sparsity along K, and
    ``group``: one weight scale per output row and run of ``group`` inputs (None: per row;
    :mod:`hwflow.numerics`, weights)."""

    bits: Literal[2, 3, 4, 8]
    n: PositiveInt
    m: PositiveInt
    group: PositiveInt | None = None

    @model_validator(mode="after")
    def _nm(self) -> LinearQuant:
        if not pow2(self.m):
            raise ValueError(f"N:M sparsity needs M a power of two, got {self.n}:{self.m}")
        if self.n > self.m:
            raise ValueError(f"N:M sparsity needs N <= M, got {self.n}:{self.m}")
        return self

    @property
    def dense(self) -> bool:
        return self.n == self.m

    @property
    def label(self) -> str:
        nm = "" if self.dense else f" {self.n}:{self.m}"
        return f"W{self.bits}" + nm + ("" if self.group is None else f" g{self.group}")


_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")
_LAYERS = re.compile(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?")


def parse_nm(value: Any) -> tuple[int, int]:
    """``"N:M"`` or ``"dense"`` -> (n, m); ValueError naming the value and what is allowed."""
    if value in (None, "dense"):
        return (1, 1)
    m = _NM.match(str(value))
    if not m:
        raise ValueError(f"sparsity {value!r} is not 'N:M' (e.g. '4:16') or 'dense'")
    n, mm = int(m.group(1)), int(m.group(2))
    if not pow2(mm):
        raise ValueError(f"N:M sparsity needs M a power of two, got {n}:{mm}")
    if not 1 <= n <= mm:
        raise ValueError(f"N:M sparsity needs 1 <= N <= M, got {n}:{mm}")
    return n, mm


def _parse_layers(text: str) -> list[tuple[int, int]]:
    """``"a-b,c"`` -> [(a, b), (c, c)]; ValueError on bad syntax or an empty range."""
    out = []
    for part in text.split(","):
        m = _LAYERS.fullmatch(part)
        if not m:
            raise ValueError(f"layers {text!r}: expected 'a-b,c' of layer numbers")
        lo = int(m.group(1))
        hi = int(m.group(2) or lo)
        if hi < lo:
            raise ValueError(f"layers {text!r}: range {lo}-{hi} is empty (write {hi}-{lo})")
        out.append((lo, hi))
    return out


class _QuantSpec(Frozen):
    bits: Literal[2, 3, 4, 8] | None = None
    sparsity: str | None = None  # "N:M" or "dense"
    group: PositiveInt | Literal["channel"] | None = None  # weight group size or per channel

    @field_validator("sparsity")
    @classmethod
    def _nm_valid(cls, v: str | None) -> str | None:
        parse_nm(v)  # checked when the plan is read, so the error names the file and key
        return v

    @field_validator("group")
    @classmethod
    def _group_pow2(cls, v: int | str | None) -> int | str | None:
        if isinstance(v, int) and not pow2(v):
            raise ValueError("must be a power of two (e.g. 32, 64 or 128) or 'channel'")
        return v

    def apply(self, base: LinearQuant) -> LinearQuant:
        bits = self.bits or base.bits
        n, m = (base.n, base.m) if self.sparsity is None else parse_nm(self.sparsity)
        group = base.group if self.group is None else self.group
        return LinearQuant(bits=bits, n=n, m=m, group=None if group == "channel" else group)


class _Rule(_QuantSpec):
    layers: str | list[int] | int | None = None  # "0-3", "0,31", [0, 31], 5, or None = all
    ops: list[str] | None = None  # subset of LINEAR_OPS, or None = all

    @field_validator("layers", mode="before")
    @classmethod
    def _layers_valid(cls, v: Any) -> Any:
        ok = v is None or isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool))
        ok |= isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in v)
        if not ok:
            raise ValueError(
                f"layers {v!r}: expected 'a-b,c', a layer number or a list of layer numbers"
            )
        if v == []:
            raise ValueError("layers [] names no layer (leave layers out for every layer)")
        if isinstance(v, str):
            _parse_layers(v)
        return v

    @model_validator(mode="after")
    def _names_ops(self) -> _Rule:
        if self.ops == []:
            raise ValueError("ops [] names no op (leave ops out for every op)")
        return self

    def layer_set(self, n_layers: int) -> set[int]:
        """Layer numbers: a number or a list (negative counts from the end, as in Python) or
        "a-b,c"; ConfigError for layers outside the model."""
        if self.layers is None:
            return set(range(n_layers))
        if isinstance(self.layers, str):
            ids = {i for lo, hi in _parse_layers(self.layers) for i in range(lo, hi + 1)}
        else:
            given = self.layers if isinstance(self.layers, list) else [self.layers]
            ids = {i + n_layers if i < 0 else i for i in given}
        bad = sorted(i for i in ids if not 0 <= i < n_layers)
        if bad:
            raise ConfigError(f"layers {self.layers!r} name layers {bad} outside 0..{n_layers - 1}")
        return ids


class AttentionSparsity(Frozen):
    """Prefill attention mask. ``dense``: causal. ``block``: causal at 64x64-block granularity
    where a query block sees the first ``global_blocks`` key blocks and the ``local_blocks``
    nearest (its own included); inside a kept diagonal block the mask stays causal. Decode
    attention is always dense."""

    pattern: Literal["dense", "block"] = "dense"
    block: PositiveInt = 64
    local_blocks: PositiveInt = 4
    global_blocks: NonNegativeInt = 1


PruneMethod = Literal["magnitude", "wanda", "sparsegpt"]
QuantMethod = Literal["rtn", "search", "gptq", "gptq-search"]


class CompressionMethod(Frozen):
    """How weights are pruned and quantized (:mod:`hwflow.prune`, :mod:`hwflow.wquant`,
    :mod:`hwflow.smooth`). Defaults are the data-free baseline: magnitude N:M, round to
    nearest with per-channel scales, no smoothing.

    ``group``: one weight scale per output row and run of ``group`` inputs (a power of two,
    a multiple of the op's M, dividing its reduction length) for every linear op of the
    layers; ``weights``/``rules`` may set ``group`` per op instead (a size, or ``channel``
    for per-row scales), ``lm_head`` its own. ``smooth``: the SmoothQuant alpha in [0, 1], applied wherever the
    factors fold into weights (the norms' consumers, o through v, down through up).
    ``keys``: ``static`` (q, k and the KV cache INT8 at static per-head scales) or ``rotated``
    (RoPE models: q and k rotated by a Hadamard transform after RoPE, keys INT8 with one
    dynamic scale per token and head; :mod:`hwflow.numerics`, "Rotated keys").
    """

    prune: PruneMethod = "magnitude"
    quant: QuantMethod = "rtn"
    group: PositiveInt | None = None
    smooth: UnitInterval | None = None
    keys: Literal["static", "rotated"] = "static"

    @field_validator("group")
    @classmethod
    def _group_pow2(cls, v: int | None) -> int | None:
        if v is not None and not pow2(v):
            raise ValueError("must be a power of two, e.g. 64 or 128")
        return v


class CompressionPlan(Frozen):
    """Compression of a whole model. ``weights`` is the default for every linear op of every
    layer; ``rules`` override it in order (later rules win); ``lm_head`` is separate."""

    name: str
    description: str = ""
    weights: _QuantSpec = _QuantSpec(bits=8, sparsity="dense")
    rules: tuple[_Rule, ...] = ()
    lm_head: _QuantSpec = _QuantSpec(bits=8, sparsity="dense")
    attention: AttentionSparsity = AttentionSparsity()
    method: CompressionMethod = CompressionMethod()
    activation_bits: Literal[8] = 8
    kv_bits: Literal[8] = 8

    @model_validator(mode="after")
    def _ops_known(self) -> CompressionPlan:
        for r in self.rules:
            bad = [o for o in (r.ops or []) if o not in LINEAR_OPS]
            if bad:
                raise ValueError(f"rule ops {bad} unknown (allowed: {list(LINEAR_OPS)})")
        return self

    def resolve(self, model: ModelConfig) -> dict[tuple[int, str], LinearQuant]:
        """The compression of every (layer, linear op) of ``model``; UnsupportedError when an
        N:M pattern (of an op or of the head) does not tile the reduction length it prunes."""
        base = self.weights.apply(LinearQuant(bits=8, n=1, m=1, group=self.method.group))
        out = {(li, op): base for li in range(model.layers) for op in model.linear_ops}
        for i, rule in enumerate(self.rules):
            ops = rule.ops or list(model.linear_ops)
            try:
                layers = rule.layer_set(model.layers)
            except ConfigError as e:
                raise ConfigError(
                    f"plan {self.name}, rules[{i}]: {e} ({model.name} has {model.layers} layers)"
                ) from None
            for li in layers:
                for op in ops:
                    if op in model.linear_ops:
                        out[(li, op)] = rule.apply(out[(li, op)])
        for (li, op), q in out.items():
            self._tiles(q, model.linear_shape(op)[1], f"L{li}.{op}")
        self._tiles(self.head(), model.hidden, "head")
        return out

    def _tiles(self, q: LinearQuant, k: int, where: str) -> None:
        if k % q.m:
            raise UnsupportedError(
                f"plan {self.name}, {where}: {q.n}:{q.m} sparsity prunes groups of {q.m} "
                f"along a reduction of {k}, not a multiple of {q.m}"
            )
        group = q.group
        if group is not None and k % group:
            raise UnsupportedError(
                f"plan {self.name}, {where}: weight group {group} does not divide the "
                f"reduction length {k} (allowed: a power of two dividing {k}, or 'channel')"
            )
        if group is not None and group % q.m:
            raise UnsupportedError(
                f"plan {self.name}, {where}: weight group {group} is not a multiple of the "
                f"{q.n}:{q.m} sparsity block M = {q.m} (a group must be whole blocks)"
            )

    def head(self) -> LinearQuant:
        return self.lm_head.apply(LinearQuant(bits=8, n=1, m=1))
