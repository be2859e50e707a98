#!/usr/bin/env bash
# The GPU check of issue 15, run in one go on a lent CUDA machine (the `device` tool):
# the CUDA test module, then benchmarks/bench_cuda.py against captum, shap and Torch-Pruning,
# then the CPU suite under that machine's torch (a compatibility check). Logs go to $OUT.
# Peer libraries travel as wheels in .whl (see /work/.library/device/README.md).
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src:$PWD/tests:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
nvidia-smi -L; python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available())"
echo "== tests/test_cuda.py"
timeout "${TEST_SECONDS:-150}" python3 -m pytest -q -p no:cacheprovider --tb=short -rfE \
  tests/test_cuda.py 2>&1 | tee "$OUT/cuda_tests.log" | tail -n 60
echo "== benchmarks/bench_cuda.py"
timeout "${BENCH_SECONDS:-240}" python3 benchmarks/bench_cuda.py --json "$OUT/bench_cuda.json" \
  ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench_cuda.log" | grep -v "^ \{4,\}\|Traceback\|^  File\|^--\|^ *Name\|^ *aten\|^ *autograd\|^ *cuda\|^ *Self\|^ *void\|^ *Memcpy\|^ *Activity"
if [ "${SUITE_SECONDS:-0}" -gt 0 ]; then
  echo "== CPU suite under this machine's torch (not slow, no peers)"
  timeout "$SUITE_SECONDS" python3 -m pytest -q -p no:cacheprovider -n 12 --timeout 120 -m "not slow and not peer and not zoo and not cuda" \
    --ignore=tests/test_explorer_browser.py 2>&1 | tee "$OUT/suite.log" | tail -n 25
fi
