#!/usr/bin/env bash
# Set up .venv and run the study on the embedded data: bash scripts/study.sh [pellucid study options]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/pellucid study "$@"
