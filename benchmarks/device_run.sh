#!/usr/bin/env bash
# The one prepared script for the GPU machine (the device tool runs it in the repository root with
# $OUT set; carry [".whl", ".devdata"] made by benchmarks/device_prepare.sh). No network there and
# possibly an older torch than this package's torch>=2.14 pin (the issue measured 2.11), so nothing is pip-installed from the project:
# the source tree runs as is, soundfile comes from the carried wheels. Results land in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/lhb-device}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site" LIGHTHUBERT_ORACLE_DIR="$PWD/.devdata/oracle" LHB_SPEECH="$PWD/.devdata/speech"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  > "$OUT/install.log" 2>&1 || { tail -20 "$OUT/install.log"; exit 1; }
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python3 -c "import torch, lighthubert, soundfile; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 1
timeout 180 python3 -m pytest tests/test_gpu.py tests/test_batching.py -q -p no:cacheprovider -x 2>&1 | tee "$OUT/gpu_tests.txt" | tail -8
timeout "${BENCH_TIMEOUT:-420}" python3 benchmarks/gpu.py --hours "${HOURS:-10}" --long-minutes "${LONG_MINUTES:-60}" \
  --out "$OUT/gpu_results.txt" ${GPU_ARGS:-}
