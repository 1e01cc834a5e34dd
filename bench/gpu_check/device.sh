#!/usr/bin/env bash
# Run ON THE GPU MACHINE, through the device tool (docs/gpu-check.md gives the calls):
#   bench/gpu_check/device.sh stash          # calls 1..N-1: keep the carried .gpu/part<i>
#   bench/gpu_check/device.sh check [ARGS]   # last call: + reassemble onnxruntime-gpu,
#                                            # install every wheel, run the check
# The stash lives in /tmp, which survives between calls while the machine stays warm
# (30 s after a call ends): make the calls back to back.
set -euo pipefail
cd "$(dirname "$0")/../.."
STORE=/tmp/audioserve-gpu
SITE=/tmp/audioserve-site
case "${1:-}" in
  stash|check) ;;
  *) echo "usage: $0 stash | check [ARGS]" >&2; exit 2 ;;
esac
python3 -m bench.gpu_check.wheels stash .gpu "$STORE"
[ "$1" = "stash" ] && exit 0
shift
python3 -m bench.gpu_check.wheels join "$STORE"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$SITE" "$STORE"/*.whl
export PYTHONPATH="$SITE:$PWD"
# onnxruntime-gpu finds CUDA 13 / cuDNN 9 in the image's nvidia-* pip packages
NV_LIBS="$(python3 - <<'PY'
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
print(":".join(sorted({os.path.dirname(p) for r in roots
                       for p in glob.glob(os.path.join(r, "nvidia", "*", "lib", "*.so*"))})))
PY
)"
export LD_LIBRARY_PATH="${NV_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONUNBUFFERED=1 PYTHON=python3 AUDIOSERVE_BENCH_CLIENT=python  # no wrk, no apt there
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
# the full output stays in bench/results/gpu there; report.md, results.json and a tarball
# of it are copied to $OUT (the tool brings back at most 8 files)
exec python3 -m bench.gpu_check --provider cuda --out bench/results/gpu "$@"
