# hwflow: the two commands of the README.
#   make run   set up .venv, then the main job on the shipped defaults
#   make test  set up .venv, then the whole test suite (what CI runs)
#   make mutate  mutation check of the core with mutmut (not in CI); one run per group of
#              tests/mutation/modules.toml: GROUPS=isa runs one group, MUTANTS='hwflow.isa.x_make*'
#              a subset of its mutants (see scripts/mutate.py)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= out

.PHONY: run test lint setup clean mutate

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh "$(PY)" "$(VENV)"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/hwflow demo -o $(OUT)

test: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -n 2 --dist loadgroup --durations=25

mutate: $(STAMP)
	bash scripts/mutate.sh $(VENV) $(GROUPS) $(if $(MUTANTS),-- $(MUTANTS))

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(OUT) rtl/build sim_build .pytest_cache mutants
