#!/usr/bin/env bash
# Set up the summarizer environment: a virtualenv with pinned dependencies and Horovod 0.28.1
# built from its sdist (with the TF 2.21 build fix) with Gloo and MPI, the built wheel cached outside the repo.
# MPI comes from Debian's OpenMPI (libopenmpi-dev, openmpi-bin): installed here when missing and run as root.
#
# Usage: scripts/setup.sh [--gpu] [--venv DIR]
#   --gpu       GPU build (needs nvcc, nccl.h): tensorflow[and-cuda], Horovod with NCCL as well (Dockerfile.gpu)
#   --venv DIR  where to create the virtualenv (default: .venv in the repo)
# Environment: SUMMARIZER_CACHE (default ~/.cache/summarizer) holds the Horovod sdist and wheels.
# Idempotent: a second run reuses the virtualenv and the cached wheel and only checks.
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TF_VERSION=2.21.0
HOROVOD_VERSION=0.28.1
PYTHON_MINOR=3.11
# --gpu only: TF 2.21's tested GPU build is CUDA 12.5 / cuDNN 9.3, but its and-cuda extra only sets floors (and
# floats to newer CUDA 12.x wheels): pin the floors, so the wheels match the CUDA 12.5 base of Dockerfile.gpu.
GPU_CUDA_WHEELS=(
  nvidia-cublas-cu12==12.5.3.2 nvidia-cuda-cupti-cu12==12.5.82 nvidia-cuda-nvcc-cu12==12.5.82
  nvidia-cuda-nvrtc-cu12==12.5.82 nvidia-cuda-runtime-cu12==12.5.82 nvidia-cudnn-cu12==9.3.0.75
  nvidia-cufft-cu12==11.2.3.61 nvidia-curand-cu12==10.3.6.82 nvidia-cusolver-cu12==11.6.3.83
  nvidia-cusparse-cu12==12.5.1.3 nvidia-nccl-cu12==2.27.7 nvidia-nvjitlink-cu12==12.5.82
)
VARIANT=cpu
VENV_DIR="$REPO_DIR/.venv"
CACHE_DIR=${SUMMARIZER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/summarizer}

while [ $# -gt 0 ]; do
  case "$1" in
    --gpu) VARIANT=gpu ;;
    --venv) VENV_DIR=$2; shift ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup: unknown option '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done

BUILD_DIRS=()
cleanup() { [ ${#BUILD_DIRS[@]} -eq 0 ] || rm -rf "${BUILD_DIRS[@]}"; }
trap cleanup EXIT

step() { printf '\n==> %s\n' "$*"; }
# pip warns once per package about find-links folders that do not exist on some machines; keep the rest.
pip_quietly() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

find_python() {
  local candidate
  for candidate in "${PYTHON:-}" python$PYTHON_MINOR python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       [ "$("$candidate" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = "$PYTHON_MINOR" ]; then
      command -v "$candidate"; return 0
    fi
  done
  return 1
}

check_prerequisites() {
  step "Checking prerequisites (Python $PYTHON_MINOR, g++, cmake)"
  PYTHON_BIN=$(find_python) || die "Python $PYTHON_MINOR not found (set PYTHON=/path/to/python$PYTHON_MINOR). On Debian/Ubuntu: apt-get install python$PYTHON_MINOR python$PYTHON_MINOR-venv python$PYTHON_MINOR-dev"
  "$PYTHON_BIN" -c 'import venv, ensurepip' 2>/dev/null || die "$PYTHON_BIN lacks venv/ensurepip. On Debian/Ubuntu: apt-get install python$PYTHON_MINOR-venv"
  command -v g++ >/dev/null || die "g++ not found; Horovod compiles C++. On Debian/Ubuntu: apt-get install g++"
  command -v cmake >/dev/null || die "cmake not found; Horovod's build needs it. On Debian/Ubuntu: apt-get install cmake"
  check_mpi
  echo "python: $PYTHON_BIN; $(g++ --version | head -1); $(cmake --version | head -1); $(mpirun --version | head -1)"
  if [ "$VARIANT" = gpu ]; then check_gpu_prerequisites; fi
}

# Horovod is built with MPI on every variant: the MPIJob launcher (deploy/mpijob.yaml) runs mpirun.
check_mpi() {
  if ! command -v mpicxx >/dev/null || ! command -v mpirun >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "installing Debian's OpenMPI (libopenmpi-dev openmpi-bin): Horovod's MPI controller builds against it"
      (export DEBIAN_FRONTEND=noninteractive
       apt-get install --yes --quiet --no-install-recommends libopenmpi-dev openmpi-bin >/dev/null 2>&1 ||
         { apt-get update --quiet >/dev/null && apt-get install --yes --quiet --no-install-recommends libopenmpi-dev openmpi-bin >/dev/null; }) ||
        die "installing libopenmpi-dev openmpi-bin failed"
    else
      die "mpicxx/mpirun not found; Horovod is built with MPI. On Debian/Ubuntu: apt-get install libopenmpi-dev openmpi-bin"
    fi
  fi
}

find_nvcc() {
  local cuda_home=${HOROVOD_CUDA_HOME:-/usr/local/cuda}
  if command -v nvcc >/dev/null 2>&1; then command -v nvcc; return 0; fi
  [ -x "$cuda_home/bin/nvcc" ] && echo "$cuda_home/bin/nvcc"
}

find_nccl_header() {
  local directory
  for directory in "${HOROVOD_NCCL_INCLUDE:-}" "${HOROVOD_NCCL_HOME:+$HOROVOD_NCCL_HOME/include}" \
                   "${HOROVOD_CUDA_HOME:-/usr/local/cuda}/include" /usr/include /usr/local/include; do
    if [ -n "$directory" ] && [ -f "$directory/nccl.h" ]; then echo "$directory/nccl.h"; return 0; fi
  done
  return 1
}

check_gpu_prerequisites() {
  step "Checking GPU build prerequisites (nvcc, MPI, NCCL headers)"
  local nvcc_bin nccl_header
  nvcc_bin=$(find_nvcc) || die "nvcc not found on PATH or in ${HOROVOD_CUDA_HOME:-/usr/local/cuda}/bin; Horovod's NCCL operations compile CUDA kernels. Use a CUDA -devel image (Dockerfile.gpu does) or install the CUDA toolkit, or set HOROVOD_CUDA_HOME"
  nccl_header=$(find_nccl_header) || die "nccl.h not found (looked in \$HOROVOD_NCCL_INCLUDE, \$HOROVOD_NCCL_HOME/include, the CUDA include directory, /usr/include, /usr/local/include). CUDA -devel images ship it; otherwise install libnccl-dev from NVIDIA's CUDA repository or set HOROVOD_NCCL_HOME"
  echo "nvcc: $nvcc_bin ($("$nvcc_bin" --version | grep -o 'release [0-9.]*')); mpicxx: $(command -v mpicxx); nccl.h: $nccl_header"
}

create_venv() {
  if [ -x "$VENV_DIR/bin/python" ]; then
    step "Reusing virtualenv $VENV_DIR"
  else
    step "Creating virtualenv $VENV_DIR"
    "$PYTHON_BIN" -m venv "$VENV_DIR"
  fi
  PIP=(pip_quietly "$VENV_DIR/bin/python" -m pip --disable-pip-version-check)
}

tensorflow_requirement() {
  if [ "$VARIANT" = gpu ]; then echo "tensorflow[and-cuda]==$TF_VERSION"; else echo "tensorflow-cpu==$TF_VERSION"; fi
}

install_requirements() {
  local cuda_wheels=()
  if [ "$VARIANT" = gpu ]; then cuda_wheels=("${GPU_CUDA_WHEELS[@]}"); fi
  step "Installing pinned dependencies ($(tensorflow_requirement), requirements.txt)"
  "${PIP[@]}" install --quiet --upgrade pip==25.3 setuptools==80.9.0 wheel==0.45.1
  "${PIP[@]}" install --quiet -c "$REPO_DIR/constraints.txt" "$(tensorflow_requirement)" "${cuda_wheels[@]}" \
    -r "$REPO_DIR/requirements.txt"
}

horovod_build_env() {
  export HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITH_MPI=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1
  if [ "$VARIANT" = gpu ]; then
    export HOROVOD_GPU_OPERATIONS=NCCL
  else
    unset HOROVOD_GPU_OPERATIONS
  fi
  MAKEFLAGS="-j$(nproc)"
  export MAKEFLAGS
}

patch_horovod_source() {
  local src=$1
  # TF 2.21 moved xla_builder.h; the XLA-compiled Horovod ops are optional, so leave them out (upstream PR #4302).
  sed -i '/xla_mpi_ops\.cc/d' "$src/horovod/tensorflow/CMakeLists.txt"
  # Gloo's global process set ignored --network-interfaces and fell back to the hostname across hosts.
  sed -i '/GlooContext::InitializeForProcessSet/,/CreateDevice/ s/device_attr\.iface = gloo_iface_;/device_attr.iface = global_context.gloo_iface_;/' \
    "$src/horovod/common/gloo/gloo_context.cc"
  grep -q 'xla_mpi_ops' "$src/horovod/tensorflow/CMakeLists.txt" && die "patching Horovod's CMakeLists.txt failed"
  grep -q 'global_context.gloo_iface_' "$src/horovod/common/gloo/gloo_context.cc" || die "patching Horovod's gloo_context.cc failed"
}

build_horovod_wheel() {
  local wheel_dir=$1 work
  work=$(mktemp -d)
  BUILD_DIRS+=("$work")
  mkdir -p "$CACHE_DIR/sdist"
  if [ ! -f "$CACHE_DIR/sdist/horovod-$HOROVOD_VERSION.tar.gz" ]; then
    step "Downloading the Horovod $HOROVOD_VERSION sdist"
    "${PIP[@]}" download --quiet --no-deps --no-binary :all: "horovod==$HOROVOD_VERSION" -d "$CACHE_DIR/sdist"
  fi
  tar -xzf "$CACHE_DIR/sdist/horovod-$HOROVOD_VERSION.tar.gz" -C "$work"
  patch_horovod_source "$work/horovod-$HOROVOD_VERSION"
  step "Building Horovod $HOROVOD_VERSION ($VARIANT: TensorFlow + Gloo + MPI$([ "$VARIANT" = gpu ] && echo ' + NCCL')); this takes a few minutes"
  horovod_build_env
  (cd "$work/horovod-$HOROVOD_VERSION" &&
     "${PIP[@]}" wheel --no-build-isolation --no-deps -w "$work/dist" . > "$work/build.log" 2>&1) ||
    { tail -40 "$work/build.log" >&2; die "Horovod build failed (log above)"; }
  mkdir -p "$wheel_dir"
  mv "$work"/dist/horovod-*.whl "$wheel_dir/"
}

install_horovod() {
  local wheel_dir="$CACHE_DIR/wheels/horovod-$HOROVOD_VERSION-$VARIANT-mpi-tf$TF_VERSION-py$PYTHON_MINOR"
  if "$VENV_DIR/bin/python" -c "import horovod, horovod.tensorflow" 2>/dev/null &&
     [ "$("$VENV_DIR/bin/python" -c 'import horovod; print(horovod.__version__)')" = "$HOROVOD_VERSION" ]; then
    step "Horovod $HOROVOD_VERSION already installed"
    return
  fi
  if ! ls "$wheel_dir"/horovod-*.whl >/dev/null 2>&1; then
    build_horovod_wheel "$wheel_dir"
  else
    step "Reusing cached Horovod wheel from $wheel_dir"
  fi
  "${PIP[@]}" install --quiet --no-deps "$wheel_dir"/horovod-*.whl
}

install_project() {
  step "Installing the summarizer package (editable)"
  "${PIP[@]}" install --quiet --no-deps --no-build-isolation -e "$REPO_DIR"
}

check_horovod_build() {
  step "Checking the Horovod build"
  local report
  report=$("$VENV_DIR/bin/horovodrun" --check-build)
  echo "$report"
  grep -q '\[X\] TensorFlow' <<<"$report" || die "Horovod was built without TensorFlow support"
  grep -q '\[X\] Gloo' <<<"$report" || die "Horovod was built without Gloo support"
  grep -q '\[X\] MPI' <<<"$report" || die "Horovod was built without MPI support (check mpicxx above)"
  if [ "$VARIANT" = gpu ]; then
    grep -q '\[X\] NCCL' <<<"$report" || die "Horovod was built without NCCL support (check nvcc and nccl.h above)"
  fi
}

main() {
  local start=$SECONDS
  check_prerequisites
  create_venv
  install_requirements
  install_horovod
  install_project
  check_horovod_build
  step "Set-up done in $((SECONDS - start)) s. Activate with: . $VENV_DIR/bin/activate"
}

main
