#!/usr/bin/env bash
# The one prepared script for the GPU machine (the `device` tool runs it in the repository root with
# $OUT set): install, the GPU tests, then the GPU benchmark. Results land in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/lhb-device}
mkdir -p "$OUT"
python -m pip install -q '.[test]' > "$OUT/install.log" 2>&1 || { tail -20 "$OUT/install.log"; exit 1; }
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python -m pytest tests/test_gpu.py -q -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.txt" | tail -5
python benchmarks/gpu.py --hours "${HOURS:-1.0}" --out "$OUT/gpu_results.txt"
