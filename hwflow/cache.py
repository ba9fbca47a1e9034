"""On-disk caches: where they live, and keys that make a cached result safe to reuse.

A cached result (a compiled program, a sweep point, a checked case) is reused only when its
key is equal, and the key hashes everything the result depends on:

* the source of the whole ``hwflow`` package (:func:`source_digest`): any code change, in
  the compiler, the model, the costs or elsewhere, invalidates every entry (coarse, but no
  dependency can be forgotten);
* the *values* of the resolved inputs (model config, compression plan, hardware preset,
  energy table, lengths), never only their names or paths: editing a file in place changes
  the key (:func:`key`).

Entries are written atomically (a reader sees a whole entry or none) and a damaged entry is
recomputed, never trusted. Caching is an optimisation only: a cache folder that cannot be
written is skipped silently.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

__all__ = [
    "cache_dir",
    "files_digest",
    "key",
    "memo",
    "read_json",
    "source_digest",
    "write_bytes",
    "write_json",
]

T = TypeVar("T")

_PACKAGE = Path(__file__).resolve().parent


def cache_dir() -> Path:
    """The cache root: ``$HWFLOW_CACHE``, else ``~/.cache/hwflow``."""
    return Path(os.environ.get("HWFLOW_CACHE", Path.home() / ".cache" / "hwflow"))


@functools.cache
def source_digest(root: Path = _PACKAGE) -> str:
    """SHA-256 (hex, 16 digits) of every ``*.py`` file under ``root`` (default: the installed
    ``hwflow`` package), each with its path relative to ``root``, in sorted order. Computed
    once per process: a source edited while hwflow runs is seen by the next process."""
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        h.update(f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def files_digest(paths: Sequence[Path]) -> str:
    """SHA-256 (hex) of the contents of ``paths`` in the order given (a checkpoint's files)."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def _plain(value: Any) -> Any:
    """JSON-safe form of a key part: pydantic models by their values."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


def key(kind: str, *parts: Any) -> str:
    """Hex key of a ``kind`` of entry from the values of ``parts`` and the package source."""
    blob = json.dumps(
        [kind, source_digest(), [_plain(p) for p in parts]],
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def write_bytes(path: Path, data: bytes) -> None:
    """Store an entry atomically; an unwritable cache is skipped (it is an optimisation)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, obj: Any) -> None:
    """:func:`write_bytes` of ``obj`` as JSON."""
    write_bytes(path, json.dumps(obj, sort_keys=True, default=str).encode())


def read_json(path: Path) -> Any | None:
    """A JSON entry, or None when it is missing or damaged (then it is recomputed)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def memo(
    kind: str,
    parts: Sequence[Any],
    compute: Callable[[], T],
    *,
    note: Callable[[str], None] | None = None,
    what: str = "result",
) -> tuple[T, bool]:
    """(``compute()``, False), or (the stored result of the same ``kind`` and ``parts``, True).
    Results are pickled under ``<cache>/<kind>/`` (the user's own folder, written only here);
    ``note`` hears when a stored ``what`` is used."""
    path = cache_dir() / kind / f"{key(kind, *parts)}.pickle"
    try:
        got = pickle.loads(path.read_bytes())
    except Exception:  # missing or damaged: compute again
        pass
    else:
        if note:
            note(f"{what} from the cache ({path})")
        return got, True
    got = compute()
    write_bytes(path, pickle.dumps(got, protocol=pickle.HIGHEST_PROTOCOL))
    return got, False
