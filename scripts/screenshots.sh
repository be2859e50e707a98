#!/usr/bin/env bash
# Screenshots of the explorer's main views, taken in headless Chromium (Debian's `chromium`).
# Runs a small study with image and tabular models (about a minute on 2 cores), writes its
# static explorer page, and saves PNGs of every view to OUT (default: explorer-screenshots/).
# Usage: bash scripts/screenshots.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-explorer-screenshots}"
bash scripts/setup.sh test
mkdir -p "$out"
cat > "$out/study.toml" <<'TOML'
stages = ["interpretability"]
[interpretability]
models = ["digits/SmallCNN", "breast_cancer/MLP"]
clip_models = ["digits/SmallCNN"]
methods = ["saliency", "input_x_gradient", "integrated_gradients", "occlusion"]
clipping = ["autoclip"]
unstructured = [0.8]
structured = [0.5]
n_explain = 24
TOML
.venv/bin/pellucid study --quick --config "$out/study.toml" --out "$out/study" --quiet
.venv/bin/python scripts/explorer_screenshots.py "$out/study" "$out"
