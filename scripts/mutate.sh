#!/usr/bin/env bash
# Mutation check of hwflow's core with mutmut 3: one run per group of tests/mutation/modules.toml
# (files to mutate and the fast test selection for them), each in mutants/<group>/ (see
# scripts/mutate.py). Not part of CI. Usage:
#   scripts/mutate.sh [VENV] [GROUP...] [-- MUTANT-GLOB...]   e.g. scripts/mutate.sh .venv costs
# MUTATE_JOBS sets mutmut's worker count (default 1: the machine is shared); MUTATE_SAMPLE=K runs a
# seeded sample of K mutants not run yet per group (after a first run generated them). The summary per
# module (scripts/mutate_summary.py) is printed at the end.
set -euo pipefail
VENV="${1:-.venv}"
shift || true
"$VENV/bin/python" -m pip install -q -e ".[dev,mutation]"
"$VENV/bin/python" scripts/mutate.py --jobs="${MUTATE_JOBS:-1}" ${MUTATE_SAMPLE:+--sample="$MUTATE_SAMPLE"} "$@"
"$VENV/bin/python" scripts/mutate_summary.py
