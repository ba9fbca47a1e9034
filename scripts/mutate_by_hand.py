"""Apply surviving import-time mutants in the source, one at a time, and run tests on each.

mutmut 3 switches a mutant on when its function is called; a function called while the
module is imported (the ISA's field tables are built so) has already run, unmutated, so its
mutants always survive a mutmut run. This script takes the survivors of such functions from
the last run (``mutants/<module>.meta``), writes each mutant's function over the original in
the source file, runs the given tests (``pytest -x``), restores the file and prints one line
per mutant: ``NAME killed by TEST`` or ``NAME survived``. The killed ones go under "Killed
when applied by hand" in tests/mutation/EQUIVALENT.md. Usage (from the repository, after
``make mutate`` ran the module)::

    python scripts/mutate_by_hand.py [--meta=FILE] hwflow/isa.py _hdr _operand -- tests/test_isa.py

Never run it beside another job that imports the package from this tree: the source file is
mutated while it runs (and restored, also on Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import ast
import json
import re
import signal
import subprocess
import sys
from pathlib import Path


def survivors(module: Path, functions: list[str], meta_file: Path | None = None) -> list[str]:
    """Names of the surviving mutants of top-level ``functions`` in the last mutmut run (or
    in ``meta_file``, a copy of a run's ``.meta``)."""
    path = meta_file or Path("mutants") / f"{module}.meta"
    meta = json.loads(path.read_text())["exit_code_by_key"]
    dotted = ".".join(module.with_suffix("").parts)
    want = {f"{dotted}.x_{fn}" for fn in functions}
    return [n for n, code in meta.items() if code == 0 and n.split("__mutmut_")[0] in want]


def function_span(source: str, name: str) -> tuple[int, int]:
    """(first, last) 1-based lines of the top-level function ``name`` in ``source``."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            return first, node.end_lineno or node.lineno
    raise SystemExit(f"no top-level function {name!r}")


def mutant_source(module: Path, mutant: str) -> tuple[str, str]:
    """(original function name, the mutant's function renamed to it) from mutmut's copy."""
    copy = (Path("mutants") / module).read_text()
    local = mutant.rsplit(".", 1)[1]  # x_<fn>__mutmut_<n>
    fn = re.fullmatch(r"x_(.+)__mutmut_\d+", local)
    if fn is None:
        raise SystemExit(f"{mutant}: not a top-level function's mutant")
    first, last = function_span(copy, local)
    text = "\n".join(copy.splitlines()[first - 1 : last])
    return fn.group(1), text.replace(f"def {local}(", f"def {fn.group(1)}(", 1)


def run(mutant: str, module: Path, original: str, tests: list[str]) -> str:
    """Write ``mutant`` into ``module``, run ``tests``, restore; the verdict line."""
    name, text = mutant_source(module, mutant)
    first, last = function_span(original, name)
    lines = original.splitlines()
    module.write_text("\n".join([*lines[: first - 1], text, *lines[last:]]) + "\n")
    try:
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:xdist", "-p", "no:randomly"]
        cmd += ["-p", "no:cacheprovider", *tests]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    finally:
        module.write_text(original)
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
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # restore the source on kill too
    for mutant in survivors(module, functions, meta):
        print(run(mutant, module, original, tests), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
