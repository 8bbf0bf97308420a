#!/usr/bin/env bash
# Create .venv with semiseg installed (editable). Pass --test to add the test dependencies.
# PyTorch: a CPU-only build is preferred when torch is not installed yet (a local wheel, then
# PyTorch's CPU index); otherwise PyPI's default build. semiseg itself accepts any torch >= 2.2,
# so for a GPU machine install the torch you want into .venv first and this script keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRA=""
[ "${1:-}" = "--test" ] && EXTRA="[test]"
[ -d .venv ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install -q "torch==2.13.0+cpu" 2>/dev/null \
    || python -m pip install -q --timeout 20 --retries 1 torch --index-url https://download.pytorch.org/whl/cpu 2>/dev/null \
    || python -m pip install -q torch
fi
python -m pip install -q -e ".${EXTRA}"
echo "semiseg installed in $(pwd)/.venv: run .venv/bin/semiseg --help"
