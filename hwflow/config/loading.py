"""Reading configuration files: names of shipped files under ``mappings/`` or paths, strict
YAML/JSON (a key given twice is an error), and the one error format naming the file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from hwflow.config.base import first_error
from hwflow.config.model import ModelConfig
from hwflow.config.plan import CompressionPlan
from hwflow.config.preset import HardwarePreset
from hwflow.errors import ConfigError

__all__ = [
    "MAPPINGS",
    "available",
    "load_hw",
    "load_model",
    "load_plan",
    "read_data",
    "validate_data",
]

MAPPINGS = Path(os.environ.get("HWFLOW_MAPPINGS", Path(__file__).resolve().parents[2] / "mappings"))


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


class _UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """YAML's safe loader (libyaml's C parser when PyYAML has it: sweeps read thousands of
    preset and plan files), but a mapping naming one key twice is an error (the plain loader
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


def read_data(path: Path) -> Any:
    """The YAML or JSON data of a file; ConfigError naming the file (and line) otherwise."""
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


def validate_data(cls: type[BaseModel], data: Any, path: Path) -> Any:
    """``data`` validated as ``cls``; ConfigError naming the file and the first bad key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{path}: {first_error(e)}") from None


def load_hw(ref: str | Path) -> HardwarePreset:
    """A hardware preset by shipped name (``u280``) or by path."""
    path = _resolve("hw", ref, (".yaml", ".yml"))
    return validate_data(HardwarePreset, read_data(path), path)


def load_model(ref: str | Path) -> ModelConfig:
    """A model by shipped name (``llama2-7b``), the path of a HF config.json (or its folder),
    or a ``.gguf`` file (its metadata, :func:`hwflow.checkpoint.gguf_llama.gguf_config`)."""
    if Path(ref).suffix == ".gguf" and Path(ref).is_file():
        from hwflow.checkpoint.gguf_llama import gguf_config

        return gguf_config(Path(ref))
    path = _resolve("models", ref, (".json",))
    data = read_data(path)
    name = path.stem if path.name != "config.json" else path.resolve().parent.name
    return ModelConfig.from_hf(data, name, str(path))


def load_plan(ref: str | Path) -> CompressionPlan:
    """A compression plan by shipped name (``w4a8``) or by path."""
    path = _resolve("plans", ref, (".yaml", ".yml"))
    return validate_data(CompressionPlan, read_data(path), path)
