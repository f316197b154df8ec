#!/usr/bin/env bash
# Run HERE (not on the GPU machine), in the repository root, before `device_run.sh` is sent: fills the
# two ignored folders the device run needs, which have no network there:
#   .whl/     soundfile + cffi + pycparser wheels for the device's Python 3.12, x86-64
#   .devdata/ the authors' package (tests/oracle.py's cache) and the example speech
# Then call the device tool with carry [".whl", ".devdata"] and command `bash benchmarks/device_run.sh`.
set -euo pipefail
PY=${PYTHON:-python3}
rm -rf .whl && mkdir -p .whl
for pkg in soundfile==0.13.1 cffi==2.0.0 pycparser==2.23; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "$pkg"
done
ORACLE=${LIGHTHUBERT_ORACLE_DIR:-$HOME/.cache/lighthubert-tests}
if [ ! -f "$ORACLE/authors_lighthubert/lighthubert.py" ]; then
  echo "no authors' package in $ORACLE: run a parity test once (tests/oracle.py fetches it)" >&2; exit 1
fi
SPEECH=${LHB_SPEECH:-$(cd .. && pwd)/shared/data/speech}
rm -rf .devdata && mkdir -p .devdata/oracle
cp -r "$ORACLE/authors_lighthubert" .devdata/oracle/
cp -r "$SPEECH" .devdata/speech
du -sh .whl .devdata
