"""A real ``mlflow models serve`` on 127.0.0.1: started, waited for, posted to and always stopped.

Shared by the serving test (``tests/test_pyfunc.py``) and the serving benchmark (``benchmarks/serving.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MLFLOW = Path(sys.executable).parent / "mlflow"
# Never through a proxy: the server is on loopback.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ModelServer:
    """``mlflow models serve -m MODEL_URI --env-manager local`` on a free loopback port (context manager)."""

    def __init__(self, model_uri: str, log: Path, environment: Mapping[str, str] | None = None) -> None:
        self.model_uri = model_uri
        self.log = log
        # `mlflow models serve` execs `uvicorn` found on PATH: the virtualenv's bin must be on it.
        path = f"{MLFLOW.parent}{os.pathsep}{os.environ.get('PATH', '')}"
        self.environment = {**os.environ, "PATH": path, **(environment or {})}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> ModelServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def healthy(self) -> bool:
        try:
            with _OPENER.open(f"{self.url}/ping", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def start(self, timeout: float = 180) -> None:
        command = [
            str(MLFLOW), "models", "serve", "-m", self.model_uri, "--env-manager", "local",
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        with self.log.open("a", encoding="utf-8") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=log, env=self.environment, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mlflow models serve did not start:\n{self.log.read_text()[-4000:]}")
            time.sleep(0.5)

    def invoke(self, payload: Any, timeout: float = 300) -> Any:
        """POST ``payload`` as JSON to ``/invocations``; returns the decoded JSON answer."""
        request = urllib.request.Request(
            f"{self.url}/invocations",
            data=json.dumps(payload).encode("utf-8"),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with _OPENER.open(request, timeout=timeout) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        """SIGTERM the server's process group (gunicorn/uvicorn and its workers), SIGKILL what is left."""
        if self.process is None:
            return
        _signal_group(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        _signal_group(self.process.pid, signal.SIGKILL)  # workers that outlived their parent
        self.process.wait(10)
        self.process = None


def _signal_group(group: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signum)
