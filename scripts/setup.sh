#!/usr/bin/env bash
# Set up the summarizer environment: a virtualenv with pinned dependencies and Horovod 0.28.1
# built from its sdist (with the TF 2.21 build fix) with Gloo and MPI, the built wheel cached outside the repo.
# MPI comes from Debian's OpenMPI (libopenmpi-dev, openmpi-bin): installed here when missing and run as root.
#
# Usage: scripts/setup.sh [--gpu [--cuda-from-wheels]] [--venv DIR]
#   --gpu               GPU build: tensorflow[and-cuda], Horovod with NCCL as well, against the NCCL wheel
#                       TensorFlow loads (nvidia-nccl-cu12). Needs a CUDA toolkit's nvcc (Dockerfile.gpu's -devel image)
#   --cuda-from-wheels  with --gpu, on a machine without a CUDA toolkit (no GPU needed either): nvcc and the CUDA
#                       headers from PyPI's CUDA 13.0 toolkit wheels (scripts/build-gpu.sh; README "The GPU build")
#   --venv DIR          where to create the virtualenv (default: .venv in the repo)
# Environment: SUMMARIZER_CACHE (default ~/.cache/summarizer) holds the Horovod sdist and wheels;
# HOROVOD_BUILD_CUDA_CC_LIST (GPU) the GPU generations to compile for (default with --cuda-from-wheels: 80,90).
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
# --cuda-from-wheels only: the toolkit that compiles Horovod's CUDA code. PyPI's CUDA 12 nvcc wheels
# (nvidia-cuda-nvcc-cu12) hold ptxas alone, without the nvcc driver, cudafe++ or cicc, and CUDA 13's nvcc does
# not compile against CUDA 12 headers; CUDA 13.0 is the oldest complete toolkit on PyPI. Installed into the
# build directory only: the venv keeps TensorFlow's CUDA 12.5 wheels, Horovod links CUDA 13.0's runtime
# statically (so it needs a driver for CUDA 13, R580 or newer) and TensorFlow's libnccl.so.2.
CUDA_BUILD_WHEELS=(
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
)
CUDA_FROM_WHEELS_CC_LIST=80,90
VARIANT=cpu
CUDA_FROM_WHEELS=0
VENV_DIR="$REPO_DIR/.venv"
CACHE_DIR=${SUMMARIZER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/summarizer}

while [ $# -gt 0 ]; do
  case "$1" in
    --gpu) VARIANT=gpu ;;
    --cuda-from-wheels) CUDA_FROM_WHEELS=1 ;;
    --venv) VENV_DIR=$2; shift ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup: unknown option '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ "$CUDA_FROM_WHEELS" = 1 ] && [ "$VARIANT" != gpu ]; then
  echo "setup: --cuda-from-wheels is for the GPU build: add --gpu" >&2; exit 2
fi

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
  if [ "$VARIANT" = gpu ] && [ "$CUDA_FROM_WHEELS" = 0 ]; then check_gpu_prerequisites; fi
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

check_gpu_prerequisites() {
  step "Checking GPU build prerequisites (nvcc; NCCL comes with TensorFlow's wheels)"
  local nvcc_bin
  nvcc_bin=$(find_nvcc) || die "nvcc not found on PATH or in ${HOROVOD_CUDA_HOME:-/usr/local/cuda}/bin; Horovod's NCCL operations compile CUDA kernels. Use a CUDA -devel image (Dockerfile.gpu does), install the CUDA toolkit or set HOROVOD_CUDA_HOME; or take the toolkit from PyPI wheels with --cuda-from-wheels"
  echo "nvcc: $nvcc_bin ($("$nvcc_bin" --version | grep -o 'release [0-9.]*')); mpicxx: $(command -v mpicxx)"
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

site_packages() { "$VENV_DIR/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }

# --cuda-from-wheels: the CUDA 13.0 toolkit from PyPI wheels as $1/cuda (nvcc, headers, static runtime).
cuda_from_wheels() {
  local work=$1
  step "Installing the CUDA build toolkit from PyPI wheels into the build directory (${CUDA_BUILD_WHEELS[*]})"
  "${PIP[@]}" install --quiet --no-deps --target "$work/cuda-wheels" "${CUDA_BUILD_WHEELS[@]}"
  ln -s "$work/cuda-wheels/nvidia/cu13" "$work/cuda"
  # nvcc links with -L$CUDA_HOME/lib64; CMake's FindCUDAToolkit wants libcudart.so beside the static runtime.
  ln -s lib "$work/cuda/lib64"
  ln -s libcudart.so.13 "$work/cuda/lib/libcudart.so"
  export HOROVOD_CUDA_HOME="$work/cuda"
  export HOROVOD_BUILD_CUDA_CC_LIST=${HOROVOD_BUILD_CUDA_CC_LIST:-$CUDA_FROM_WHEELS_CC_LIST}
  # Horovod's build runs the first nvcc on PATH: this one, not a system toolkit of another version.
  export PATH="$HOROVOD_CUDA_HOME/bin:$PATH"
  check_gpu_prerequisites
}

# GPU: Horovod links the NCCL TensorFlow loads (the venv's nvidia-nccl-cu12; the wheel has no static library)
# and finds it at run time by rpath.
nccl_from_wheel() {
  local nccl
  nccl=$(site_packages)/nvidia/nccl
  [ -f "$nccl/include/nccl.h" ] && [ -f "$nccl/lib/libnccl.so.2" ] ||
    die "nccl.h or libnccl.so.2 missing under $nccl (nvidia-nccl-cu12 comes with tensorflow[and-cuda])"
  # The linker's name for it (CMake's find_library looks for libnccl.so); the wheel ships only libnccl.so.2.
  [ -e "$nccl/lib/libnccl.so" ] || ln -s libnccl.so.2 "$nccl/lib/libnccl.so"
  export HOROVOD_NCCL_HOME="$nccl" HOROVOD_NCCL_INCLUDE="$nccl/include" HOROVOD_NCCL_LIB="$nccl/lib"
  export HOROVOD_NCCL_LINK=SHARED
  # Horovod's TensorFlow library is site-packages/horovod/tensorflow/mpi_lib*.so.
  export LDFLAGS="${LDFLAGS:+$LDFLAGS }-Wl,-rpath,\$ORIGIN/../../nvidia/nccl/lib"
  echo "nccl.h: $nccl/include/nccl.h ($(sed -n 's/^#define NCCL_VERSION_CODE \([0-9]*\).*/NCCL_VERSION_CODE \1/p' "$nccl/include/nccl.h"))"
}

# The cached wheel's directory name: everything that changes the binary (GPU: the nvcc and the GPU generations).
wheel_directory() {
  local name="horovod-$HOROVOD_VERSION-$VARIANT-mpi-tf$TF_VERSION-py$PYTHON_MINOR" nvcc_release
  if [ "$VARIANT" = gpu ]; then
    if [ "$CUDA_FROM_WHEELS" = 1 ]; then
      nvcc_release=wheels$(printf '%s\n' "${CUDA_BUILD_WHEELS[@]}" | sed -n 's/^nvidia-cuda-nvcc==\([0-9]*\.[0-9]*\).*/\1/p')
      name+="-nvcc$nvcc_release-cc${HOROVOD_BUILD_CUDA_CC_LIST:-$CUDA_FROM_WHEELS_CC_LIST}"
    else
      nvcc_release=$("$(find_nvcc)" --version | grep -o 'release [0-9.]*' | cut -d ' ' -f 2)
      name+="-nvcc$nvcc_release-cc${HOROVOD_BUILD_CUDA_CC_LIST:-all}"
    fi
  fi
  echo "$CACHE_DIR/wheels/${name//,/-}"
}

patch_horovod_source() {
  local src=$1
  # TF 2.21 moved xla_builder.h; the XLA-compiled Horovod ops are optional, so leave them out (upstream PR #4302).
  sed -i '/xla_mpi_ops\.cc/d' "$src/horovod/tensorflow/CMakeLists.txt"
  # Gloo's global process set ignored --network-interfaces and fell back to the hostname across hosts.
  sed -i '/GlooContext::InitializeForProcessSet/,/CreateDevice/ s/device_attr\.iface = gloo_iface_;/device_attr.iface = global_context.gloo_iface_;/' \
    "$src/horovod/common/gloo/gloo_context.cc"
  # GPU builds: TF 2.21 no longer exports stream_executor::gpu::AsGpuStreamValue, which Horovod declares and
  # calls to get TF's CUDA stream (the import failed with "undefined symbol"); define it from Stream's public
  # platform_specific_handle() instead.
  sed -i 's|^GpuStreamHandle AsGpuStreamValue(Stream\* stream);|inline GpuStreamHandle AsGpuStreamValue(Stream* stream);|' \
    "$src/horovod/tensorflow/mpi_ops.cc"
  sed -i '\|^#include "tensorflow/compiler/xla/stream_executor/stream.h"$|a\
namespace stream_executor { namespace gpu {\
inline GpuStreamHandle AsGpuStreamValue(Stream* stream) {\
  return static_cast<GpuStreamHandle>(stream->platform_specific_handle().stream);\
} } }' "$src/horovod/tensorflow/mpi_ops.cc"
  grep -q 'xla_mpi_ops' "$src/horovod/tensorflow/CMakeLists.txt" && die "patching Horovod's CMakeLists.txt failed"
  grep -q 'global_context.gloo_iface_' "$src/horovod/common/gloo/gloo_context.cc" || die "patching Horovod's gloo_context.cc failed"
  grep -q '^inline GpuStreamHandle AsGpuStreamValue(Stream\* stream);' "$src/horovod/tensorflow/mpi_ops.cc" &&
    grep -q 'platform_specific_handle().stream' "$src/horovod/tensorflow/mpi_ops.cc" || die "patching Horovod's mpi_ops.cc failed"
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
  if [ "$CUDA_FROM_WHEELS" = 1 ]; then cuda_from_wheels "$work"; fi
  if [ "$VARIANT" = gpu ]; then nccl_from_wheel; fi
  step "Building Horovod $HOROVOD_VERSION ($VARIANT: TensorFlow + Gloo + MPI$([ "$VARIANT" = gpu ] && echo ' + NCCL')); this takes a few minutes"
  horovod_build_env
  (cd "$work/horovod-$HOROVOD_VERSION" &&
     "${PIP[@]}" wheel --no-build-isolation --no-deps -w "$work/dist" . > "$work/build.log" 2>&1) ||
    { tail -40 "$work/build.log" >&2; die "Horovod build failed (log above)"; }
  mkdir -p "$wheel_dir"
  mv "$work"/dist/horovod-*.whl "$wheel_dir/"
}

install_horovod() {
  local wheel_dir
  wheel_dir=$(wheel_directory)
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
  # Through summarizer.quiet: horovodrun's build checks import TensorFlow, whose start-up lines say nothing here.
  report=$("$VENV_DIR/bin/python" -m summarizer.quiet "$VENV_DIR/bin/horovodrun" --check-build)
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
