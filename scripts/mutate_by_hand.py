"""Apply surviving import-time mutants in the source, one at a time, and run tests on each.

mutmut 3 switches a mutant on when its function is called; a function called while the
module is imported (the ISA's field tables are built so) has already run, unmutated, so its
mutants always survive a mutmut run. This script takes the survivors of such functions from
the last run (``mutants/<module>.meta``), writes each mutant's function over the original in
a scratch copy of the repository (``hwflow``, ``tests``, ``mappings``; the source tree is never
touched), runs the given tests there (``pytest -x``) and prints one line per mutant: ``NAME
killed by TEST`` or ``NAME survived``. The killed ones go under "Killed when applied by hand"
in tests/mutation/EQUIVALENT.md. Usage (from the repository, after ``make mutate`` ran the
module's group, e.g. ``isa``)::

    python scripts/mutate_by_hand.py [--meta=FILE] hwflow/isa.py _hdr _operand -- tests/test_isa.py
    python scripts/mutate_by_hand.py hwflow/perf/hbm.py ResourceHbm.transfer -- tests/test_x.py

It also serves survivors whose killing test came after the run: a re-run with a new test file in
a group's selection would reset the whole group (mutmut resets every result when the selection
changes).
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def mutmut_copy(module: Path) -> Path:
    """mutmut's copy of ``module`` in the run directory of the group that mutates it."""
    found = sorted(Path("mutants").glob(f"*/mutants/{module}.meta"))
    if not found:
        raise SystemExit(f"no mutmut results for {module} under mutants/*/ (run make mutate)")
    return found[0].with_suffix("")


def mutmut_name(dotted: str, fn: str) -> str:
    """mutmut's name prefix of a function (``f``) or method (``Class.m``) of module ``dotted``."""
    cls, _, name = fn.rpartition(".")
    return f"{dotted}.x\u01c1{cls}\u01c1{name}" if cls else f"{dotted}.x_{name}"


def survivors(module: Path, functions: list[str], meta_file: Path | None = None) -> list[str]:
    """Names of the surviving (or untested) mutants of ``functions`` (``f`` or ``Class.method``)
    in the last mutmut run (or in ``meta_file``, a copy of a run's ``.meta``)."""
    path = meta_file or mutmut_copy(module).with_name(module.name + ".meta")
    meta = json.loads(path.read_text())["exit_code_by_key"]
    dotted = ".".join(module.with_suffix("").parts)
    want = {mutmut_name(dotted, fn) for fn in functions}
    open_codes = (0, 5, 33)  # survived, or no selected test reached the function
    return [n for n, c in meta.items() if c in open_codes and n.split("__mutmut_")[0] in want]


def function_span(source: str, name: str, cls: str = "") -> tuple[int, int]:
    """(first, last) 1-based lines of the function ``name`` in ``source``: top-level, or a
    method of the top-level class ``cls``."""
    body = ast.parse(source).body
    if cls:
        found = [n for n in body if isinstance(n, ast.ClassDef) and n.name == cls]
        body = found[0].body if found else []
    for node in body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            return first, node.end_lineno or node.lineno
    raise SystemExit(f"no function {cls + '.' if cls else ''}{name}")


def mutant_source(module: Path, mutant: str) -> tuple[str, str, str]:
    """(class or "", original function name, the mutant's function renamed to it) from
    mutmut's copy."""
    copy = mutmut_copy(module).read_text()
    local = mutant.rsplit(".", 1)[1]  # x_<fn>__mutmut_<n> or x\u01c1<Class>\u01c1<m>__mutmut_<n>
    fn = re.fullmatch(r"x_(.+)__mutmut_\d+", local)
    meth = re.fullmatch(r"x\u01c1(\w+)\u01c1(\w+?)__mutmut_\d+", local)
    if fn is None and meth is None:
        raise SystemExit(f"{mutant}: not a mutmut function or method name")
    cls, name = (meth.group(1), meth.group(2)) if meth else ("", fn.group(1))  # type: ignore[union-attr]
    first, last = function_span(copy, local, cls)
    text = "\n".join(copy.splitlines()[first - 1 : last])
    return cls, name, text.replace(f"def {local}(", f"def {name}(", 1)


def run(mutant: str, module: Path, original: str, tests: list[str], root: Path) -> str:
    """Write ``mutant`` into the scratch copy of ``module`` under ``root``, run ``tests``
    there, restore it; the verdict line."""
    cls, name, text = mutant_source(module, mutant)
    first, last = function_span(original, name, cls)
    lines = original.splitlines()
    target = root / module
    target.write_text("\n".join([*lines[: first - 1], text, *lines[last:]]) + "\n")
    try:
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:xdist", "-p", "no:randomly"]
        cmd += ["-p", "no:cacheprovider", *tests]
        out = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)
    finally:
        target.write_text(original)
    if out.returncode == 0:
        return f"{mutant} survived"
    failed = re.search(r"^(?:FAILED|ERROR) (\S+)", out.stdout, re.M)
    return f"{mutant} killed by {failed.group(1) if failed else f'exit {out.returncode}'}"


def main(argv: list[str]) -> int:
    if "--" not in argv or len(argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    meta = None
    if argv[0].startswith("--meta="):
        meta, argv = Path(argv[0].removeprefix("--meta=")), argv[1:]
    cut = argv.index("--")
    module, functions, tests = Path(argv[0]), argv[1:cut], argv[cut + 1 :]
    original = module.read_text()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for part in ("hwflow", "tests", "mappings"):
            shutil.copytree(part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2("pyproject.toml", root / "pyproject.toml")
        for mutant in survivors(module, functions, meta):
            print(run(mutant, module, original, tests, root), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
