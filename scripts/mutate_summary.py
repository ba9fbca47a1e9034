"""Kill rate per module of the last mutmut runs (reads mutants/<group>/mutants/hwflow/**/*.meta
of scripts/mutate.py's run directories; run from the repository).

A mutant counts as killed when the tests failed (or timed out) with it; ``no tests`` means no
selected test reaches the mutated function. Mutants not run yet are left out of the rate; the
last column (``scope``) says whether the module's run is full or partial (sampled or
interrupted) and how many mutants are left. The results stay in ``mutants/<group>/``; a later
run of the group resumes from them (mutmut skips mutants that have a result, and
``scripts/mutate.py --sample=K`` draws only from those without one).
tests/mutation/EQUIVALENT.md lists, under its "## Equivalent" heading, mutants that cannot
change behaviour (taken out of the denominator), and under "## Killed when applied by hand"
mutants mutmut cannot activate (code run at import) that a test kills when the change is made
in the source (counted as killed). The file says why for each. ``--open`` also prints, per
module, the survivors EQUIVALENT.md does not list (each needs a test or an entry) and the
listed names that did not survive the last run (stale entries: renumbered or killed since).
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

ROOT = Path("mutants")
EQUIVALENT = Path("tests/mutation/EQUIVALENT.md")


def listed() -> dict[str, str]:
    """``{mutant name: "equiv" | "by hand"}`` from the backquoted names of EQUIVALENT.md."""
    if not EQUIVALENT.is_file():
        return {}
    out: dict[str, str] = {}
    kind = ""
    for line in EQUIVALENT.read_text().splitlines():
        if line.startswith("## "):
            kind = "by hand" if "by hand" in line else "equiv" if "Equivalent" in line else ""
        elif kind:
            for name in re.findall(r"`(hwflow\.[^`\s]+__mutmut_\d+)`", line):
                out[name] = kind
    return out


def scope(run: int, total: int) -> str:
    """``full`` when every mutant of the module has a result, else how much of it is run (a
    sampled or interrupted run: ``scripts/mutate.py --sample=K`` continues with mutants not
    run yet, and a plain re-run of the group finishes it, keeping every result)."""
    if run == total:
        return "full"
    return f"partial: {run} of {total} ({100 * run / total:.0f} %), {total - run} not run"


def main(argv: list[str]) -> int:
    metas = sorted(ROOT.glob("*/mutants/hwflow/**/*.py.meta"))
    if not metas:
        print("no mutmut results under mutants/ (run `make mutate` first)", file=sys.stderr)
        return 2
    marks = listed()
    head = f"{'module':<26}{'mutants':>8}{'run':>6}{'killed':>8}{'survived':>9}{'no test':>8}"
    print(head + f"{'equiv':>6}{'kill rate':>11}  scope")
    notes: list[str] = []
    for meta in metas:
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        c: Counter[str] = Counter()
        for name, code in codes.items():
            st = status_by_exit_code[code]
            if st == "not checked":
                continue
            open_ = st in ("survived", "no tests")  # no selected test reached it
            if open_ and marks.get(name) == "equiv":
                c["equiv"] += 1
            elif st in ("killed", "timeout") or (open_ and marks.get(name) == "by hand"):
                c["killed"] += 1
            elif st == "survived":
                c["survived"] += 1
            else:
                c["no tests"] += 1
        run = c["killed"] + c["survived"] + c["no tests"] + c["equiv"]
        denom = c["killed"] + c["survived"] + c["no tests"]
        rate = f"{100 * c['killed'] / denom:.1f}%" if denom else "-"
        mod = str(Path(*meta.relative_to(ROOT).parts[2:])).removesuffix(".meta")  # <group>/mutants/
        print(
            f"{mod:<26}{len(codes):>8}{run:>6}{c['killed']:>8}{c['survived']:>9}"
            f"{c['no tests']:>8}{c['equiv']:>6}{rate:>11}  {scope(run, len(codes))}"
        )
        if "--open" in argv:
            notes += [
                f"  open: {n} ({status_by_exit_code[k]})"
                for n, k in codes.items()
                if status_by_exit_code[k] in ("survived", "no tests") and n not in marks
            ]
            dotted = mod.removesuffix(".py").replace("/", ".") + "."
            alive = {
                n for n, k in codes.items() if status_by_exit_code[k] in ("survived", "no tests")
            }
            notes += [f"  stale: {n}" for n in marks if n.startswith(dotted) and n not in alive
                      and codes.get(n) is not None]  # fmt: skip
    print("\n".join(notes))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
