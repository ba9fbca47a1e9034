"""Kill rate per module of the last mutmut runs (reads mutants/<group>/mutants/hwflow/**/*.meta
of scripts/mutate.py's run directories; run from the repository).

A mutant counts as killed when the tests failed (or timed out) with it; ``no tests`` means no
selected test reaches the mutated function. A mutant EQUIVALENT.md lists as equivalent
counts as equivalent also when it timed out (speed-only mutants are slower by design, and
time out on a loaded machine). Mutants not run yet are left out of the rate; the
last column (``scope``) says whether the module's run is full or partial (sampled or
interrupted) and how many mutants are left. The results stay in ``mutants/<group>/``; a later
run of the group resumes from them (mutmut skips mutants that have a result, and
``scripts/mutate.py --sample=K`` draws only from those without one).
tests/mutation/EQUIVALENT.md lists, under its "## Equivalent" heading, mutants that cannot
change behaviour (taken out of the denominator), and under "## Killed when applied by hand"
mutants mutmut cannot activate (code run at import) that a test kills when the change is made
in the source (counted as killed). The file says why for each. ``--markdown`` prints the
table as Markdown. ``--open`` also prints, per module, the survivors EQUIVALENT.md does not
list (each needs a test or an entry) and the equivalent entries that did not survive the last
run (stale: renumbered or killed since).
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


def tally(codes: dict[str, int | None], marks: dict[str, str]) -> Counter[str]:
    """Killed / survived / no tests / equiv counts of one module's results (not run: left out)."""
    c: Counter[str] = Counter()
    for name, code in codes.items():
        st = status_by_exit_code[code]
        if st == "not checked":
            continue
        open_ = st in ("survived", "no tests")  # no selected test reached it
        if (open_ or st == "timeout") and marks.get(name) == "equiv":  # slow by design
            c["equiv"] += 1
        elif st in ("killed", "timeout") or (open_ and marks.get(name) == "by hand"):
            c["killed"] += 1
        elif st == "survived":
            c["survived"] += 1
        else:
            c["no tests"] += 1
    return c


def open_notes(mod: str, codes: dict[str, int | None], marks: dict[str, str]) -> list[str]:
    """The survivors EQUIVALENT.md does not list, and its entries the last run contradicts:
    an equivalent mutant that did not survive (renumbered, or a test kills it since). A
    mutant listed as killed by hand that mutmut also killed (re-run by name once the test
    existed) agrees with its entry."""
    alive = {n for n, k in codes.items() if status_by_exit_code[k] in ("survived", "no tests")}
    notes = [f"  open: {n} ({status_by_exit_code[codes[n]]})" for n in alive if n not in marks]
    dotted = mod.removesuffix(".py").replace("/", ".") + "."
    for n, kind in marks.items():
        code = codes.get(n)
        if not n.startswith(dotted) or n in alive or code is None:
            continue
        st = status_by_exit_code[code]
        if st == "timeout" and kind == "equiv":  # a speed-only mutant too slow for its tests
            continue
        if kind == "equiv" or st not in ("killed", "timeout"):
            notes.append(f"  stale: {n}")
    return sorted(notes)


def main(argv: list[str]) -> int:
    metas = sorted(ROOT.glob("*/mutants/hwflow/**/*.py.meta"))
    if not metas:
        print("no mutmut results under mutants/ (run `make mutate` first)", file=sys.stderr)
        return 2
    marks = listed()
    cols = ("module", "mutants", "run", "killed", "survived", "no test", "equiv", "kill rate")
    md = "--markdown" in argv
    if md:
        print("| " + " | ".join((*cols, "scope")) + " |\n|" + "---|" * (len(cols) + 1))
    else:
        print(f"{cols[0]:<26}" + "".join(f"{h:>{len(h) + 2}}" for h in cols[1:]) + "  scope")
    notes: list[str] = []
    for meta in metas:
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        c = tally(codes, marks)
        run = c["killed"] + c["survived"] + c["no tests"] + c["equiv"]
        denom = c["killed"] + c["survived"] + c["no tests"]
        rate = f"{100 * c['killed'] / denom:.1f}%" if denom else "-"
        mod = str(Path(*meta.relative_to(ROOT).parts[2:])).removesuffix(".meta")  # <group>/mutants/
        vals = (len(codes), run, c["killed"], c["survived"], c["no tests"], c["equiv"], rate)
        if md:
            print("| " + " | ".join(map(str, (mod, *vals, scope(run, len(codes))))) + " |")
        else:
            print(f"{mod:<26}" + "".join(f"{v:>{len(h) + 2}}" for v, h in zip(vals, cols[1:],
                  strict=True)) + f"  {scope(run, len(codes))}")  # fmt: skip
        if "--open" in argv:
            notes += open_notes(mod, codes, marks)
    print("\n".join(notes))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
