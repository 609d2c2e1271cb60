#!/usr/bin/env bash
# The GPU figures on a lent device machine, in as few calls as its 15 minutes allow (docs/benchmarks.md, "GPU").
# The machine has torch with CUDA, onnx, sentencepiece and a CPU onnxruntime, no network: onnxruntime-gpu
# (255 MB) travels in 4 parts of <= 61 MiB, one per call (a call carries at most 64 MiB).
#
#   here, once:     bash benchmarks/gpu_session.sh prepare       # -> .whl/ort-part-00..03, ort-name, ort-sha256
#   there, k=0..2:  carry [".whl/ort-part-0k"]  command: bash benchmarks/gpu_session.sh stage
#   there, last:    carry [".whl/ort-part-03", ".whl/ort-name", ".whl/ort-sha256"]
#                   command: bash benchmarks/gpu_session.sh run --model pi0 --cameras 3 1 --json $OUT/pi0.json
# `run` stages what it carries, joins and checks the wheel, installs it and pi0edge under /tmp/site (no
# dependency is fetched), then runs benchmarks/gpu_latency.py with the remaining arguments. A later `run` on
# the same warm machine reuses the install and the exported bundles (/tmp/pi0edge-gpu). Dry run on a CPU machine:
#   SKIP_ORT_GPU=1 bash benchmarks/gpu_session.sh run --size tiny --device cpu --backend ort-cpu --iters 2
set -euo pipefail
cd "$(dirname "$0")/.."
WHEEL_VERSION=${WHEEL_VERSION:-1.31.1}
PARTS=/tmp/ortgpu-parts
SITE=/tmp/site

stage() {
    mkdir -p "$PARTS"
    cp .whl/ort-* "$PARTS"/ 2>/dev/null || true
    ls -la "$PARTS"
}

case "${1:-}" in
prepare)
    mkdir -p .whl
    grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >>.git/info/exclude
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 -d .whl "onnxruntime-gpu==$WHEEL_VERSION"
    wheel=$(ls .whl/onnxruntime_gpu-"$WHEEL_VERSION"-*.whl)
    basename "$wheel" >.whl/ort-name
    sha256sum "$wheel" | cut -d' ' -f1 >.whl/ort-sha256
    split -b 61M -d "$wheel" .whl/ort-part-
    rm "$wheel"
    ls -la .whl
    ;;
stage)
    stage
    ;;
run)
    shift
    stage
    # SKIP_ORT_GPU=1: a dry run of the rest on a machine without the wheel (here: --device cpu --backend ort-cpu)
    if [ -z "${SKIP_ORT_GPU:-}" ] && ! PYTHONPATH=$SITE python3 -c "import onnxruntime as o, sys
sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" 2>/dev/null; then
        name=$(cat "$PARTS/ort-name")
        cat "$PARTS"/ort-part-* >"/tmp/$name"
        echo "$(cat "$PARTS/ort-sha256")  /tmp/$name" | sha256sum -c -
        python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "/tmp/$name"
    fi
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --target "$SITE" --upgrade .
    export PYTHONPATH=$SITE PYTHONUNBUFFERED=1
    python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    python3 benchmarks/gpu_latency.py --workdir /tmp/pi0edge-gpu "$@"
    ;;
*)
    echo "usage: $0 prepare | stage | run [gpu_latency.py arguments]" >&2
    exit 2
    ;;
esac
