"""Model configs: a Hugging Face ``config.json`` of the LLaMA/Mistral or OPT family, read as
it is (unknown keys are ignored, since HF configs carry many), normalised to one shape."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ValidationError, model_validator

from hwflow.config.base import Frozen, PositiveFloat, PositiveInt, first_error
from hwflow.errors import ConfigError, UnsupportedError

__all__ = ["LINEAR_OPS", "ModelConfig"]

#: The linear (weight-bearing) ops of one decoder layer, in execution order. ``gate`` exists
#: only in gated-MLP families (LLaMA/Mistral); OPT has ``up`` (fc1) and ``down`` (fc2).
LINEAR_OPS = ("q", "k", "v", "o", "gate", "up", "down")

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


class ModelConfig(Frozen):
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
                f"num_attention_heads {self.heads} is not a multiple of num_key_value_heads "
                f"{self.kv_heads}"
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
        hf = _HfConfig(cfg, src, _model_type(cfg, src))
        heads = hf.count("num_attention_heads", hf.need("num_attention_heads"))
        hidden = hf.count("hidden_size", hf.need("hidden_size"))
        if hf.mtype in _LLAMA_TYPES:
            family, keys = _llama_fields(hf, heads), _HF_KEYS
        else:
            family, keys = _opt_fields(hf, heads, hidden), {**_HF_KEYS, "intermediate": "ffn_dim"}
        try:
            return cls(
                name=name,
                hidden=hidden,
                heads=heads,
                head_dim=hf.head_dim(hidden, heads),
                layers=hf.need("num_hidden_layers"),
                vocab=hf.need("vocab_size"),
                max_positions=cfg.get("max_position_embeddings", 2048),
                **family,
            )
        except ValidationError as e:
            raise ConfigError(f"{src}: {first_error(e, keys)}") from None


def _model_type(cfg: dict[str, Any], src: str) -> str:
    """The config's model_type, lower case (from its class when absent); ConfigError when the
    two disagree, UnsupportedError for a family hwflow does not read."""
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
    return mtype.lower()


class _HfConfig:
    """A config.json dict being read: its keys, with errors naming the file ``src``."""

    def __init__(self, cfg: dict[str, Any], src: str, mtype: str) -> None:
        self.cfg, self.src, self.mtype = cfg, src, mtype

    def get(self, key: str, default: Any = None) -> Any:
        return self.cfg.get(key, default)

    def need(self, key: str) -> Any:
        """A key the family requires; ConfigError when absent."""
        if key not in self.cfg:
            raise ConfigError(f"{self.src}: config.json of model_type {self.mtype!r} lacks {key!r}")
        return self.cfg[key]

    def count(self, key: str, value: Any) -> int:
        """A positive integer the shape arithmetic needs before validation."""
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{self.src}: {key} = {value!r} must be a positive integer")
        return value

    def head_dim(self, hidden: int, heads: int) -> int:
        """``head_dim`` as given, else hidden / heads (which must divide)."""
        if self.cfg.get("head_dim") is not None:
            return self.count("head_dim", self.cfg["head_dim"])
        if hidden % heads:
            raise ConfigError(
                f"{self.src}: hidden_size {hidden} is not a multiple of num_attention_heads "
                f"{heads} (give head_dim explicitly)"
            )
        return hidden // heads


def _llama_fields(hf: _HfConfig, heads: int) -> dict[str, Any]:
    """The LLaMA/Mistral family's fields (SiLU gated MLP, RMSNorm, RoPE without scaling)."""
    src, mtype = hf.src, hf.mtype
    act = hf.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise UnsupportedError(
            f"{src}: hidden_act {act!r} unsupported for {mtype} (supported: silu)"
        )
    scaling = hf.get("rope_scaling")
    if scaling and not (
        isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type")) == "default"
    ):
        raise UnsupportedError(
            f"{src}: rope_scaling {scaling!r} unsupported (supported: none or rope_type 'default')"
        )
    kv = hf.get("num_key_value_heads")
    return {
        "family": "llama",
        "intermediate": hf.need("intermediate_size"),
        "kv_heads": heads if kv is None else hf.count("num_key_value_heads", kv),
        "norm": "rms",
        "norm_eps": hf.get("rms_norm_eps", 1e-6),
        "activation": "silu",
        "gated_mlp": True,
        "positions": "rope",
        "rope_theta": hf.get("rope_theta", 10000.0),
        "bias": bool(hf.get("attention_bias", False) or hf.get("mlp_bias", False)),
        "tie_word_embeddings": hf.get("tie_word_embeddings", False),
        "sliding_window": hf.get("sliding_window"),
    }


def _opt_fields(hf: _HfConfig, heads: int, hidden: int) -> dict[str, Any]:
    """OPT's fields (pre-LayerNorm, ReLU MLP, learned positions); the variants hwflow does
    not model (embedding projection, post-LayerNorm, no final norm) are refused."""
    src = hf.src
    proj = hf.get("word_embed_proj_dim", hidden)
    if proj != hidden:
        raise UnsupportedError(
            f"{src}: word_embed_proj_dim {proj!r} != hidden_size {hidden} unsupported "
            "(supported: equal, no embedding projection)"
        )
    if not hf.get("do_layer_norm_before", True):
        raise UnsupportedError(
            f"{src}: post-LayerNorm OPT (do_layer_norm_before=false) unsupported (supported: true)"
        )
    if hf.get("_remove_final_layer_norm", False):
        raise UnsupportedError(
            f"{src}: OPT without a final LayerNorm (_remove_final_layer_norm=true) "
            "unsupported (supported: false)"
        )
    act = hf.get("activation_function", "relu")
    if act != "relu":
        raise UnsupportedError(
            f"{src}: activation_function {act!r} unsupported for opt (supported: relu)"
        )
    return {
        "family": "opt",
        "intermediate": hf.need("ffn_dim"),
        "kv_heads": heads,
        "norm": "layer",
        "norm_eps": 1e-5,
        "activation": "relu",
        "gated_mlp": False,
        "positions": "learned",
        "bias": hf.get("enable_bias", True),
        "tie_word_embeddings": hf.get("tie_word_embeddings", True),
        "position_offset": 2,  # OPT's learned positions start at index 2
    }
