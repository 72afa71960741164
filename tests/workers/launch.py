"""Start a worker script under the real ``horovodrun --gloo -np N`` on this machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT

VENV_BIN = Path(sys.executable).parent


def horovod_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    environment = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    environment.pop("MLFLOW_TRACKING_URI", None)
    return {**environment, **(extra or {})}


def horovodrun(
    arguments: list[str],
    workers: int = 2,
    cwd: Path | None = None,
    timeout: float = 300,
    environment: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``horovodrun --gloo -np workers -H localhost:workers python ARGUMENTS`` and return the result."""
    command = [
        str(VENV_BIN / "horovodrun"),
        "--gloo",
        "-np",
        str(workers),
        "-H",
        f"localhost:{workers}",
        sys.executable,
        *arguments,
    ]
    return subprocess.run(
        command,
        cwd=cwd or REPO_ROOT,
        env=horovod_environment(environment),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def check(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(result.args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result
