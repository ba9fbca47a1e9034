"""Validated, frozen configuration objects: hardware presets, model configs, compression plans.

YAML and JSON are read only here, at the edge. Everything downstream (compiler, simulators,
RTL generator) receives the frozen pydantic objects defined here and never a dict. The package
is split by what each part owns: :mod:`.preset` (hardware presets), :mod:`.model` (model
configs), :mod:`.plan` (compression plans), :mod:`.loading` (reading files) and :mod:`.base`
(what they share); every public name is importable from ``hwflow.config`` itself.

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

from hwflow.config.base import (
    Fraction,
    Frozen,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Sourced,
    UnitInterval,
    first_error,
    pow2,
)
from hwflow.config.loading import (
    MAPPINGS,
    available,
    load_hw,
    load_model,
    load_plan,
    read_data,
    validate_data,
)
from hwflow.config.model import LINEAR_OPS, ModelConfig
from hwflow.config.plan import (
    AttentionSparsity,
    CompressionMethod,
    CompressionPlan,
    LinearQuant,
    PruneMethod,
    QuantMethod,
    parse_nm,
)
from hwflow.config.preset import (
    REQUANT_DSPS,
    WEIGHT_BITS,
    Board,
    Buffers,
    Engine,
    HardwarePreset,
    Hbm,
    Sfu,
    Sparsity,
    System,
    engine_dsps,
)

__all__ = [
    "LINEAR_OPS",
    "MAPPINGS",
    "REQUANT_DSPS",
    "WEIGHT_BITS",
    "AttentionSparsity",
    "Board",
    "Buffers",
    "CompressionMethod",
    "CompressionPlan",
    "Engine",
    "Fraction",
    "Frozen",
    "HardwarePreset",
    "Hbm",
    "LinearQuant",
    "ModelConfig",
    "NonNegativeInt",
    "PositiveFloat",
    "PositiveInt",
    "PruneMethod",
    "QuantMethod",
    "Sfu",
    "Sourced",
    "Sparsity",
    "System",
    "UnitInterval",
    "available",
    "engine_dsps",
    "first_error",
    "load_hw",
    "load_model",
    "load_plan",
    "parse_nm",
    "pow2",
    "read_data",
    "validate_data",
]
