#!/usr/bin/env bash
# Set up .venv with the test extras, then: format check, lint, type check, tests.
# Extra arguments go to pytest (e.g. bash scripts/check.sh -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
export MPLBACKEND=Agg
echo "== ruff format --check"; .venv/bin/ruff format --check src tests benchmarks
echo "== ruff check";          .venv/bin/ruff check src tests benchmarks
echo "== mypy";                .venv/bin/mypy
echo "== pytest";              .venv/bin/python -m pytest "$@"
