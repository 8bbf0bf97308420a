#!/usr/bin/env bash
# Set up .venv with semiseg and its test dependencies, then run the test suite (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --test
.venv/bin/ruff check src tests bench
.venv/bin/python -m pytest -q "$@"
