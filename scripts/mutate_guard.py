"""Check the ``.hwp`` binary-compatibility guard by mutation (issue 13).

Each change below alters what a program file's words or bytes mean while ``encode``,
``decode`` and the program file stay consistent with one another, so only the frozen goldens
(``tests/data/isa/v<ISA_VERSION>.*``, :mod:`tests.test_mutants_isa`) and the code tables
pinned by hand (``tests/test_isa.py``) can notice. The script copies ``hwflow``, ``tests`` and
``mappings`` into a temporary directory, makes each change there in ``hwflow/isa.py`` (the
source tree is never touched, so it may run beside other jobs), runs the guard tests and
prints one line per change: the failing tests, or ``NOT CAUGHT``. The unchanged copy runs
first and must pass. Exit status 1 if a change is not caught. Usage, from the repository::

    python scripts/mutate_guard.py
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TESTS = ["tests/test_mutants_isa.py", "tests/test_isa.py"]

_STRIDE = '    Field("hbm_stride", 24, "bytes between rows in HBM"),\n'
_BUF = '    Field("buf", 3, "on-chip buffer id (Buf)"),\n'

#: (what changes, text in hwflow/isa.py, its replacement); each text occurs exactly once.
CHANGES: list[tuple[str, str, str]] = [
    ("no change (control: must pass)", "", ""),
    ("opcode of MM 3 -> 7 (an unused number)", 'OpSpec("MM", 3,', 'OpSpec("MM", 7,'),
    ("LOOP's count 16 -> 15 bits", 'Field("count", 16,', 'Field("count", 15,'),
    ("LD/ST: hbm_stride and buf swapped", _STRIDE + _BUF, _BUF + _STRIDE),
    ("an operand's offset loses its register", 'dyn=("add", f"{p}_reg")', "dyn=None"),
    ("SfuFunc ADD 4 <-> MUL 5", "    ADD = 4\n    MUL = 5\n", "    ADD = 5\n    MUL = 4\n"),
    ("MatmulFunc QK 1 <-> PV 2", "QK = 1  #: attention scores\n    PV = 2", "QK = 2  #: attention scores\n    PV = 1"),
    ("XferKind ROPE 4 <-> LOGITS 5", "    ROPE = 4\n    LOGITS = 5\n", "    ROPE = 5\n    LOGITS = 4\n"),
    ("SoftmaxMask CAUSAL 1 <-> BLOCK 2", "    CAUSAL = 1\n    BLOCK = 2 ", "    CAUSAL = 2\n    BLOCK = 1 "),
    ("Buf KV 2 <-> SCORE 3", "    KV = 2\n    SCORE = 3\n", "    KV = 3\n    SCORE = 2\n"),
    ("Unit LD 0 <-> ST 1 (token mask bits)", "    LD = 0\n    ST = 1\n    MM = 2", "    LD = 1\n    ST = 0\n    MM = 2"),
    ("file magic changed", 'MAGIC = b"HWFLOWP\\0"', 'MAGIC = b"HWFLOWQ\\0"'),
    ("section count u16 -> u32", 'out += struct.pack("<H", len(sections))', 'out += struct.pack("<I", len(sections))'),
    ("ISA_VERSION bumped without golden files", "ISA_VERSION = 4", "ISA_VERSION = 5"),
]  # fmt: skip


def run_case(root: Path, original: str, old: str, new: str) -> str:
    """Make one change in the copy, run the guard tests, restore; the failing tests."""
    if old and original.count(old) != 1:
        return f"SCRIPT ERROR: the text occurs {original.count(old)} times"
    (root / "hwflow" / "isa.py").write_text(original.replace(old, new) if old else original)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:randomly"]
    cmd += ["-p", "no:cacheprovider", *TESTS]
    out = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)
    failed = sorted(set(re.findall(r"^(?:FAILED|ERROR) \S+?::(\w+)", out.stdout, re.M)))
    if out.returncode == 0:
        return "all pass"
    return f"{len(failed)} failing: {', '.join(failed)}" if failed else f"exit {out.returncode}"


def main() -> int:
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for part in ("hwflow", "tests", "mappings"):
            shutil.copytree(part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2("pyproject.toml", root / "pyproject.toml")
        original = (root / "hwflow" / "isa.py").read_text()
        for what, old, new in CHANGES:
            verdict = run_case(root, original, old, new)
            if not old:
                caught = verdict == "all pass"
            else:
                caught = verdict != "all pass" and not verdict.startswith("SCRIPT")
            bad += not caught
            print(f"{'ok ' if caught else 'BAD'} {what}: {verdict}", flush=True)
    print("every change caught" if not bad else f"{bad} change(s) NOT CAUGHT or control failed")
    return int(bad > 0)


if __name__ == "__main__":
    sys.exit(main())
