#!/usr/bin/env bash
# Mutation check of hwflow's core with mutmut 3 (configuration: [tool.mutmut] in pyproject.toml).
# Not part of CI: a full run takes hours on two cores. Usage:
#   scripts/mutate.sh [VENV] [MUTANT-GLOB...]   e.g. scripts/mutate.sh .venv 'hwflow.costs*'
# Without a glob every mutant of the configured modules is run. Results stay in mutants/
# (ignored by git); the summary per module is printed at the end.
set -euo pipefail
VENV="${1:-.venv}"
shift || true
"$VENV/bin/python" -m pip install -q -e ".[dev,mutation]"
nice "$VENV/bin/mutmut" run --max-children "${MUTATE_JOBS:-1}" "$@" || true
"$VENV/bin/python" scripts/mutate_summary.py
