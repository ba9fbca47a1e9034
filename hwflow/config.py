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
  and per linear op, attention sparsity for prefill, activation and KV-cache precision.

Names resolve to files under ``mappings/``; anything else is read as a path.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hwflow.errors import ConfigError, UnsupportedError

__all__ = [
    "LINEAR_OPS",
    "MAPPINGS",
    "AttentionSparsity",
    "Board",
    "Buffers",
    "CompressionPlan",
    "HardwarePreset",
    "Hbm",
    "LinearQuant",
    "ModelConfig",
    "available",
    "load_hw",
    "load_model",
    "load_plan",
]

MAPPINGS = Path(
    os.environ.get("HWFLOW_MAPPINGS", Path(__file__).resolve().parent.parent / "mappings")
)

#: The linear (weight-bearing) ops of one decoder layer, in execution order. ``gate`` exists
#: only in gated-MLP families (LLaMA/Mistral); OPT has ``up`` (fc1) and ``down`` (fc2).
LINEAR_OPS = ("q", "k", "v", "o", "gate", "up", "down")
#: Weight precisions the numeric reference implements.
WEIGHT_BITS = (2, 3, 4, 8)


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


PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(gt=0, le=1)]


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
    uram: Annotated[int, Field(ge=0)]
    board_power_w: PositiveFloat | None = None  # maximum board power, where published

    @property
    def onchip_bytes(self) -> int:
        """Total block RAM + UltraRAM capacity in bytes (36 Kib BRAM, 288 Kib URAM)."""
        return (self.bram36 * 36 * 1024 + self.uram * 288 * 1024) // 8


class Hbm(_Sourced):
    """High-bandwidth memory: pseudo-channels, their peak rate, efficiency and latency."""

    channels: PositiveInt
    channel_gbps: PositiveFloat  # peak GB/s (1e9 bytes/s) of one pseudo-channel
    capacity_gib: PositiveFloat
    efficiency_same_channel: Fraction  # sustained / peak for a sequential stream in one channel
    efficiency_cross_channel: Fraction  # sustained / peak when a stream crosses channels
    latency_ns: PositiveFloat  # first-beat latency of a read burst
    interleave_bytes: PositiveInt  # address-interleave granule across channels used by hwflow

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
        return self


class Engine(_Sourced):
    """A DSP-chain engine: ``chains`` chains of ``chain_length`` DSP stages.

    For the matrix-vector engine ``rows`` is 1. For the matrix-matrix engine ``rows`` tokens
    share each weight; with ``dual_int8`` two tokens share one DSP (Xilinx WP486 packing), so
    the engine uses ``chains * chain_length * rows / 2`` DSPs.
    """

    chains: PositiveInt
    chain_length: PositiveInt
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
    n_allowed: tuple[int, ...]

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
    weight_bits: tuple[int, ...]
    kv_bits: Literal[8] = 8
    buffers: Buffers
    energy_table: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> HardwarePreset:
        bad = [b for b in self.weight_bits if b not in WEIGHT_BITS]
        if bad:
            raise ValueError(f"weight_bits {bad} not supported (allowed: {list(WEIGHT_BITS)})")
        for eng in ("mv", "mpe"):
            c = getattr(self, eng).chain_length
            bad_n = [n for n in self.sparsity.n_allowed if c % n]
            if bad_n:
                raise ValueError(
                    f"sparsity.n_allowed {bad_n} do not divide {eng}.chain_length = {c}: a chain is"
                    " cut into segments of N stages"
                )
        used = self.mv.dsps + self.mpe.dsps
        if used > self.board.dsp_count:
            raise ValueError(
                f"mv + mpe need {used} DSPs but board {self.board.part} has {self.board.dsp_count}"
            )
        need = sum(getattr(self.buffers, f) for f in Buffers.model_fields if f.endswith("_kib"))
        have = self.board.onchip_bytes // 1024
        if need > have:
            raise ValueError(f"buffers need {need} KiB but board {self.board.part} has {have} KiB")
        return self

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
            allowed = ", ".join(f"{k}:{self.sparsity.m}" for k in self.sparsity.n_allowed)
            raise UnsupportedError(
                f"preset {self.name} does not support {n}:{m} sparsity (allowed: {allowed}, or dense)"
            )


# --------------------------------------------------------------------------------------------
# Model configs (Hugging Face config.json)

_LLAMA_TYPES = {"llama", "mistral"}
_OPT_TYPES = {"opt"}
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "OPTForCausalLM")


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
    def from_hf(cls, cfg: dict[str, Any], name: str) -> ModelConfig:
        """Normalise a Hugging Face config.json dict. Unknown keys are ignored."""
        if not isinstance(cfg, dict):
            raise ConfigError(
                f"{name}: a config.json must hold a JSON object, got {type(cfg).__name__}"
            )
        mtype = str(cfg.get("model_type", "")).lower()
        archs = cfg.get("architectures") or []
        arch = archs[0] if archs else mtype or "<none>"
        if mtype not in _LLAMA_TYPES | _OPT_TYPES:
            raise UnsupportedError(
                f"unsupported architecture: {arch} (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
            )

        def need(key: str) -> Any:
            if key not in cfg:
                raise ConfigError(f"{name}: config.json of model_type {mtype!r} lacks {key!r}")
            return cfg[key]

        try:
            if mtype in _LLAMA_TYPES:
                heads = need("num_attention_heads")
                hidden = need("hidden_size")
                act = cfg.get("hidden_act", "silu")
                if act not in ("silu", "swish"):
                    raise UnsupportedError(
                        f"{name}: hidden_act {act!r} unsupported for {mtype} (supported: silu)"
                    )
                if cfg.get("rope_scaling"):
                    raise UnsupportedError(
                        f"{name}: rope_scaling {cfg['rope_scaling']!r} unsupported (supported: none)"
                    )
                return cls(
                    name=name,
                    family="llama",
                    hidden=hidden,
                    intermediate=need("intermediate_size"),
                    layers=need("num_hidden_layers"),
                    heads=heads,
                    kv_heads=cfg.get("num_key_value_heads") or heads,
                    head_dim=cfg.get("head_dim") or hidden // heads,
                    vocab=need("vocab_size"),
                    max_positions=cfg.get("max_position_embeddings", 2048),
                    norm="rms",
                    norm_eps=cfg.get("rms_norm_eps", 1e-6),
                    activation="silu",
                    gated_mlp=True,
                    positions="rope",
                    rope_theta=cfg.get("rope_theta", 10000.0),
                    bias=bool(cfg.get("attention_bias", False) or cfg.get("mlp_bias", False)),
                    tie_word_embeddings=cfg.get("tie_word_embeddings", False),
                    sliding_window=cfg.get("sliding_window"),
                )
            heads = need("num_attention_heads")
            hidden = need("hidden_size")
            if cfg.get("word_embed_proj_dim", hidden) != hidden:
                raise UnsupportedError(
                    f"{name}: word_embed_proj_dim {cfg['word_embed_proj_dim']} != hidden_size {hidden} unsupported"
                )
            if not cfg.get("do_layer_norm_before", True):
                raise UnsupportedError(
                    f"{name}: post-LayerNorm OPT (do_layer_norm_before=false) unsupported"
                )
            act = cfg.get("activation_function", "relu")
            if act != "relu":
                raise UnsupportedError(
                    f"{name}: activation_function {act!r} unsupported for opt (supported: relu)"
                )
            return cls(
                name=name,
                family="opt",
                hidden=hidden,
                intermediate=need("ffn_dim"),
                layers=need("num_hidden_layers"),
                heads=heads,
                kv_heads=heads,
                head_dim=hidden // heads,
                vocab=need("vocab_size"),
                max_positions=cfg.get("max_position_embeddings", 2048),
                norm="layer",
                norm_eps=1e-5,
                activation="relu",
                gated_mlp=False,
                positions="learned",
                bias=cfg.get("enable_bias", True),
                tie_word_embeddings=cfg.get("tie_word_embeddings", True),
                position_offset=2,
            )
        except ValidationError as e:
            raise ConfigError(f"{name}: {_first_error(e)}") from None


# --------------------------------------------------------------------------------------------
# Compression plans


class LinearQuant(_Frozen):
    """How one linear op's weights are compressed: INT``bits``, N:M sparsity along K."""

    bits: Literal[2, 3, 4, 8]
    n: PositiveInt
    m: PositiveInt

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
        return f"W{self.bits}" + ("" if self.dense else f" {self.n}:{self.m}")


_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def _parse_nm(value: Any) -> tuple[int, int]:
    if value in (None, "dense"):
        return (1, 1)
    m = _NM.match(str(value))
    if not m:
        raise ValueError(f"sparsity {value!r} is not 'N:M' or 'dense'")
    return int(m.group(1)), int(m.group(2))


class _QuantSpec(_Frozen):
    bits: Literal[2, 3, 4, 8] | None = None
    sparsity: str | None = None  # "N:M" or "dense"

    def apply(self, base: LinearQuant) -> LinearQuant:
        bits = self.bits or base.bits
        if self.sparsity is None:
            n, m = base.n, base.m
        else:
            n, m = _parse_nm(self.sparsity)
        try:
            return LinearQuant(bits=bits, n=n, m=m)
        except ValidationError as e:
            raise ConfigError(_first_error(e)) from None


class _Rule(_QuantSpec):
    layers: str | list[int] | None = None  # "0-3", "0,31", [0, 31], or None = all
    ops: list[str] | None = None  # subset of LINEAR_OPS, or None = all

    def layer_set(self, n_layers: int) -> set[int]:
        """Layer numbers: a list (negative counts from the end, as in Python) or "a-b,c"."""
        if self.layers is None:
            return set(range(n_layers))
        if isinstance(self.layers, list):
            ids = {i + n_layers if i < 0 else i for i in self.layers}
        else:
            ids = set()
            for part in str(self.layers).split(","):
                m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
                if not m:
                    raise ConfigError(f"layers {self.layers!r}: expected 'a-b,c' of layer numbers")
                lo = int(m.group(1))
                ids |= set(range(lo, int(m.group(2) or lo) + 1))
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
    global_blocks: Annotated[int, Field(ge=0)] = 1


class CompressionPlan(_Frozen):
    """Compression of a whole model. ``weights`` is the default for every linear op of every
    layer; ``rules`` override it in order (later rules win); ``lm_head`` is separate."""

    name: str
    description: str = ""
    weights: _QuantSpec = _QuantSpec(bits=8, sparsity="dense")
    rules: tuple[_Rule, ...] = ()
    lm_head: _QuantSpec = _QuantSpec(bits=8, sparsity="dense")
    attention: AttentionSparsity = AttentionSparsity()
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
        """The compression of every (layer, linear op) of ``model``."""
        base = self.weights.apply(LinearQuant(bits=8, n=1, m=1))
        out = {(li, op): base for li in range(model.layers) for op in model.linear_ops}
        for rule in self.rules:
            ops = rule.ops or list(model.linear_ops)
            for li in rule.layer_set(model.layers):
                for op in ops:
                    if op in model.linear_ops:
                        out[(li, op)] = rule.apply(out[(li, op)])
        return out

    def head(self) -> LinearQuant:
        return self.lm_head.apply(LinearQuant(bits=8, n=1, m=1))


# --------------------------------------------------------------------------------------------
# Loading


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return f"unknown key {loc!r}"
    if err["type"] == "missing":
        return f"missing key {loc!r}"
    got = err.get("input")
    head = f"{loc}: " if loc else ""
    return f"{head}{msg}" + (
        "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
    )


def _resolve(kind: str, ref: str | Path, suffixes: tuple[str, ...]) -> Path:
    p = Path(ref)
    if p.is_file():
        return p
    if isinstance(ref, str) and "/" not in ref:
        for suf in suffixes:
            cand = MAPPINGS / kind / f"{ref}{suf}"
            if cand.is_file():
                return cand
    names = ", ".join(available(kind))
    raise ConfigError(
        f"{kind[:-1] if kind != 'hw' else 'hardware preset'} {str(ref)!r} not found (shipped: {names}; or give a file path)"
    )


def available(kind: str) -> list[str]:
    """Names of the shipped files of one kind: 'hw', 'models' or 'plans'."""
    folder = MAPPINGS / kind
    return (
        sorted(p.stem for p in folder.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
        if folder.is_dir()
        else []
    )


def _read(path: Path) -> Any:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read ({e})") from None
    try:
        if path.suffix == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None
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
    """A model by shipped name (``llama2-7b``) or the path of a HF config.json."""
    path = _resolve("models", ref, (".json",))
    data = _read(path)
    name = path.stem if path.name != "config.json" else path.parent.name
    return ModelConfig.from_hf(data, name)


def load_plan(ref: str | Path) -> CompressionPlan:
    """A compression plan by shipped name (``w4a8``) or by path."""
    path = _resolve("plans", ref, (".yaml", ".yml"))
    return _validate(CompressionPlan, _read(path), path)
