"""Writing output files: whole or not at all, and only where the user pointed.

Library code writes its outputs through :func:`atomic_write`; the CLI checks a path the user
gave with :func:`check_output_file` / :func:`check_output_dir` *before* any work, so a bad
path is one clear error and nothing is created (no folders made on the way).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hwflow.errors import ConfigError

__all__ = ["atomic_write", "check_output_dir", "check_output_file"]


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write a file so that it either appears whole or not at all (no half-written output);
    the folder is created if missing (callers check user-given paths first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_output_file(path: Path, flag: str) -> None:
    """ConfigError unless ``path`` can be a file to write: not a folder, in an existing
    folder (``flag`` names the option in the message)."""
    path = Path(path)
    parent = path.parent
    if path.is_dir():
        raise ConfigError(f"{flag} {path}: is a folder (expected a file path)")
    if not parent.exists():
        raise ConfigError(f"{flag} {path}: folder {parent} does not exist (create it first)")
    if not parent.is_dir():
        raise ConfigError(f"{flag} {path}: {parent} is a file, not a folder")


def check_output_dir(path: Path, flag: str) -> None:
    """ConfigError unless ``path`` is a folder or can be made one (nothing on the way to it
    is a file)."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                what = (
                    "exists and is not a folder" if p == path else f"cannot write ({p} is a file)"
                )
                raise ConfigError(f"{flag} {path}: {what}")
            return
