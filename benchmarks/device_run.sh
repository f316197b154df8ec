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
# everything lhb imports (import lighthubert is lazy and checks none of it), with versions
python3 -c "import torch, torchaudio, soundfile, h5py, typer, rich, numpy, lighthubert.job, lighthubert_cli.main
print('torch', torch.__version__, 'torchaudio', torchaudio.__version__, 'soundfile', soundfile.__version__, 'h5py',
      h5py.__version__, 'typer', typer.__version__, 'numpy', numpy.__version__, 'cuda', torch.cuda.is_available())" \
  2>&1 | tee "$OUT/preflight.txt" | tail -3; [ "${PIPESTATUS[0]}" = 0 ] || exit 1
# pytest-xdist is not installed there: -o addopts=-ra drops pyproject's "-n 2 --dist loadfile"
# the device run's limit is 600 s: tests 150 s + benchmarks 380 s + the steps above leave some margin
timeout "${TEST_TIMEOUT:-150}" python3 -m pytest tests/test_gpu.py tests/test_batching.py -q -p no:cacheprovider -o addopts=-ra -x 2>&1 | tee "$OUT/gpu_tests.txt" | tail -8
timeout "${BENCH_TIMEOUT:-380}" python3 benchmarks/gpu.py --hours "${HOURS:-10}" --long-minutes "${LONG_MINUTES:-60}" \
  --out "$OUT/gpu_results.txt" ${GPU_ARGS:-}
