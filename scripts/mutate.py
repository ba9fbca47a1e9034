"""Mutation check of hwflow's core: one mutmut 3 run per group of tests/mutation/modules.toml.

mutmut reads one configuration (``[tool.mutmut]`` of ``pyproject.toml`` in its working
directory) and would run every module's mutants against one test selection: the slowest
module's tests for all. So each group gets its own run directory ``mutants/<group>/`` holding
links to ``hwflow``, ``tests`` and ``mappings`` and a copy of ``pyproject.toml`` whose
``[tool.mutmut]`` names the group's files and tests (the options common to all groups stay
in the repository's ``[tool.mutmut]``). Results stay there (``mutants/`` is ignored by git);
``scripts/mutate_summary.py`` prints the kill rate per module. Usage, from the repository::

    python scripts/mutate.py [--jobs=N] [--sample=K] [GROUP ...] [-- MUTANT-GLOB ...]

Without groups every group runs; without globs every mutant of the group. ``nice`` is applied
to mutmut; ``--jobs`` is mutmut's ``--max-children`` (default 1: the machine is shared).
``--sample=K``: once a group's mutants exist (a first, possibly interrupted, run generated
them), run K of those not run yet, drawn uniformly with a fixed seed: a partial run that
represents the whole module instead of its first functions.

Runs resume: the results stay in ``mutants/<group>/mutants/hwflow/**/*.py.meta`` (one exit
code per mutant, None while not run), mutmut skips mutants that have a result and re-runs
the ones named on the command line; ``scripts/mutate_summary.py`` says per module whether
its run is full or partial. Changing a group's test selection (a file added to ``tests``)
makes mutmut reset every result of the group; new tests in files already selected do not.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tomllib
from pathlib import Path

GROUPS = Path("tests/mutation/modules.toml")
LINKED = ("hwflow", "tests", "mappings")


def load_groups() -> dict[str, dict]:
    """The groups of modules.toml, in file order."""
    return tomllib.loads(GROUPS.read_text())


def mutmut_section(base: dict, group: dict) -> str:
    """The ``[tool.mutmut]`` table of a group's run: the repository's, with the group's files,
    tests and deselected tests. Values are written as JSON, which TOML reads the same for
    strings, lists of strings, numbers and booleans."""
    conf = dict(base)
    conf["only_mutate"] = group["mutate"]
    conf["pytest_add_cli_args_test_selection"] = group["tests"]
    args = list(base.get("pytest_add_cli_args", []))
    for test in group.get("deselect", []):
        args += ["--deselect", test]
    conf["pytest_add_cli_args"] = args
    lines = ["[tool.mutmut]"] + [f"{k} = {json.dumps(v)}" for k, v in conf.items()]
    return "\n".join(lines) + "\n"


def without_mutmut(text: str) -> str:
    """``pyproject.toml`` text without its ``[tool.mutmut]`` table."""
    out: list[str] = []
    skipping = False
    for line in text.splitlines():
        if line.startswith("["):
            skipping = line.strip() == "[tool.mutmut]"
        if not skipping:
            out.append(line)
    return "\n".join(out) + "\n"


def prepare(name: str, group: dict) -> Path:
    """Create (or refresh) the run directory of one group; return it."""
    run = Path("mutants") / name
    run.mkdir(parents=True, exist_ok=True)
    for entry in LINKED:
        link = run / entry
        if not link.is_symlink():
            link.symlink_to(Path("..", "..", entry))
    text = Path("pyproject.toml").read_text()
    base = tomllib.loads(text)["tool"]["mutmut"]
    (run / "pyproject.toml").write_text(without_mutmut(text) + "\n" + mutmut_section(base, group))
    return run


def unrun(run: Path) -> list[str]:
    """Names of the group's mutants that have no result yet (from its .meta files)."""
    out: list[str] = []
    for meta in sorted((run / "mutants").glob("hwflow/**/*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        out += [name for name, code in codes.items() if code is None]
    return out


def main(argv: list[str]) -> int:
    jobs, sample = "1", 0
    while argv and argv[0].startswith(("--jobs=", "--sample=")):
        opt, _, value = argv[0].partition("=")
        jobs, sample = (value, sample) if opt == "--jobs" else (jobs, int(value))
        argv = argv[1:]
    names, globs = (
        (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    )
    groups = load_groups()
    unknown = [n for n in names if n not in groups]
    if unknown:
        print(
            f"unknown group(s) {', '.join(unknown)}; groups: {', '.join(groups)}", file=sys.stderr
        )
        return 2
    mutmut = str(Path(sys.executable).parent / "mutmut")
    for name in names or list(groups):
        run = prepare(name, groups[name])
        print(f"== {name}: {', '.join(groups[name]['mutate'])}", flush=True)
        chosen = globs
        if sample and not globs:
            todo = unrun(run)
            chosen = sorted(random.Random(13).sample(todo, min(sample, len(todo))))
            print(
                f"   a sample of {len(chosen)} of the {len(todo)} mutants not run yet", flush=True
            )
            if not chosen:
                continue
        cmd = ["nice", mutmut, "run", "--max-children", jobs, *chosen]
        subprocess.run(
            cmd, cwd=run, check=False, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
