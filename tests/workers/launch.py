"""Start a worker script under the real ``horovodrun --gloo -np N`` on this machine, and watch it run."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

from summarizer import runner
from tests.conftest import REPO_ROOT

VENV_BIN = Path(sys.executable).parent


# Checkpoint at every control point, and run the control collective after every step, so a fault can be
# placed inside an epoch of a tiny model (its epochs last well under a second).
EVERY_STEP = {runner.CONTROL_EVERY_STEPS_VARIABLE: "1"}
CHECKPOINT_LINE = r"checkpoint: epoch 2 step (\d+)/(\d+)"


def train_command(directory: Path, data_dir: Path) -> list[str]:
    """The train stage's arguments (after ``python``) for a run whose files all live in ``directory``."""
    return [
        "-m", "pipeline.train", "--params", str(directory / "params.yaml"), "--data-dir", str(data_dir),
        "--out-dir", str(directory / "models/summarizer"), "--metrics", str(directory / "metrics/train.json"),
        "--history", str(directory / "plots/train_history.csv"), "--root", str(directory),
        "--timings", str(directory / "metrics/timings/train.json"),
    ]  # fmt: skip


def horovod_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    environment = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    environment.pop("MLFLOW_TRACKING_URI", None)
    return {**environment, **(extra or {})}


def horovodrun_command(arguments: Sequence[str], workers: int = 2) -> list[str]:
    """``horovodrun --gloo -np workers -H localhost:workers python ARGUMENTS``."""
    return [
        str(VENV_BIN / "horovodrun"),
        "--gloo",
        "-np",
        str(workers),
        "-H",
        f"localhost:{workers}",
        sys.executable,
        *arguments,
    ]


def horovodrun(
    arguments: list[str],
    workers: int = 2,
    cwd: Path | None = None,
    timeout: float = 300,
    environment: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``horovodrun --gloo -np workers -H localhost:workers python ARGUMENTS`` and return the result."""
    command = horovodrun_command(arguments, workers)
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


class Watched:
    """A running command whose merged output is collected line by line, to act when a line appears."""

    def __init__(self, command: Sequence[str], cwd: Path, environment: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [str(part) for part in command],
            cwd=cwd,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 240) -> re.Match:
        """The first output line matching ``pattern``; fails if the process ends or time runs out first."""
        regex, deadline = re.compile(pattern), time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := regex.search(line):
                    return match
            if self.process.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        self.kill_all()
        raise AssertionError(f"no line matching {pattern!r} (exit {self.process.poll()}):\n{self.output}")

    def finish(self, timeout: float = 240) -> int:
        """Wait for the exit (killing everything after ``timeout``); returns the exit status."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()
            raise
        self._reader.join(10)
        return self.process.returncode

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def rank_process(self, rank: int, marker: str = "") -> psutil.Process:
        """The training process of ``rank`` (horovodrun sets HOROVOD_RANK in its environment).

        Without ``marker`` it is looked for under this command; with one, among all processes whose command
        line contains ``marker`` (a rank on another host is a child of that host's sshd, not of horovodrun).
        """
        candidates = self.descendants() if not marker else list(psutil.process_iter())
        for process in candidates:
            try:
                if (
                    process.environ().get("HOROVOD_RANK") == str(rank)
                    and "python" in process.name()
                    and marker in " ".join(process.cmdline())
                ):
                    return process
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        raise AssertionError(f"no process of rank {rank} found ({marker or f'under {self.process.pid}'})")

    def kill_all(self) -> None:
        """SIGKILL the command and every process under it at once (as a node loss would).

        Every process is frozen (SIGSTOP, the command first) before any is killed: killed one by one, a
        parent would see its children die and react before its own turn (DVC then rewrites
        ``.dvc/tmp/rwlock`` and can be killed halfway through it).
        """
        victims = []
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(self.process.pid)
            root.suspend()
            victims.append(root)
        for victim in self.descendants():
            with contextlib.suppress(psutil.NoSuchProcess):
                victim.suspend()
                victims.append(victim)
        for victim in victims:
            with contextlib.suppress(psutil.NoSuchProcess):
                victim.kill()
