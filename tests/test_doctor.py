"""`summarizer doctor` on this machine's real set-up and on broken ones: a Python environment without
Horovod, an MLflow server that is not there, and one that accepts connections but never answers."""

from __future__ import annotations

import os
import platform
import re
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from summarizer import distribution
from summarizer.doctor import package_version
from summarizer.selftest import EXPECTED_SUM, check_reports
from tests.pipeline.dvc_project import DvcProject, tiny_params

VENV_BIN = Path(sys.executable).parent
DOCTOR_TIMEOUT_SECONDS = 900


def report_lines(stdout: str) -> dict[str, str]:
    """The report's ``name: value`` lines (names padded, values after the first ': ')."""
    lines = {}
    for line in stdout.splitlines():
        name, separator, value = line.partition(": ")
        if separator and not line.startswith((" ", "-")):
            lines[name.strip()] = value.strip()
    return lines


def problem_lines(stdout: str) -> list[str]:
    return [line[2:] for line in stdout.splitlines() if line.startswith("- ")]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def project(tmp_path: Path) -> DvcProject:
    """A tiny-params copy of the repository whose sqlite MLflow store exists."""
    copy = DvcProject(tmp_path / "project", tiny_params())
    MlflowClient(f"sqlite:///{copy.path / 'mlflow.db'}").search_experiments()  # creates the store
    return copy


def run_doctor(
    project: DvcProject, *options: str, python: Path | None = None, environment: dict | None = None
) -> subprocess.CompletedProcess:
    """``summarizer doctor OPTIONS`` (or ``PYTHON -m summarizer.doctor``) run in the project copy."""
    command = [str(python), "-m", "summarizer.doctor"] if python else [str(VENV_BIN / "summarizer"), "doctor"]
    return subprocess.run(
        [*command, *options],
        cwd=project.path,
        env={**project.env, **(environment or {})},
        capture_output=True,
        text=True,
        timeout=DOCTOR_TIMEOUT_SECONDS,
        check=False,
    )


def test_summarizer_help_lists_doctor_and_a_command_is_required() -> None:
    listed = subprocess.run(
        [str(VENV_BIN / "summarizer"), "--help"], capture_output=True, text=True, check=False
    )
    assert listed.returncode == 0 and "doctor" in listed.stdout
    explained = subprocess.run(
        [str(VENV_BIN / "summarizer"), "doctor", "--help"], capture_output=True, text=True, check=False
    )
    for option in ("--params", "--store-timeout", "--self-test-timeout", "--no-self-tests", "MPI"):
        assert option in explained.stdout
    missing = subprocess.run([str(VENV_BIN / "summarizer")], capture_output=True, text=True, check=False)
    assert missing.returncode == 2 and "COMMAND" in missing.stderr


def test_horovod_build_reads_what_was_compiled_in() -> None:
    build = distribution.horovod_build()
    assert build.version == "0.28.1"
    assert (build.controllers, build.tensor_operations) == (("MPI", "Gloo"), ("MPI", "Gloo"))
    assert (build.nccl_version, build.cuda) == (None, False)  # the CPU set-up


def test_nccl_version_codes_before_and_since_nccl_2_9() -> None:
    assert distribution._nccl_version(22707) == "2.27.7"
    assert distribution._nccl_version(2708) == "2.7.8"
    assert distribution._nccl_version(0) is None


def test_check_reports_names_the_wrong_rank() -> None:
    good = [{"rank": rank, "size": 2, "controller": "Gloo", "sum": EXPECTED_SUM} for rank in (0, 1)]
    assert check_reports(good, "Gloo") is None
    assert check_reports(good, "MPI") == "rank 0 ran as one of 2 on Gloo controller"
    assert check_reports([good[0], {**good[1], "sum": 2.0}], "Gloo") == "rank 1 summed 2.0, expected 3.0"
    assert check_reports(good[:1], "Gloo") == "expected a report from ranks 0 and 1, got ranks [0]"


@pytest.mark.slow
def test_doctor_on_the_healthy_set_up_reports_versions_and_both_self_tests(project: DvcProject) -> None:
    completed = run_doctor(project)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert completed.stderr == ""  # no TensorFlow, MLflow or Horovod log noise
    lines = report_lines(completed.stdout)
    assert lines["Python"] == f"{platform.python_version()} ({sys.executable})"
    assert lines["TensorFlow"] == f"{package_version('tensorflow-cpu')} (CPU build)"
    assert lines["Keras"] == package_version("keras")
    assert (lines["Horovod"], lines["DVC"], lines["MLflow"]) == (
        "0.28.1",
        package_version("dvc"),
        package_version("mlflow"),
    )
    assert lines["MPI"].startswith("Open MPI 4.")
    assert lines["NCCL"].startswith("not built into Horovod")
    assert lines["CUDA"] == "none (TensorFlow's CPU build)"
    assert (lines["Horovod controllers"], lines["Horovod tensor ops"]) == ("MPI, Gloo", "MPI, Gloo")
    assert lines["Visible GPUs"] == "none"
    assert lines["MLflow store"].startswith(f"sqlite:///{project.path / 'mlflow.db'}: reachable")
    assert lines["DVC repository"] == str(project.path)
    assert lines["DVC status"].startswith("4 not up to date (ingest, tokenize, train, evaluate)")
    assert lines["DVC stage locks"] == "none held"
    assert lines["Allreduce, Gloo"].startswith("ok: 2 ranks summed 1 + 2 = 3 in ")
    assert lines["Allreduce, MPI"].startswith("ok: 2 ranks summed 1 + 2 = 3 in ")
    if os.geteuid() == 0:
        assert "--allow-run-as-root: running as root" in lines["Allreduce, MPI"]
    assert completed.stdout.rstrip().endswith("No problems found.")
    print(completed.stdout)


def linked_environment_without_horovod(directory: Path) -> Path:
    """A new virtualenv whose site-packages links every package of this one except Horovod; its python.

    A real second environment (``import horovod`` fails in it for the reason it fails on a node where
    Horovod was never installed) made in a second, instead of the minutes a fresh install of TensorFlow,
    MLflow and DVC would take.
    """
    base_python = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    subprocess.run([str(base_python), "-m", "venv", "--without-pip", str(directory)], check=True)
    python = directory / "bin" / "python"
    target = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.lower().startswith("horovod") and not (target / entry.name).exists():
            (target / entry.name).symlink_to(entry)
    return python


def path_without(directory: Path) -> str:
    return os.pathsep.join(part for part in os.environ["PATH"].split(os.pathsep) if Path(part) != directory)


@pytest.mark.slow
def test_doctor_without_horovod_names_the_environment_and_the_fix(
    project: DvcProject, tmp_path: Path
) -> None:
    python = linked_environment_without_horovod(tmp_path / "no-horovod")
    environment = {"PATH": f"{python.parent}{os.pathsep}{path_without(VENV_BIN)}"}
    probe = subprocess.run([str(python), "-c", "import horovod"], capture_output=True, text=True, check=False)
    assert "No module named 'horovod'" in probe.stderr  # the environment really lacks Horovod
    completed = run_doctor(project, python=python, environment=environment)
    assert completed.returncode == 1
    lines = report_lines(completed.stdout)
    assert lines["Horovod"] == "not importable"
    assert lines["TensorFlow"].startswith(package_version("tensorflow-cpu"))  # the rest is still checked
    assert lines["Allreduce, Gloo"] == "skipped (no Horovod with Gloo)"
    assert lines["Allreduce, MPI"] == "skipped (no Horovod with MPI)"
    problems = problem_lines(completed.stdout)
    assert len(problems) == 1, completed.stdout
    assert f"Horovod does not import in the Python environment of {python}" in problems[0]
    assert "No module named 'horovod'" in problems[0] and "run scripts/setup.sh" in problems[0]


@pytest.mark.slow
def test_doctor_with_mlflow_unreachable_names_the_uri_and_the_fix(project: DvcProject) -> None:
    uri = f"http://127.0.0.1:{closed_port()}"
    completed = run_doctor(project, "--no-self-tests", environment={"MLFLOW_TRACKING_URI": uri})
    assert completed.returncode == 1
    assert re.fullmatch(
        rf"{re.escape(uri)}: unreachable \([0-9.]+ s\)", report_lines(completed.stdout)["MLflow store"]
    )
    problems = problem_lines(completed.stdout)
    assert len(problems) == 1, completed.stdout
    assert f"cannot reach the MLflow tracking store at {uri}" in problems[0]
    assert "mlflow server" in problems[0] and "MLFLOW_TRACKING_URI" in problems[0]


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A loopback port that accepts TCP connections (the kernel's backlog) but never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


@pytest.mark.slow
def test_doctor_gives_up_on_a_silent_mlflow_server_after_its_timeout(
    project: DvcProject, silent_server: str
) -> None:
    start = time.monotonic()
    completed = run_doctor(
        project, "--no-self-tests", "--store-timeout", "3", environment={"MLFLOW_TRACKING_URI": silent_server}
    )
    elapsed = time.monotonic() - start
    assert completed.returncode == 1
    store = report_lines(completed.stdout)["MLflow store"]
    waited = re.fullmatch(rf"{re.escape(silent_server)}: unreachable \(([0-9.]+) s\)", store)
    assert waited and 3 <= float(waited.group(1)) < 6, store  # one attempt; MLflow's defaults wait minutes
    problems = problem_lines(completed.stdout)
    assert f"cannot reach the MLflow tracking store at {silent_server}" in problems[0]
    assert "timed out" in problems[0]
    assert elapsed < 120, f"the doctor took {elapsed:.0f} s against a silent server"


@pytest.mark.slow
def test_doctor_names_the_stage_lock_a_killed_dvc_left_empty_and_removing_it_lets_dvc_repro_run(
    project: DvcProject,
) -> None:
    # What `dvc repro` leaves when it is killed while rewriting its lock file (it opens it with "w").
    lock = project.path / ".dvc" / "tmp" / "rwlock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text("")
    failed = project.dvc("repro", "ingest", check=False)
    assert failed.returncode != 0 and "Unable to read RWLock-file" in failed.stderr + failed.stdout
    completed = run_doctor(project, "--no-self-tests")
    assert completed.returncode == 1
    assert report_lines(completed.stdout)["DVC stage locks"] == f"{lock}: empty"
    (problem,) = problem_lines(completed.stdout)
    assert str(lock) in problem and f"rm {lock}" in problem and "Unable to read RWLock-file" in problem
    lock.unlink()  # the fix the doctor gives
    project.dvc("repro", "ingest")
    assert report_lines(run_doctor(project, "--no-self-tests").stdout)["DVC stage locks"] == "readable"


def self_test_ranks_in(directory: Path) -> list[int]:
    """Self-test ranks (``python -m summarizer.selftest``) whose working directory is ``directory``."""
    pids = []
    for process in Path("/proc").iterdir():
        try:
            command = (process / "cmdline").read_bytes().split(b"\0")
            if b"summarizer.selftest" in command and (process / "cwd").resolve() == directory.resolve():
                pids.append(int(process.name))
        except (OSError, ValueError):
            continue  # not a process, or it ended meanwhile
    return pids


@pytest.mark.slow
def test_self_tests_past_their_timeout_fail_and_leave_no_rank_behind(project: DvcProject) -> None:
    completed = run_doctor(project, "--self-test-timeout", "2")
    assert completed.returncode == 1
    lines = report_lines(completed.stdout)
    for controller in ("Gloo", "MPI"):
        assert lines[f"Allreduce, {controller}"] == "failed: timed out after 2 s"
    problems = problem_lines(completed.stdout)
    assert len(problems) == 2, completed.stdout
    assert "the Gloo allreduce self-test failed (timed out after 2 s)" in problems[0]
    assert "horovodrun --gloo -np 2 -H localhost:2" in problems[0] and "summarizer.selftest" in problems[0]
    assert "the MPI allreduce self-test failed (timed out after 2 s)" in problems[1]
    assert self_test_ranks_in(project.path) == []  # the doctor stopped the launchers and their ranks
