#!/usr/bin/env bash
# Create .venv (if needed) and install pellucid into it, editable, with the given extras.
# torch is pinned by constraints.txt so pip takes the CPU wheel instead of a multi-GB
# CUDA build; the package metadata itself keeps a sensible range (torch>=2.2).
# Usage: bash scripts/setup.sh [extras]      e.g. bash scripts/setup.sh test
# VENV and CONSTRAINTS choose another environment, e.g. the zoo tier's:
#   VENV=.venv-zoo CONSTRAINTS=constraints-zoo.txt bash scripts/setup.sh test,zoo
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python=${PYTHON:-python3}
venv=${VENV:-.venv}
constraints=${CONSTRAINTS:-constraints.txt}
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
spec="."
[ -n "$extras" ] && spec=".[${extras}]"
"$venv/bin/python" -m pip install --quiet -c "$constraints" -e "$spec"
