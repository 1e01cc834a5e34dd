#!/usr/bin/env bash
# Run HERE, where PyPI is reachable: fetch the cp312 wheels the GPU machine lacks
# (bench/gpu_check/wheels.txt) and pack them, onnxruntime-gpu in slices, into carry-sized
# git-ignored folders .gpu/part1 ... .gpu/partN (bench/gpu_check/wheels.py). Then make the
# device calls listed in docs/gpu-check.md, one folder per call, back to back.
#   bench/gpu_check/prepare.sh            # about 330 MB to download
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || grep -qx '/.gpu/' .gitignore \
  || echo '/.gpu/' >> "$(git rev-parse --git-path info/exclude)"
rm -rf .gpu/download
mkdir -p .gpu/download
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64)
SDIST_ONLY="chattts encodec"   # on PyPI as source only: pure-Python wheels are built here
BINARY=() BUILD=()
while read -r spec; do
  case "$spec" in ''|'#'*) continue ;; esac
  name="${spec%%==*}"
  if [[ " $SDIST_ONLY " == *" $name "* ]]; then BUILD+=("$spec"); else BINARY+=("$spec"); fi
done < bench/gpu_check/wheels.txt
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${PLATFORMS[@]}" -d .gpu/download "${BINARY[@]}"
"$PY" -m pip wheel -q --no-deps -w .gpu/download "${BUILD[@]}"
"$PY" -m bench.gpu_check.wheels pack .gpu/download .gpu
ls .gpu/download | wc -l | xargs echo "wheels:"
