#!/usr/bin/env bash
# One prepared check for a GPU machine, done in at most 8 minutes (each step has its own time limit):
#   1. environment: nvidia-smi, python/torch/CUDA/cuDNN versions, the device and its bf16 support;
#   2. the `gpu`-marked tests (full regime on CUDA: bf16 autocast, channels_last, loader workers);
#   3. benchmarks/train.py --device cuda: oodml's full-regime trainer vs a bare timm-style loop (goal >= 0.9);
#   4. benchmarks/paper_scale.py: the paper-scale training step (ResNet-50 random weights, then Lite0; 224 px,
#      batch 112, bf16, channels_last, GPU augmentation) in img/s and the CUB ladder's hours (goal <= 1 h on an H200).
# Needs only the repository and its venv (no network, no datasets: synthetic and packaged images).
#
#   benchmarks/gpu.sh [LOG]    (default LOG: $OUT/gpu-report.txt, else ./gpu-report.txt; PYTHON=... picks the python)
set -uo pipefail
cd "$(dirname "$0")/.."
LOG="${1:-${OUT:-.}/gpu-report.txt}"
PY="${PYTHON:-.venv/bin/python}"
export PYTHONUNBUFFERED=1 OODML_DATA="${OODML_DATA:-../shared/data}"
exec > >(tee "$LOG") 2>&1
STATUS=0
START=$(date +%s)

step() {  # step SECONDS TITLE COMMAND...: run with a time limit, report its exit status and time, keep going
    local limit=$1 title=$2
    shift 2
    local t0=$(date +%s)
    echo
    echo "=== $title (limit ${limit} s) ==="
    timeout --kill-after=10 "$limit" "$@"
    local rc=$?
    [ "$rc" -eq 124 ] && echo "(stopped at the ${limit} s limit)"
    echo "=== $title: exit $rc, $(( $(date +%s) - t0 )) s ==="
    [ "$rc" -ne 0 ] && STATUS=1
    return 0
}

echo "oodml GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
step 20 "environment" bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
    || echo 'nvidia-smi: not available'; \"$PY\" - <<'EOF'
import os, platform, torch
print(f'python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, '
      f'cuDNN {torch.backends.cudnn.version()}, CPUs {os.cpu_count()}')
if torch.cuda.is_available():
    d = torch.cuda.get_device_properties(0)
    print(f'device {d.name}, {d.total_memory / 2**30:.0f} GiB, capability {d.major}.{d.minor}, '
          f'bf16 {torch.cuda.is_bf16_supported()}')
else:
    print('torch sees no CUDA device: this torch build or driver cannot run the GPU steps (a CPU wheel? install '
          'a CUDA build of the same torch version)')
EOF"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA device: the GPU steps are skipped"
    exit 1
fi
step 130 "gpu tests" "$PY" -m pytest -q -p no:cacheprovider -m gpu tests
step 130 "benchmarks/train.py --device cuda (Lite0, batch 112)" "$PY" benchmarks/train.py --device cuda \
    --backbone efficientnet_lite0 --batch 112 --iterations 20 --loader-workers 8 --repeats 1
step 100 "paper scale, ResNet-50" "$PY" benchmarks/paper_scale.py --backbone resnet50 --batch 112 --iterations 30
step 80 "paper scale, Lite0" "$PY" benchmarks/paper_scale.py --backbone efficientnet_lite0 --batch 112 --iterations 30
echo
echo "total $(( $(date +%s) - START )) s; exit $STATUS; report in $LOG"
exit $STATUS
