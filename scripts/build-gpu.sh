#!/usr/bin/env bash
# Build the GPU variant on a machine without a GPU or a CUDA toolkit, and check what can be checked without a GPU.
# Runs `scripts/setup.sh --gpu --cuda-from-wheels` into a virtualenv of its own (tensorflow[and-cuda] with its
# CUDA 12.5 wheels; Horovod with NCCL, MPI and Gloo, compiled by PyPI's CUDA 13.0 toolkit), caches the Horovod
# wheel like the CPU set-up (~/.cache/summarizer/wheels), then checks that TensorFlow's GPU build imports.
# tests/test_gpu_build.py checks the result. About 25 minutes on 2 cores the first time (6 GB of wheels).
#
# Usage: scripts/build-gpu.sh [--venv DIR]
#   --venv DIR  the GPU virtualenv (default: $SUMMARIZER_CACHE/gpu-venv, i.e. ~/.cache/summarizer/gpu-venv)
# Environment: HOROVOD_BUILD_CUDA_CC_LIST (default 80,90: Ampere and Hopper) as for setup.sh.
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE_DIR=${SUMMARIZER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/summarizer}
VENV_DIR="$CACHE_DIR/gpu-venv"

while [ $# -gt 0 ]; do
  case "$1" in
    --venv) VENV_DIR=$2; shift ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-gpu: unknown option '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done

start=$SECONDS
"$REPO_DIR/scripts/setup.sh" --gpu --cuda-from-wheels --venv "$VENV_DIR"

printf '\n==> Checking that TensorFlow'"'"'s GPU build imports (no GPU needed)\n'
# TF logs that it finds no CUDA driver here; keep its own lines out of the report.
TF_CPP_MIN_LOG_LEVEL=3 "$VENV_DIR/bin/python" - <<'PYTHON'
import sys

import tensorflow as tf

info = tf.sysconfig.get_build_info()
if not tf.test.is_built_with_cuda():
    sys.exit(f"TensorFlow {tf.__version__} is not a CUDA build")
gpus = tf.config.list_physical_devices("GPU")
print(f"TensorFlow {tf.__version__}, CUDA {info['cuda_version']}, cuDNN {info['cudnn_version']}; visible GPUs: {len(gpus)}")
PYTHON
printf '\n==> GPU build done in %d s: %s\n' "$((SECONDS - start))" "$VENV_DIR"
