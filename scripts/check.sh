#!/usr/bin/env bash
# Set up .venv with the test extras, then: format check, lint, type check, tests; then the
# zoo tier (random-weight torchvision/timm models) in .venv-zoo on the torch/torchvision
# pair of constraints-zoo.txt. Extra arguments go to pytest (e.g. -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
export MPLBACKEND=Agg
echo "== ruff format --check"; .venv/bin/ruff format --check src tests benchmarks
echo "== ruff check";          .venv/bin/ruff check src tests benchmarks
echo "== mypy";                .venv/bin/mypy
echo "== pytest";              .venv/bin/python -m pytest "$@"
echo "== zoo tier (.venv-zoo)"
VENV=.venv-zoo CONSTRAINTS=constraints-zoo.txt bash scripts/setup.sh test,zoo
.venv-zoo/bin/python -m pytest tests/zoo "$@"
