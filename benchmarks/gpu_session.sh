#!/usr/bin/env bash
# The first GPU figures in one short session on a lent device machine (docs/benchmarks.md, "GPU").
# The machine is bare (torch 2.11+cu130 with its nvidia-* CUDA 13 / cuDNN 9 wheels, a CPU onnxruntime, no
# network) and a call carries at most 64 MiB, working tree included: onnxruntime-gpu 1.31.1 (243.7 MiB) travels
# as 5 parts of <= 60 MiB, one per call, back to back while the machine stays warm (/tmp survives between
# calls, not between sessions). The first call also starts the CPU-bound export of both full-size bundles in
# the background, so that it overlaps the staging calls.
#
#   here, once:  python benchmarks/prepare_gpu_wheels.py prepare   # -> benchmarks/.whl/ (git-ignored)
#   there, calls 1-4 (k = 00..03), timeout_s 120:
#     carry ["benchmarks/.whl/manifest.json", "benchmarks/.whl/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl.part-0k"]
#     command: bash benchmarks/gpu_session.sh stage
#   there, call 5, timeout_s 600:
#     carry ["benchmarks/.whl/manifest.json", "benchmarks/.whl/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl.part-04"]
#     command: bash benchmarks/gpu_session.sh run
#   -> $OUT/gpu.json, $OUT/gpu.md, $OUT/export.log
# `run` installs onnxruntime-gpu if every part arrived intact (else it benchmarks eager torch + ort-cpu and
# says so loudly), waits for the background export, then runs benchmarks/gpu_latency.py under --budget-s
# (480 s less the wait). Extra arguments of `run` go to gpu_latency.py. A CPU rehearsal of `run` here:
#   SKIP_ORT_GPU=1 PY=.venv/bin/python CARRY=/tmp/r/carry STAGE=/tmp/r/stage SITE=/tmp/r/site WORK=/tmp/r/work \
#       OUT=/tmp/r/out bash benchmarks/gpu_session.sh run --dry-run --models pi0
set -euo pipefail
cd "$(dirname "$0")/.."
SITE=${SITE:-/tmp/site}
WORK=${WORK:-/tmp/pi0edge-gpu}
OUT=${OUT:-/tmp/pi0edge-gpu-out}
PY=${PY:-python3}
MODELS=${MODELS:-pi0 pi05}
WHEELS="--carry-dir ${CARRY:-benchmarks/.whl} --stage-dir ${STAGE:-/tmp/pi0edge-wheel-parts}"
mkdir -p "$WORK" "$OUT"

install_pi0edge() {
    # pyproject's package-dir as links into this tree: no build step (the image's setuptools may predate the
    # one pyproject needs) and every call sees the tree it carried
    [ -d "$SITE/pi0edge" ] && return 0
    mkdir -p "$SITE/pi0edge"
    ln -s "$PWD"/core/*.py "$SITE/pi0edge/"
    for package in export runtime robot_io calibration; do ln -s "$PWD/$package" "$SITE/pi0edge/$package"; done
}

start_export() {
    # bundles only (torch + onnx, CPU): their own process session outlives this call
    [ -f "$WORK/export.pid" ] && return 0
    PYTHONPATH=$SITE setsid nohup $PY benchmarks/gpu_latency.py --export-only --models $MODELS --cameras 3 \
        --budget-s 1800 --workdir "$WORK" >"$WORK/export.log" 2>&1 </dev/null &
    echo $! >"$WORK/export.pid"
    echo "background export started (pid $(cat "$WORK/export.pid")), log $WORK/export.log"
}

wait_for_export() {  # -> prints the seconds waited; past 300 s the export is ended and `run` exports itself
    local waited=0 pid
    [ -f "$WORK/export.pid" ] || { echo 0; return; }
    pid=$(cat "$WORK/export.pid")
    while kill -0 "$pid" 2>/dev/null && [ $waited -lt 300 ]; do
        sleep 5
        waited=$((waited + 5))
    done
    kill -- -"$pid" 2>/dev/null || true  # its own process group (setsid): never two exports of one bundle
    echo $waited
}

case "${1:-}" in
stage)
    $PY benchmarks/prepare_gpu_wheels.py stage $WHEELS
    install_pi0edge
    [ -n "${SKIP_EXPORT:-}" ] || start_export
    ;;
run)
    shift
    $PY benchmarks/prepare_gpu_wheels.py stage $WHEELS
    install_pi0edge
    if [ -z "${SKIP_ORT_GPU:-}" ]; then
        $PY benchmarks/prepare_gpu_wheels.py install $WHEELS ||
            echo "!!! onnxruntime-gpu NOT installed: eager torch + ort-cpu only (see above)" >&2
    fi
    waited=$(wait_for_export)  # started by a `stage` call; without one, gpu_latency.py exports inline
    cp "$WORK/export.log" "$OUT/" 2>/dev/null || true
    echo "waited ${waited} s for the background export"
    $PY -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())" || true
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    PYTHONPATH=$SITE PYTHONUNBUFFERED=1 $PY benchmarks/gpu_latency.py --models $MODELS --cameras 3 \
        --budget-s $((480 - waited)) --workdir "$WORK" --json "$OUT/gpu.json" "$@"
    ;;
*)
    echo "usage: $0 stage | run [gpu_latency.py arguments]" >&2
    exit 2
    ;;
esac
