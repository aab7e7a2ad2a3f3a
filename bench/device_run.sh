#!/usr/bin/env bash
# The GPU check as one device-tool call: install the carried kit without an index, then run
# bench/gpu_check.py on CUDA against the machine's CPU, with its log and JSON under $OUT.
#
#   bash bench/device_kit.sh      # here, once: builds .device-kit/ (see that script)
#   run(command="bash bench/device_run.sh", carry=[".device-kit"], timeout_s=600)
#
# Extra arguments go to gpu_check.py. GPU_CHECK_TIMEOUT (s, default 360) and STACKED_TIMEOUT
# (s, default 150: the stacked benchmark after it) stop each in time for what it printed and
# wrote to come back within the call's limit.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
export PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    "$PYTHON" -c 'import sys, torch; print("python", sys.version.split()[0], "torch",
        torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'
} 2>&1 | tee "$OUT/machine.txt"
if [[ ! -d .device-kit ]]; then
    echo "device_run: no .device-kit/: build it with bench/device_kit.sh and carry it" >&2
    exit 2
fi
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-index \
    --find-links .device-kit -r bench/device_requirements.txt 2>&1 | tee "$OUT/install.log"
if ((PIPESTATUS[0])); then
    echo "device_run: the kit does not install on this image (above); rebuild it" >&2
    exit 2
fi
"$PYTHON" -m pip check >>"$OUT/install.log" 2>&1 || true # information: the image's own pins
timeout --signal=INT --kill-after=30 "${GPU_CHECK_TIMEOUT:-360}" \
    "$PYTHON" bench/gpu_check.py --workdir /tmp/gpu-check "$@" 2>&1 | tee "$OUT/gpu_check.log"
status=${PIPESTATUS[0]}
cp bench/results/gpu_check.json "$OUT/" 2>/dev/null || true
echo "gpu_check exit status $status"
# Stacked training on the GPU, where stacking fills the device: a loss's models stacked
# against one at a time (bench/sections/stacked.py), in what is left of the call.
timeout --signal=INT --kill-after=20 "${STACKED_TIMEOUT:-150}" \
    "$PYTHON" bench/run.py --quick --only stacked --device cuda --threads 1 2>&1 |
    tee "$OUT/stacked.log"
cp bench/results/results_quick.md "$OUT/stacked.md" 2>/dev/null || true
exit "$status"
