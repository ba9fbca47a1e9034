"""hwflow's weight layout (the names of :func:`hwflow.compress.random_weights`), its expected
shapes for a config, and the lazy mapping that reads one tensor at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import numpy as np

from hwflow.config import ModelConfig

__all__ = ["LazyWeights", "expected_shapes", "norm_names"]

Loader = Callable[[], np.ndarray]


class LazyWeights(Mapping[str, np.ndarray]):
    """A read-only mapping name -> float64 array whose values are read from disk on each
    lookup and not kept: memory holds only the tensors a caller is using."""

    def __init__(self, loaders: Mapping[str, Loader], aliases: Mapping[str, str] = ()) -> None:
        """``aliases`` name tensors that are another one (a tied head: ``head.w`` -> ``embed``)."""
        self._loaders = {**loaders, **{a: loaders[t] for a, t in dict(aliases).items()}}
        self._aliases = dict(aliases)

    def __getitem__(self, name: str) -> np.ndarray:
        return np.asarray(self._loaders[name](), np.float64)

    def materialize(self) -> dict[str, np.ndarray]:
        """Every tensor read once into a dict; an alias shares its target's array."""
        out = {k: self[k] for k in self._loaders if k not in self._aliases}
        out.update({a: out[t] for a, t in self._aliases.items()})
        return out

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaders)

    def __len__(self) -> int:
        return len(self._loaders)

    def __contains__(self, name: object) -> bool:
        return name in self._loaders


def norm_names(cfg: ModelConfig) -> list[str]:
    """The normalisations, in hwflow's names: ``L{l}.norm1``, ``L{l}.norm2``, ``final.norm``."""
    return [f"L{li}.norm{i}" for li in range(cfg.layers) for i in (1, 2)] + ["final.norm"]


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every weight ``cfg`` needs, by hwflow name, with its shape (biases of linear ops are
    optional and listed here with the shape they must have when present)."""
    shapes: dict[str, tuple[int, ...]] = {"embed": (cfg.vocab, cfg.hidden)}
    if cfg.positions == "learned":
        shapes["pos"] = (cfg.max_positions + cfg.position_offset, cfg.hidden)
    for name in norm_names(cfg):
        shapes[name + ".g"] = (cfg.hidden,)
        if cfg.norm == "layer":
            shapes[name + ".b"] = (cfg.hidden,)
    for li in range(cfg.layers):
        for op in cfg.linear_ops:
            out_f, in_f = cfg.linear_shape(op)
            shapes[f"L{li}.{op}.w"] = (out_f, in_f)
            shapes[f"L{li}.{op}.b"] = (out_f,)
    shapes["head.w"] = (cfg.vocab, cfg.hidden)
    return shapes


def is_optional(name: str) -> bool:
    """Linear biases may be absent (LLaMA has none; some checkpoints drop zero biases)."""
    return name.startswith("L") and name.endswith(".b") and ".norm" not in name
