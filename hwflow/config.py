"""Validated, frozen configuration objects: hardware presets, model configs, compression plans.

YAML and JSON are read only here, at the edge. Everything downstream (compiler, simulators,
RTL generator) receives the frozen pydantic objects defined below and never a dict.

Three kinds of input:

* a **hardware preset** (``mappings/hw/*.yaml``): the accelerator's parallelism, buffers, HBM and
  board facts. Every number carries its source: each section has a ``sources`` mapping and a
  preset is refused if a numeric field of a section has no source entry.
* a **model config**: a Hugging Face ``config.json`` of the LLaMA/Mistral or OPT family, read as
  it is (unknown keys of a HF config are ignored, since HF configs carry many), or one shipped
  under ``mappings/models``.
* a **compression plan** (``mappings/plans/*.yaml``): weight precision and N:M sparsity per layer
  and per linear op, attention sparsity for prefill, activation and KV-cache precision, and
  the ``method`` that prunes and quantizes real weights (magnitude/Wanda/SparseGPT; RTN, scale
  search, GPTQ; group-wise scales; SmoothQuant).

Names resolve to files under ``mappings/``; anything else is read as a path (for a model, also a
Hugging Face model folder holding a ``config.json``). Input is strict: a key given twice, a key
no schema knows (outside HF configs), a bool or a string where a number belongs, a non-finite
float are errors; every error is one :class:`~hwflow.errors.HwflowError` line naming the file,
the key, the value given and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from hwflow.errors import ConfigError, UnsupportedError

__all__ = [
    "LINEAR_OPS",
    "MAPPINGS",
    "AttentionSparsity",
    "Board",
    "Buffers",
    "CompressionMethod",
    "CompressionPlan",
    "Frozen",
    "HardwarePreset",
    "Hbm",
    "LinearQuant",
    "ModelConfig",
    "Sourced",
    "available",
    "first_error",
    "load_hw",
    "load_model",
    "load_plan",
    "read_data",
    "validate_data",
]

MAPPINGS = Path(
    os.environ.get("HWFLOW_MAPPINGS", Path(__file__).resolve().parent.parent / "mappings")
)

#: The linear (weight-bearing) ops of one decoder layer, in execution order. ``gate`` exists
#: only in gated-MLP families (LLaMA/Mistral); OPT has ``up`` (fc1) and ``down`` (fc2).
LINEAR_OPS = ("q", "k", "v", "o", "gate", "up", "down")
#: Weight precisions the numeric reference implements.
WEIGHT_BITS = (2, 3, 4, 8)
#: DSPs of one requantizer (hwflow.hw.requant: a 49-bit x 16-bit multiply): 3 DSP48E2 as
#: measured by Yosys synth_xilinx (``hwflow synth``); on DSP58 (27 x 24 multipliers) the
#: 59-bit operand also splits in three, counted structurally.
REQUANT_DSPS = 3


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Sourced(_Frozen):
    """A preset section whose every numeric field must cite its source in ``sources``."""

    sources: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _every_number_has_a_source(self) -> _Sourced:
        for name in type(self).model_fields:
            if name == "sources" or name not in self.model_fields_set:
                continue  # defaults are structural (e.g. rows = 1 for matrix-vector)
            value = getattr(self, name)
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            numeric |= isinstance(value, tuple) and all(isinstance(v, int | float) for v in value)
            if numeric and not self.sources.get(name, "").strip():
                raise ValueError(
                    f"{type(self).__name__.lower()}.{name} = {value!r} has no source: add "
                    f"'sources: {{{name}: \"datasheet, paper or derivation\"}}'"
                )
        unknown = set(self.sources) - set(type(self).model_fields)
        if unknown:
            raise ValueError(f"sources name unknown fields {sorted(unknown)}")
        return self


# Numbers are strict: a bool or a string is not a number (``chains: true`` or ``bits: "4"`` is
# a mistake, not a 1 or a 4), and a float must be finite.
PositiveInt = Annotated[StrictInt, Field(gt=0)]
NonNegativeInt = Annotated[StrictInt, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0, strict=True, allow_inf_nan=False)]
Fraction = Annotated[float, Field(gt=0, le=1, strict=True, allow_inf_nan=False)]
UnitInterval = Annotated[float, Field(ge=0, le=1, strict=True, allow_inf_nan=False)]


def _pow2(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


# --------------------------------------------------------------------------------------------
# Hardware presets


class Board(_Sourced):
    """The FPGA part and board: resource totals and limits, for fit checks and energy."""

    part: str
    family: Literal["ultrascale_plus", "versal"]
    dsp_kind: Literal["DSP48E2", "DSP58"]
    dsp_count: PositiveInt
    bram36: PositiveInt
    uram: NonNegativeInt
    board_power_w: PositiveFloat | None = None  # maximum board power, where published

    @property
    def onchip_bytes(self) -> int:
        """Total block RAM + UltraRAM capacity in bytes (36 Kib BRAM, 288 Kib URAM)."""
        return (self.bram36 * 36 * 1024 + self.uram * 288 * 1024) // 8


class Hbm(_Sourced):
    """High-bandwidth memory: pseudo-channels, their peak rate, and the facts the bandwidth
    model of :mod:`hwflow.costs` derives sustained rates from (no efficiency constant: see
    :func:`hwflow.costs.hbm_burst_ns`)."""

    channels: PositiveInt
    channel_gbps: PositiveFloat  # peak GB/s (1e9 bytes/s) of one pseudo-channel
    capacity_gib: PositiveFloat
    latency_ns: PositiveFloat  # first-beat latency of a read burst (page hit)
    interleave_bytes: PositiveInt  # address-interleave granule across channels used by hwflow
    port_bits: PositiveInt  # data width of the LD/ST unit's port on one channel
    port_mhz: PositiveFloat  # clock of that port
    max_burst_bytes: PositiveInt  # largest burst one AXI transaction carries
    outstanding: PositiveInt  # read bursts the LD/ST unit keeps in flight per channel
    refresh_interval_ns: PositiveFloat  # tREFI: one refresh per interval
    refresh_ns: PositiveFloat  # tRFC: the channel is blocked this long per refresh
    row_miss_ns: Annotated[float, Field(ge=0, strict=True, allow_inf_nan=False)]  # new-row cost
    turnaround_ns: Annotated[float, Field(ge=0, strict=True, allow_inf_nan=False)]  # rd<->wr

    @property
    def peak_gbps(self) -> float:
        return self.channels * self.channel_gbps

    @property
    def capacity_bytes(self) -> int:
        return int(self.capacity_gib * 2**30)

    @model_validator(mode="after")
    def _granule(self) -> Hbm:
        if not _pow2(self.interleave_bytes):
            raise ValueError(
                f"hbm.interleave_bytes = {self.interleave_bytes} must be a power of two"
            )
        if self.refresh_ns >= self.refresh_interval_ns:
            raise ValueError(
                f"hbm.refresh_ns = {self.refresh_ns} must be below hbm.refresh_interval_ns ="
                f" {self.refresh_interval_ns} (tRFC < tREFI)"
            )
        if self.port_bits % 8:
            raise ValueError(f"hbm.port_bits = {self.port_bits} must be a whole number of bytes")
        return self


class Engine(_Sourced):
    """A DSP-chain engine: ``chains`` chains of ``chain_length`` DSP stages.

    For the matrix-vector engine ``rows`` is 1. For the matrix-matrix engine ``rows`` tokens
    share each weight; with ``dual_int8`` two tokens share one DSP (Xilinx WP486 packing), so
    the engine uses ``chains * chain_length * rows / 2`` DSPs.
    """

    chains: PositiveInt
    chain_length: PositiveInt
    #: requantizers shared by the engine's output lanes: a row group's results are captured
    #: in an output buffer and drain through them ``requantizers`` values per cycle
    #: (:func:`hwflow.costs.matmul_cost` charges the drain)
    requantizers: PositiveInt
    rows: PositiveInt = 1
    dual_int8: bool = False

    @property
    def macs_per_cycle(self) -> int:
        """Dense-equivalent multiply-accumulates per cycle at N = M (no sparsity)."""
        return self.chains * self.chain_length * self.rows

    @property
    def dsps(self) -> int:
        per_chain = self.chain_length * (self.rows // 2 if self.dual_int8 else self.rows)
        return self.chains * per_chain

    @model_validator(mode="after")
    def _dual(self) -> Engine:
        if self.dual_int8 and self.rows % 2:
            raise ValueError(f"dual_int8 packs two tokens per DSP: rows = {self.rows} must be even")
        return self


class Sfu(_Sourced):
    """Special-function unit: ``lanes`` elements per cycle; multi-pass functions (softmax,
    normalisation) read their input ``passes`` times."""

    lanes: PositiveInt
    softmax_passes: PositiveInt
    norm_passes: PositiveInt
    latency: PositiveInt  # pipeline depth in cycles


class Sparsity(_Sourced):
    """The N:M patterns the DSP chain supports: M is the activation block broadcast to a chain,
    N the kept weights per block (N = M is dense). N must divide the chain length."""

    m: PositiveInt
    n_allowed: tuple[StrictInt, ...]

    @model_validator(mode="after")
    def _check(self) -> Sparsity:
        if not _pow2(self.m):
            raise ValueError(f"sparsity.m = {self.m} must be a power of two")
        bad = [n for n in self.n_allowed if not 1 <= n <= self.m]
        if bad:
            raise ValueError(f"sparsity.n_allowed {bad} must lie in 1..m={self.m}")
        return self

    @property
    def index_bits(self) -> int:
        return int(math.log2(self.m))


class Buffers(_Sourced):
    """On-chip buffer capacities in KiB (each built from BRAM/URAM of the board)."""

    weight_kib: PositiveInt  # weight tiles, double-buffered by the compiler (half each)
    act_kib: PositiveInt  # activations; decode keeps a whole step's activations here
    kv_kib: PositiveInt  # K/V tiles streamed for attention
    score_kib: PositiveInt  # attention scores / probabilities
    param_kib: PositiveInt  # requantization tables, LUTs, RoPE rows
    instr_kib: PositiveInt  # instruction memory
    #: decoded-instruction queue entries per unit (the dispatcher stalls when one is full);
    #: 64 x 9-word entries = 18 Kib, half a BRAM36 per unit
    queue_entries: PositiveInt = 64

    def bytes(self, name: str) -> int:
        return getattr(self, f"{name}_kib") * 1024


class HardwarePreset(_Sourced):
    """One accelerator design point on one board."""

    name: str
    description: str
    clock_mhz: PositiveFloat
    board: Board
    hbm: Hbm
    mv: Engine
    mpe: Engine
    sfu: Sfu
    sparsity: Sparsity
    weight_bits: tuple[StrictInt, ...]
    kv_bits: Literal[8] = 8
    buffers: Buffers
    energy_table: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> HardwarePreset:
        bad = [b for b in self.weight_bits if b not in WEIGHT_BITS]
        if bad or not self.weight_bits:
            raise ValueError(
                f"weight_bits {list(self.weight_bits)} not supported (allowed: a non-empty "
                f"subset of {list(WEIGHT_BITS)})"
            )
        for eng in ("mv", "mpe"):
            c = getattr(self, eng).chain_length
            bad_n = [n for n in self.sparsity.n_allowed if c % n]
            if bad_n:
                raise ValueError(
                    f"sparsity.n_allowed {bad_n} do not divide {eng}.chain_length = {c}: a chain is"
                    " cut into segments of N stages"
                )
        used = self.dsps_used
        if used > self.board.dsp_count:
            raise ValueError(
                f"mv + mpe need {used} DSPs but board {self.board.part} has "
                f"{self.board.dsp_count} (chain stages and requantizers)"
            )
        need = sum(getattr(self.buffers, f) for f in Buffers.model_fields if f.endswith("_kib"))
        have = self.board.onchip_bytes // 1024
        if need > have:
            raise ValueError(f"buffers need {need} KiB but board {self.board.part} has {have} KiB")
        return self

    @property
    def dsps_used(self) -> int:
        """DSPs of both engines: every chain stage and every requantizer."""
        rq = (self.mv.requantizers + self.mpe.requantizers) * REQUANT_DSPS
        return self.mv.dsps + self.mpe.dsps + rq

    @property
    def clock_hz(self) -> float:
        return self.clock_mhz * 1e6

    @property
    def hbm_bytes_per_cycle(self) -> float:
        """Peak HBM bytes per accelerator clock cycle, all channels."""
        return self.hbm.peak_gbps * 1e9 / self.clock_hz

    @cached_property
    def digest(self) -> str:
        """SHA-256 of the preset's canonical JSON: programs record it and are refused elsewhere."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def check_plan_support(self, bits: int, n: int, m: int) -> None:
        """Raise UnsupportedError unless this preset runs INT``bits`` weights at N:M = n:m."""
        if bits not in self.weight_bits:
            raise UnsupportedError(
                f"preset {self.name} does not support INT{bits} weights (allowed: {list(self.weight_bits)})"
            )
        if n == m:  # dense works at any M by grouping the row into chain-length segments
            return
        if m != self.sparsity.m or n not in self.sparsity.n_allowed:
            kept = [f"{k}:{self.sparsity.m}" for k in self.sparsity.n_allowed]
            allowed = ", ".join([*kept, "or dense"]) if kept else "dense only"
            raise UnsupportedError(
                f"preset {self.name} does not support {n}:{m} sparsity (allowed: {allowed})"
            )


# --------------------------------------------------------------------------------------------
# Model configs (Hugging Face config.json)

_LLAMA_TYPES = {"llama", "mistral"}
#: The Hugging Face classes hwflow reads, and their model_type.
_ARCH_TYPES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "OPTForCausalLM": "opt",
}
#: ModelConfig field -> the config.json key it comes from (for error messages).
_HF_KEYS = {
    "hidden": "hidden_size",
    "intermediate": "intermediate_size",
    "layers": "num_hidden_layers",
    "vocab": "vocab_size",
    "max_positions": "max_position_embeddings",
    "norm_eps": "rms_norm_eps",
    "bias": "enable_bias",
}


class ModelConfig(_Frozen):
    """The decoder-only transformer shape hwflow needs, normalised across families."""

    name: str
    family: Literal["llama", "opt"]
    hidden: PositiveInt
    intermediate: PositiveInt
    layers: PositiveInt
    heads: PositiveInt
    kv_heads: PositiveInt
    head_dim: PositiveInt
    vocab: PositiveInt
    max_positions: PositiveInt
    norm: Literal["rms", "layer"]
    norm_eps: PositiveFloat
    activation: Literal["silu", "relu"]
    gated_mlp: bool
    positions: Literal["rope", "learned"]
    rope_theta: float = 10000.0
    bias: bool
    tie_word_embeddings: bool = False
    sliding_window: int | None = None
    position_offset: int = 0  # OPT's learned positions start at index 2

    @model_validator(mode="after")
    def _shapes(self) -> ModelConfig:
        if self.heads % self.kv_heads:
            raise ValueError(
                f"num_attention_heads {self.heads} is not a multiple of num_key_value_heads {self.kv_heads}"
            )
        if self.positions == "rope" and self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {self.head_dim}")
        return self

    @property
    def params(self) -> int:
        """Weights of every layer's linear ops plus the embedding and the head (as if untied;
        biases and norms left out): the size the float64 reference must hold."""
        per_layer = sum(o * i for o, i in map(self.linear_shape, self.linear_ops))
        return self.layers * per_layer + 2 * self.vocab * self.hidden

    @property
    def linear_ops(self) -> tuple[str, ...]:
        return LINEAR_OPS if self.gated_mlp else tuple(o for o in LINEAR_OPS if o != "gate")

    def linear_shape(self, op: str) -> tuple[int, int]:
        """(output features, input features) of a linear op: the weight is [out, in]."""
        d, f, kv = self.hidden, self.intermediate, self.kv_heads * self.head_dim
        shapes = {
            "q": (self.heads * self.head_dim, d),
            "k": (kv, d),
            "v": (kv, d),
            "o": (d, self.heads * self.head_dim),
            "gate": (f, d),
            "up": (f, d),
            "down": (d, f),
        }
        if op not in self.linear_ops:
            raise ConfigError(
                f"op {op!r} is not a linear op of {self.family} (allowed: {list(self.linear_ops)})"
            )
        return shapes[op]

    @classmethod
    def from_hf(cls, cfg: dict[str, Any], name: str, source: str | None = None) -> ModelConfig:
        """Normalise a Hugging Face config.json dict. Unknown keys are ignored. Errors name
        ``source`` (the file; default ``name``), the bad key and value, and what is allowed."""
        src = source or name
        if not isinstance(cfg, dict):
            raise ConfigError(
                f"{src}: a config.json must hold a JSON object, got {type(cfg).__name__}"
            )
        archs = cfg.get("architectures")
        arch = archs[0] if isinstance(archs, list) and archs else None
        mtype = cfg.get("model_type")
        if mtype is None and arch in _ARCH_TYPES:
            mtype = _ARCH_TYPES[arch]  # an old or hand-written config: the class names it
        if not isinstance(mtype, str) or mtype.lower() not in _ARCH_TYPES.values():
            if arch in _ARCH_TYPES:
                raise ConfigError(
                    f"{src}: model_type {mtype!r} does not match architectures {arch} "
                    f"(expected {_ARCH_TYPES[arch]!r})"
                )
            raise UnsupportedError(
                f"{src}: unsupported architecture: "
                f"{arch if isinstance(arch, str) else f'model_type {mtype!r}'} "
                f"(supported: {', '.join(_ARCH_TYPES)})"
            )
        mtype = mtype.lower()

        def need(key: str) -> Any:
            if key not in cfg:
                raise ConfigError(f"{src}: config.json of model_type {mtype!r} lacks {key!r}")
            return cfg[key]

        def count(key: str, value: Any) -> int:
            """A positive integer the shape arithmetic below needs before validation."""
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{src}: {key} = {value!r} must be a positive integer")
            return value

        heads = count("num_attention_heads", need("num_attention_heads"))
        hidden = count("hidden_size", need("hidden_size"))

        def head_dim() -> int:
            if cfg.get("head_dim") is not None:
                return count("head_dim", cfg["head_dim"])
            if hidden % heads:
                raise ConfigError(
                    f"{src}: hidden_size {hidden} is not a multiple of num_attention_heads "
                    f"{heads} (give head_dim explicitly)"
                )
            return hidden // heads

        if mtype in _LLAMA_TYPES:
            act = cfg.get("hidden_act", "silu")
            if act not in ("silu", "swish"):
                raise UnsupportedError(
                    f"{src}: hidden_act {act!r} unsupported for {mtype} (supported: silu)"
                )
            scaling = cfg.get("rope_scaling")
            if scaling and not (
                isinstance(scaling, dict)
                and scaling.get("rope_type", scaling.get("type")) == "default"
            ):
                raise UnsupportedError(
                    f"{src}: rope_scaling {scaling!r} unsupported (supported: none or "
                    "rope_type 'default')"
                )
            kv = cfg.get("num_key_value_heads")
            family: dict[str, Any] = {
                "family": "llama",
                "intermediate": need("intermediate_size"),
                "kv_heads": heads if kv is None else count("num_key_value_heads", kv),
                "norm": "rms",
                "norm_eps": cfg.get("rms_norm_eps", 1e-6),
                "activation": "silu",
                "gated_mlp": True,
                "positions": "rope",
                "rope_theta": cfg.get("rope_theta", 10000.0),
                "bias": bool(cfg.get("attention_bias", False) or cfg.get("mlp_bias", False)),
                "tie_word_embeddings": cfg.get("tie_word_embeddings", False),
                "sliding_window": cfg.get("sliding_window"),
            }
            keys = _HF_KEYS
        else:
            proj = cfg.get("word_embed_proj_dim", hidden)
            if proj != hidden:
                raise UnsupportedError(
                    f"{src}: word_embed_proj_dim {proj!r} != hidden_size {hidden} unsupported "
                    "(supported: equal, no embedding projection)"
                )
            if not cfg.get("do_layer_norm_before", True):
                raise UnsupportedError(
                    f"{src}: post-LayerNorm OPT (do_layer_norm_before=false) unsupported "
                    "(supported: true)"
                )
            if cfg.get("_remove_final_layer_norm", False):
                raise UnsupportedError(
                    f"{src}: OPT without a final LayerNorm (_remove_final_layer_norm=true) "
                    "unsupported (supported: false)"
                )
            act = cfg.get("activation_function", "relu")
            if act != "relu":
                raise UnsupportedError(
                    f"{src}: activation_function {act!r} unsupported for opt (supported: relu)"
                )
            family = {
                "family": "opt",
                "intermediate": need("ffn_dim"),
                "kv_heads": heads,
                "norm": "layer",
                "norm_eps": 1e-5,
                "activation": "relu",
                "gated_mlp": False,
                "positions": "learned",
                "bias": cfg.get("enable_bias", True),
                "tie_word_embeddings": cfg.get("tie_word_embeddings", True),
                "position_offset": 2,  # OPT's learned positions start at index 2
            }
            keys = {**_HF_KEYS, "intermediate": "ffn_dim"}
        try:
            return cls(
                name=name,
                hidden=hidden,
                heads=heads,
                head_dim=head_dim(),
                layers=need("num_hidden_layers"),
                vocab=need("vocab_size"),
                max_positions=cfg.get("max_position_embeddings", 2048),
                **family,
            )
        except ValidationError as e:
            raise ConfigError(f"{src}: {_first_error(e, keys)}") from None


# --------------------------------------------------------------------------------------------
# Compression plans


class LinearQuant(_Frozen):
    """How one linear op's weights are compressed: INT``bits``, N:M sparsity along K, and
    ``group``: one weight scale per output row and run of ``group`` inputs (None: per row;
    :mod:`hwflow.numerics`, weights)."""

    bits: Literal[2, 3, 4, 8]
    n: PositiveInt
    m: PositiveInt
    group: PositiveInt | None = None

    @model_validator(mode="after")
    def _nm(self) -> LinearQuant:
        if not _pow2(self.m):
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


def _parse_nm(value: Any) -> tuple[int, int]:
    """``"N:M"`` or ``"dense"`` -> (n, m); ValueError naming the value and what is allowed."""
    if value in (None, "dense"):
        return (1, 1)
    m = _NM.match(str(value))
    if not m:
        raise ValueError(f"sparsity {value!r} is not 'N:M' (e.g. '4:16') or 'dense'")
    n, mm = int(m.group(1)), int(m.group(2))
    if not _pow2(mm):
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


class _QuantSpec(_Frozen):
    bits: Literal[2, 3, 4, 8] | None = None
    sparsity: str | None = None  # "N:M" or "dense"
    group: PositiveInt | Literal["channel"] | None = None  # weight group size or per channel

    @field_validator("sparsity")
    @classmethod
    def _nm_valid(cls, v: str | None) -> str | None:
        _parse_nm(v)  # checked when the plan is read, so the error names the file and key
        return v

    @field_validator("group")
    @classmethod
    def _group_pow2(cls, v: int | str | None) -> int | str | None:
        if isinstance(v, int) and not _pow2(v):
            raise ValueError("must be a power of two (e.g. 32, 64 or 128) or 'channel'")
        return v

    def apply(self, base: LinearQuant) -> LinearQuant:
        bits = self.bits or base.bits
        n, m = (base.n, base.m) if self.sparsity is None else _parse_nm(self.sparsity)
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


class AttentionSparsity(_Frozen):
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


class CompressionMethod(_Frozen):
    """How weights are pruned and quantized (:mod:`hwflow.prune`, :mod:`hwflow.wquant`,
    :mod:`hwflow.smooth`). Defaults are the data-free baseline: magnitude N:M, round to
    nearest with per-channel scales, no smoothing.

    ``group``: one weight scale per output row and run of ``group`` inputs (a power of two,
    a multiple of the op's M, dividing its reduction length) for every linear op of the
    layers; ``weights``/``rules`` may set ``group`` per op instead (a size, or ``channel``
    for per-row scales), ``lm_head`` its own. ``smooth``: the SmoothQuant alpha in [0, 1].
    """

    prune: PruneMethod = "magnitude"
    quant: QuantMethod = "rtn"
    group: PositiveInt | None = None
    smooth: UnitInterval | None = None

    @field_validator("group")
    @classmethod
    def _group_pow2(cls, v: int | None) -> int | None:
        if v is not None and not _pow2(v):
            raise ValueError("must be a power of two, e.g. 64 or 128")
        return v


class CompressionPlan(_Frozen):
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


# --------------------------------------------------------------------------------------------
# Loading


def _first_error(e: ValidationError, keys: Mapping[str, str] | None = None) -> str:
    """One line for a validation error: where (``keys`` renames top-level fields), what is
    wrong and the value given."""
    err = e.errors()[0]
    parts = [str(p) for p in err["loc"]]
    if keys and parts:
        parts[0] = keys.get(parts[0], parts[0])
    loc = ".".join(parts)
    msg = err["msg"].removeprefix("Value error, ").replace("valid tuple", "valid list")
    if err["type"] == "extra_forbidden":
        return f"unknown key {loc!r}"
    if err["type"] == "missing":
        return f"missing key {loc!r}"
    got = err.get("input")
    head = f"{loc}: " if loc else ""
    quiet = (
        isinstance(got, dict | list) or "input" not in err or (isinstance(got, str) and got in msg)
    )
    return f"{head}{msg}" + ("" if quiet else f" (got {got!r})")


def _resolve(kind: str, ref: str | Path, suffixes: tuple[str, ...]) -> Path:
    """A file path as given, a Hugging Face model folder (its config.json), or the name of a
    shipped file (with or without its suffix); ConfigError listing the shipped names."""
    p = Path(ref)
    if p.is_file():
        return p
    if kind == "models" and (p / "config.json").is_file():
        return p / "config.json"  # a Hugging Face model folder
    if isinstance(ref, str) and "/" not in ref:
        for suf in ("", *suffixes):
            cand = MAPPINGS / kind / f"{ref}{suf}"
            if cand.is_file():
                return cand
    if p.is_dir():
        want = "a config.json or a folder holding one" if kind == "models" else "a YAML file"
        raise ConfigError(f"{p}: is a directory (expected {want})")
    names = ", ".join(available(kind))
    what = "hardware preset" if kind == "hw" else kind[:-1]
    raise ConfigError(f"{what} {str(ref)!r} not found (shipped: {names}; or give a file path)")


def available(kind: str) -> list[str]:
    """Names of the shipped files of one kind: 'hw', 'models' or 'plans'."""
    folder = MAPPINGS / kind
    return (
        sorted(p.stem for p in folder.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
        if folder.is_dir()
        else []
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, but a mapping naming one key twice is an error (the plain loader
    keeps the last value silently: a typo'd override would go unnoticed)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue  # merge keys (<<) may be overridden; the base class checks the rest
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r} in a JSON object")
        out[k] = v
    return out


def _read(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path}: not a text file (byte {e.start} is not UTF-8; expected YAML or JSON)"
        ) from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    if not text.strip():
        raise ConfigError(f"{path}: the file is empty (expected a YAML or JSON mapping)")
    if "\0" in text:
        raise ConfigError(f"{path}: not a text file (it holds NUL bytes; expected YAML or JSON)")
    try:
        if path.suffix == ".json":
            return json.loads(text, object_pairs_hook=_unique_pairs)
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None
    except ValueError as e:  # a duplicate key
        raise ConfigError(f"{path}: malformed JSON: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: malformed YAML{where}: {getattr(e, 'problem', e)}") from None


def _validate(cls: type[BaseModel], data: Any, path: Path) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{path}: {_first_error(e)}") from None


def load_hw(ref: str | Path) -> HardwarePreset:
    """A hardware preset by shipped name (``u280``) or by path."""
    path = _resolve("hw", ref, (".yaml", ".yml"))
    return _validate(HardwarePreset, _read(path), path)


def load_model(ref: str | Path) -> ModelConfig:
    """A model by shipped name (``llama2-7b``), the path of a HF config.json (or its folder),
    or a ``.gguf`` file (its metadata, :func:`hwflow.checkpoint.gguf_llama.gguf_config`)."""
    if Path(ref).suffix == ".gguf" and Path(ref).is_file():
        from hwflow.checkpoint.gguf_llama import gguf_config

        return gguf_config(Path(ref))
    path = _resolve("models", ref, (".json",))
    data = _read(path)
    name = path.stem if path.name != "config.json" else path.resolve().parent.name
    return ModelConfig.from_hf(data, name, str(path))


def load_plan(ref: str | Path) -> CompressionPlan:
    """A compression plan by shipped name (``w4a8``) or by path."""
    path = _resolve("plans", ref, (".yaml", ".yml"))
    return _validate(CompressionPlan, _read(path), path)


# Public names of the reading and validation helpers, for the modules that read data files of
# their own (energy tables, GPU references, sweep grids): one reader, one error format.
read_data = _read
validate_data = _validate
first_error = _first_error
Frozen = _Frozen
Sourced = _Sourced
