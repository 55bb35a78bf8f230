#!/usr/bin/env bash
# Every GPU check of the cache kernels and the GPU backends in one call, for a machine with an NVIDIA GPU
# (run from the repository root; no network needed). In order of importance, each under its own time limit:
#   1. pytest -m gpu: the CUDA kernels vs their CPU references, the Triton kernel vs csrc, the torch backend
#      (csrc / Triton cache ops, CUDA graphs) vs the CPU plan, graph replay == eager
#   2. arvc selftest --target cuda: every stage of every precision vs the reference
#   3. bench/bench_attention.py: csrc vs Triton vs decode-to-bf16 + SDPA at Wan-1.3B shapes
#   4. bench/gpu_bench.py: the 1.3B architecture at 480x832 vs the research-style bf16 baseline
# Output: $OUT (or bench/results/gpu_check): gpu_check.log plus the benchmarks' .md/.json results.
# Usage: tools/gpu_check.sh [--quick]   (--quick: gpu_bench with 4 blocks and two variants)
# Wheels in .whl/ (pinned versions the machine lacks, e.g. onnxruntime==1.31.1 for the opset-23 plans the
# CPU-side comparisons run) are installed first into /tmp/site; download them on a networked machine with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#       --platform manylinux_2_27_x86_64 -d .whl onnxruntime==1.31.1
set -uo pipefail
OUT=${OUT:-bench/results/gpu_check}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
export PYTHONUNBUFFERED=1
step() { echo "=== $* ($(date -u +%H:%M:%S))" | tee -a "$LOG"; }

step "GPU"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee -a "$LOG"
python3 -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name()); \
sys.exit(0 if torch.cuda.is_available() else 1)" 2>&1 | tee -a "$LOG" || { echo "no CUDA device" | tee -a "$LOG"; exit 1; }
if compgen -G ".whl/*.whl" > /dev/null; then
  step "carried wheels"
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl >> "$LOG" 2>&1 \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  ls .whl | tee -a "$LOG"
fi
step "install (editable, no dependencies: the machine's own torch, onnx, onnxruntime)"
python3 -m pip install -q --no-deps --no-build-isolation -e . >> "$LOG" 2>&1 || { echo "install failed" | tee -a "$LOG"; exit 1; }

step "pytest -m gpu"
timeout 300 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_kernels_gpu.py tests/test_attention_qcache_gpu.py \
  tests/test_triton_attention_gpu.py tests/test_torch_backend_gpu.py 2>&1 | tee -a "$LOG"
step "arvc selftest --target cuda"
timeout 150 python3 -m arvc selftest --target cuda 2>&1 | tee -a "$LOG"
step "bench_attention"
timeout 120 python3 bench/bench_attention.py --out "$OUT" 2>&1 | tee -a "$LOG"
step "gpu_bench"
if [ "${1:-}" = "--quick" ]; then
  timeout 400 python3 bench/gpu_bench.py --blocks 4 --variants bf16,fp8-kv --out "$OUT" 2>&1 | tee -a "$LOG"
else
  timeout 900 python3 bench/gpu_bench.py --out "$OUT" 2>&1 | tee -a "$LOG"
fi
step "done"
