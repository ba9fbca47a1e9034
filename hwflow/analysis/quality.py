"""Quality as a sweep axis: the perplexity of each plan on real text, once per plan.

A sweep point's efficiency is only a design point when it comes with what the compression does
to the model. The sweep grid names a trained checkpoint (``quality: {model: ...}``; by default
the sweep's own model when it is a checkpoint) and a text; each distinct plan of the sweep is
applied to that checkpoint (:func:`hwflow.compress.quantize_model`, calibrated on the text's
last tokens) and its integer reference's perplexity measured on the text's first ``tokens``
tokens, next to the float64 perplexity. When the checkpoint is not the swept model (a 135M
checkpoint standing for LLaMA-2-7B), the rows say so: ``quality_model`` names it.

Results are cached (:func:`hwflow.cache.memo`) on the checkpoint files' contents, the plan's
values, the text's contents and the token count, so a repeated sweep recomputes nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hwflow import cache
from hwflow.config import CompressionPlan
from hwflow.errors import ConfigError

__all__ = ["QUALITY_ALIASES", "QualitySpec", "plan_quality", "quality_spec"]

#: Names a grid may use for checkpoints that packages ship.
QUALITY_ALIASES = ("smollm2-135m",)
DEFAULT_TOKENS = 128


@dataclass(frozen=True)
class QualitySpec:
    """Which checkpoint, text and length measure the plans of a sweep."""

    model: str  #: path of the checkpoint (a .gguf file or a Hugging Face folder)
    text: str
    tokens: int = DEFAULT_TOKENS


def _checkpoint_path(name: str, where: str) -> str:
    from hwflow.checkpoint import is_checkpoint, smollm2_path

    if name == "smollm2-135m":
        return str(smollm2_path())
    if not is_checkpoint(name):
        raise ConfigError(
            f"{where}: quality model {name!r} is not a checkpoint (a .gguf file or a Hugging "
            f"Face folder with *.safetensors; or one of {', '.join(QUALITY_ALIASES)})"
        )
    return name


def quality_spec(data: Any, sweep_models: list[str], where: str) -> QualitySpec | None:
    """The grid's ``quality`` section (``model``, optional ``text`` and ``tokens``), or the
    sweep's own model when it is a checkpoint, or None (no quality columns)."""
    from hwflow.checkpoint import is_checkpoint
    from hwflow.perplexity import DEFAULT_TEXT

    if data is None:
        real = [m for m in sweep_models if is_checkpoint(m)]
        return QualitySpec(real[0], str(DEFAULT_TEXT)) if len(real) == 1 else None
    if not isinstance(data, dict) or set(data) - {"model", "text", "tokens"} or "model" not in data:
        raise ConfigError(f"{where}: 'quality' takes model (required), text and tokens")
    tokens = data.get("tokens", DEFAULT_TOKENS)
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 2:
        raise ConfigError(f"{where}: quality.tokens must be a whole number >= 2, got {tokens!r}")
    text = str(data.get("text") or DEFAULT_TEXT)
    if not Path(text).is_file():
        raise ConfigError(f"{where}: quality.text {text} is not a file")
    return QualitySpec(_checkpoint_path(str(data["model"]), where), text, tokens)


def plan_quality(
    spec: QualitySpec, plan: CompressionPlan, note: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """``ppl``, ``float_ppl``, ``quality_model`` and ``quality_tokens`` of ``plan`` on the
    spec's checkpoint and text (cached)."""
    from hwflow.checkpoint import load_checkpoint

    ck = load_checkpoint(spec.model)
    text_digest = hashlib.sha256(Path(spec.text).read_bytes()).hexdigest()
    parts = [cache.files_digest(ck.files()), plan, text_digest, spec.tokens]
    if note:
        note(f"quality: {plan.name} on {ck.cfg.name} ({spec.tokens} tokens of {spec.text})")
    got, _ = cache.memo(
        "plan-quality", parts, lambda: _measure(ck, spec, plan), note=note, what="perplexity"
    )
    return got


def _measure(ck: Any, spec: QualitySpec, plan: CompressionPlan) -> dict[str, Any]:
    from hwflow.compress import quantize_model
    from hwflow.perplexity import (
        calibration_ids,
        float_perplexity,
        int_perplexity,
        read_text,
        text_ids,
    )

    text = read_text(Path(spec.text))
    tok = ck.tokenizer()
    ids = text_ids(tok, text, spec.tokens, Path(spec.text))
    calib = calibration_ids(tok, text, spec.tokens, Path(spec.text))
    cfg = ck.cfg.model_copy(update={"max_positions": max(len(ids), len(calib))})
    weights = ck.weights.materialize()
    qm = quantize_model(cfg, plan, weights, calib_ids=calib)
    float_ppl, _ = cache.memo(  # the float64 model does not depend on the plan
        "float-quality",
        [cache.files_digest(ck.files()), ids.tolist()],
        lambda: float_perplexity(cfg, plan, weights, ids).ppl,
    )
    return {
        "ppl": int_perplexity(qm, ids).ppl,
        "float_ppl": float_ppl,
        "quality_model": ck.cfg.name,
        "quality_tokens": spec.tokens,
    }
