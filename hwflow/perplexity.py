"""Perplexity on real text: of the float64 reference and of a plan's integer reference.

Teacher forcing over the whole text in one prefill step of N tokens: the graph's head runs on
every position (``all_rows``), the logits at position i score token i+1, and the perplexity is
``exp(mean negative log-likelihood)`` over the N-1 predicted tokens. The integer run's logits
are raw accumulators; :meth:`~hwflow.compress.QuantizedModel.dequant_logits` scales them back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hwflow.compress import QuantizedModel
from hwflow.config import MAPPINGS, CompressionPlan, ModelConfig
from hwflow.errors import ConfigError
from hwflow.model import step_graph
from hwflow.reference import KVCache, run_float, run_int

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = [
    "DEFAULT_TEXT",
    "Perplexity",
    "float_perplexity",
    "int_perplexity",
    "kl_divergence",
    "perplexity_of_logits",
    "read_text",
    "text_ids",
]


#: The default text: the GNU GPL version 3, verbatim (see mappings/text/README.md).
DEFAULT_TEXT = MAPPINGS / "text" / "gpl-3.txt"


def read_text(path: Path) -> str:
    """A UTF-8 text file; ConfigError naming it when it cannot be read or is empty."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    if not text.strip():
        raise ConfigError(f"{path}: the text is empty")
    return text


#: Calibration tokens taken from the end of the text (disjoint from the evaluated start).
CALIB_TOKENS = 256


def text_ids(tokenizer: Tokenizer, text: str, tokens: int, source: Path) -> np.ndarray:
    """The first ``tokens`` token ids of ``text``; ConfigError when it has fewer."""
    ids = tokenizer.encode(text).ids
    if len(ids) < tokens:
        raise ConfigError(
            f"{source}: the text has {len(ids)} tokens, fewer than the {tokens} asked"
        )
    return np.asarray(ids[:tokens], np.int64)


def calibration_ids(
    tokenizer: Tokenizer, text: str, tokens: int, source: Path, calib: int = CALIB_TOKENS
) -> np.ndarray:
    """The calibration tokens of a perplexity run: the last ``calib`` ids of ``text``, which must
    not overlap the first ``tokens`` that are evaluated (or, for a short text, as many as are
    left after them; ConfigError when none are)."""
    ids = tokenizer.encode(text).ids
    start = max(tokens, len(ids) - calib)
    if start >= len(ids):
        raise ConfigError(
            f"{source}: the text has {len(ids)} tokens; {tokens} are evaluated and none are left "
            "to calibrate on (use a longer text or fewer --tokens)"
        )
    return np.asarray(ids[start:], np.int64)


@dataclass(frozen=True)
class Perplexity:
    """A perplexity and what it was measured on (``tokens`` ids, ``tokens - 1`` predicted)."""

    ppl: float
    nll: float  #: mean negative log-likelihood in nats
    tokens: int
    #: next-token log-probabilities [tokens - 1, vocab] (for :func:`kl_divergence`)
    logp: np.ndarray | None = field(default=None, repr=False, compare=False)


def perplexity_of_logits(logits: np.ndarray, ids: np.ndarray) -> Perplexity:
    """Perplexity of ``ids`` under next-token ``logits[T, vocab]`` (row i predicts ids[i+1])."""
    ids = np.asarray(ids)
    lg = np.asarray(logits, np.float64)[:-1]
    m = lg.max(axis=-1, keepdims=True)
    logp = lg - (m + np.log(np.exp(lg - m).sum(axis=-1, keepdims=True)))
    nll = float(-np.mean(logp[np.arange(len(lg)), ids[1:]]))
    return Perplexity(float(np.exp(nll)), nll, len(ids), logp)


def kl_divergence(ref: Perplexity, test: Perplexity) -> float:
    """Mean over the predicted positions of KL(ref || test) of the next-token distributions,
    in nats per token: how far a compressed model's predictions are from the float model's
    on the same tokens. Unlike a perplexity difference (a difference of two noisy means, which
    a few tokens can flip) every position and every vocabulary entry contributes, so small
    arithmetic changes are resolved on a few hundred tokens."""
    if ref.logp is None or test.logp is None or ref.logp.shape != test.logp.shape:
        raise ValueError("KL divergence needs the log-probabilities of two runs on the same ids")
    return float(np.mean(np.sum(np.exp(ref.logp) * (ref.logp - test.logp), axis=-1)))


def _check(cfg: ModelConfig, ids: np.ndarray) -> None:
    if not 2 <= len(ids) <= cfg.max_positions:
        raise ConfigError(
            f"perplexity needs 2..{cfg.max_positions} tokens for {cfg.name}, got {len(ids)}"
        )


def _embed(cfg: ModelConfig, weights: Mapping[str, np.ndarray], ids: np.ndarray) -> np.ndarray:
    x = weights["embed"][ids]
    if cfg.positions == "learned":
        x = x + weights["pos"][cfg.position_offset + np.arange(len(ids))]
    return x


def float_perplexity(
    cfg: ModelConfig, plan: CompressionPlan, weights: Mapping[str, np.ndarray], ids: np.ndarray
) -> Perplexity:
    """Perplexity of the uncompressed float64 model (dense causal attention) on ``ids``.
    ``plan`` only shapes the step graph; the float run ignores its compression."""
    ids = np.asarray(ids)
    _check(cfg, ids)
    g = step_graph(cfg, plan, "prefill", len(ids))
    kv = KVCache.empty(cfg, np.float64, len(ids))
    run = run_float(cfg, weights, g, _embed(cfg, weights, ids), kv, all_rows=True)  # type: ignore[arg-type]
    return perplexity_of_logits(run.logits, ids)


def int_perplexity(qm: QuantizedModel, ids: np.ndarray) -> Perplexity:
    """Perplexity of the plan's integer reference (the accelerator's exact arithmetic)."""
    ids = np.asarray(ids)
    _check(qm.cfg, ids)
    g = step_graph(qm.cfg, qm.plan, "prefill", len(ids))
    kv = KVCache.empty(qm.cfg, np.int8, len(ids))
    run = run_int(qm, g, qm.embed(ids, 0), kv, all_rows=True)
    return perplexity_of_logits(qm.dequant_logits(run.logits), ids)
