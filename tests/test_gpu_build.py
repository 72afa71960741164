"""The GPU variant built without a GPU: the virtualenv and cached wheel that scripts/build-gpu.sh leaves.

Skipped, saying why, when that build has not run on this machine (about 25 minutes and 6 GB of wheels):
run ``scripts/build-gpu.sh``, then this module. What it proves and what only a GPU host can: README.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.helpers import shell_assignments

SETUP_SCRIPT = REPO_ROOT / "scripts" / "setup.sh"
PROBE = Path(__file__).parent / "workers" / "gpu_build_probe.py"
PINS = shell_assignments(SETUP_SCRIPT)
# TensorFlow's NCCL wheel, pinned by setup.sh: the NCCL Horovod must be compiled against and load.
NCCL_PIN = re.search(r"nvidia-nccl-cu12==(\d+)\.(\d+)\.(\d+)", SETUP_SCRIPT.read_text(encoding="utf-8"))


def cache_directory() -> Path:
    """setup.sh's and build-gpu.sh's cache: $SUMMARIZER_CACHE, else $XDG_CACHE_HOME/summarizer."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "summarizer"
    return Path(os.environ.get("SUMMARIZER_CACHE", default))


GPU_VENV = Path(os.environ.get("SUMMARIZER_GPU_VENV", cache_directory() / "gpu-venv"))
GPU_BIN = GPU_VENV / "bin"


def missing_build_reason() -> str | None:
    wheels = sorted((cache_directory() / "wheels").glob("horovod-*-gpu-*/horovod-*.whl"))
    if not wheels:
        return f"no GPU Horovod wheel under {cache_directory() / 'wheels'}; run scripts/build-gpu.sh"
    if not (GPU_BIN / "horovodrun").exists():
        return f"no GPU virtualenv with Horovod at {GPU_VENV}; run scripts/build-gpu.sh"
    return None


SKIP_REASON = missing_build_reason()
pytestmark = pytest.mark.skipif(SKIP_REASON is not None, reason=f"GPU build: {SKIP_REASON}")


def gpu_environment() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PATH": f"{GPU_BIN}{os.pathsep}{os.environ['PATH']}"}


@pytest.fixture(scope="module")
def probe() -> dict:
    result = subprocess.run(
        [str(GPU_BIN / "python"), str(PROBE)],
        capture_output=True,
        text=True,
        env=gpu_environment(),
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_check_build_lists_tensorflow_mpi_gloo_and_nccl() -> None:
    report = subprocess.run(
        [str(GPU_BIN / "horovodrun"), "--check-build"],
        capture_output=True,
        text=True,
        env=gpu_environment(),
        timeout=180,
        check=True,
    ).stdout
    sections = dict(re.findall(r"Available ([\w ]+):\n((?:[ \t]+\[.\] \w+[ \t]*\n?)+)", report))
    ticked = {section: set(re.findall(r"\[X\] (\w+)", body)) for section, body in sections.items()}
    assert "TensorFlow" in ticked["Frameworks"], report
    assert {"MPI", "Gloo"} <= ticked["Controllers"], report
    assert {"NCCL", "MPI", "Gloo"} <= ticked["Tensor Operations"], report


def test_tensorflow_is_the_pinned_cuda_build_and_imports_without_a_gpu(probe: dict) -> None:
    assert (probe["tensorflow"], probe["built_with_cuda"]) == (PINS["TF_VERSION"], True)
    # TF 2.21's tested GPU build: the CUDA/cuDNN wheels setup.sh pins and Dockerfile.gpu's base image.
    assert probe["cuda_version"].startswith("12.5.") and probe["cudnn_version"].startswith("9")
    assert probe["visible_gpus"] == 0  # none on this machine: importing must work anyway


def test_horovod_is_built_with_every_backend_against_tensorflows_nccl(probe: dict) -> None:
    assert probe["horovod"] == PINS["HOROVOD_VERSION"]
    major, minor, patch = (int(part) for part in NCCL_PIN.groups())
    assert probe["nccl_built"] == major * 10000 + minor * 100 + patch  # NCCL_VERSION_CODE, 2.27.7 -> 22707
    assert probe["mpi_built"] and probe["gloo_built"]
    # The dynamic linker found libnccl.so.2 in TensorFlow's wheel through Horovod's rpath, not a system copy.
    wheel_library = Path(probe["site_packages"], "nvidia/nccl/lib/libnccl.so.2").resolve()
    assert probe["nccl_libraries"] == [str(wheel_library)]


@pytest.mark.slow
@pytest.mark.parametrize("controller", ["--gloo", "--mpi"])
def test_gpu_build_runs_collectives_on_cpu_tensors(controller: str, tmp_path: Path) -> None:
    """NCCL needs a GPU; the same library's Gloo and MPI paths run here: two ranks, one allreduce."""
    worker = (
        "import sys, horovod.tensorflow as hvd, tensorflow as tf; hvd.init(); "
        "total = hvd.allreduce(tf.constant([hvd.rank() + 1.0]), op=hvd.Sum); "
        "open(f'{sys.argv[1]}/rank{hvd.rank()}', 'w').write(str(float(total[0])))"
    )
    command = [str(GPU_BIN / "horovodrun"), controller, "-np", "2", "-H", "localhost:2"]
    result = subprocess.run(
        [*command, str(GPU_BIN / "python"), "-c", worker, str(tmp_path)],
        capture_output=True,
        text=True,
        env=gpu_environment(),
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert [(tmp_path / f"rank{rank}").read_text() for rank in (0, 1)] == ["3.0", "3.0"]  # 1 + 2
