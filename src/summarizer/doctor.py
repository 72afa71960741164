"""``summarizer doctor``: can this machine (or cluster node) run the pipeline, and what to fix if not.

One aligned ``name: value`` line each for: the versions of Python, TensorFlow, Keras, Horovod, MPI, NCCL,
CUDA, DVC and MLflow; Horovod's controllers and tensor operations; the GPUs TensorFlow sees; whether the
MLflow tracking store answers (one attempt with a short timeout); the DVC repository and its status; and two
2-process allreduce self-tests, with Gloo (``horovodrun --gloo``, as the train stage runs) and, when Horovod
has it, with MPI (``mpirun``, as the MPIJob launcher runs). It ends with one line per problem and its fix
and exits 1 when there is one.

It creates nothing: a sqlite tracking store that does not exist yet is reported, not created. Every
command it runs has a timeout, after which its whole process group is stopped. The self-test ranks run
``python -m summarizer.selftest`` (:mod:`summarizer.selftest`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import logging
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from summarizer.selftest import (
    QUIET_ENVIRONMENT,
    SELF_TEST_PROCESSES,
    check_reports,
    worker_command,
    worker_reports,
)

if TYPE_CHECKING:
    from summarizer.distribution import HorovodBuild

NAME_WIDTH = 22
STOP_GRACE_SECONDS = 15.0
PROBE_TIMEOUT_SECONDS = 30.0
DETAIL_LINES = 8
# TensorFlow's C++ start-up logs and Python warnings would bury the report (and the workers' output).
SETUP_FIX = "run scripts/setup.sh in the repository (it builds Horovod 0.28.1 with Gloo and MPI into .venv)"
MPI_INSTALL_FIX = "apt-get install openmpi-bin libopenmpi-dev (or load your cluster's MPI module)"
DESCRIPTION = (
    "Check that this machine can run the pipeline: versions (Python, TensorFlow, Keras, Horovod, MPI, NCCL, "
    "CUDA, DVC, MLflow), Horovod's controllers and tensor operations, visible GPUs, the MLflow store, DVC "
    "status, and 2-process allreduce self-tests with Gloo and MPI. Ends with one line per problem and its "
    "fix; exit status 1 when there is a problem."
)


@dataclass(frozen=True)
class Finding:
    """One report line; a ``problem`` (what is wrong, then how to fix it) makes the doctor fail."""

    name: str
    value: str
    problem: str | None = None
    details: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outcome:
    """A finished command: ``returncode`` None means it was stopped at its timeout."""

    command: list[str]
    returncode: int | None
    output: str
    seconds: float


# Running commands --------------------------------------------------------------------------------------


def quiet_environment() -> dict[str, str]:
    return {**os.environ, **QUIET_ENVIRONMENT}


def _stop_session(process: subprocess.Popen) -> str:
    """SIGTERM the command's session (horovodrun and mpirun then stop their ranks), SIGKILL if it lingers."""
    output = ""
    for signal_number, grace in ((signal.SIGTERM, STOP_GRACE_SECONDS), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal_number)
        try:
            output, _ = process.communicate(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue
    return output or ""


def run_bounded(command: Sequence[str], timeout: float, cwd: Path | None = None) -> Outcome:
    """Run ``command`` (stdout and stderr together) in a session of its own, stopped after ``timeout`` s."""
    start = time.monotonic()
    try:
        process = subprocess.Popen(
            list(command),
            cwd=cwd,
            env=quiet_environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
    except OSError as error:
        return Outcome(list(command), 127, str(error), 0.0)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        return Outcome(list(command), None, _stop_session(process), time.monotonic() - start)
    return Outcome(list(command), process.returncode, output, time.monotonic() - start)


def _failure(outcome: Outcome, timeout: float) -> str:
    if outcome.returncode is None:
        return f"timed out after {timeout:.0f} s"
    return f"exit status {outcome.returncode}"


def _tail(text: str, lines: int = DETAIL_LINES) -> tuple[str, ...]:
    return tuple(line.rstrip() for line in text.strip().splitlines()[-lines:])


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def find_program(name: str) -> str | None:
    """``name`` on PATH, else beside this Python (an environment used without being activated)."""
    beside_python = Path(sys.executable).parent / name
    return shutil.which(name) or (str(beside_python) if os.access(beside_python, os.X_OK) else None)


# Versions ----------------------------------------------------------------------------------------------


def import_tensorflow() -> tuple[ModuleType | None, str | None]:
    """TensorFlow imported quietly, or the reason it cannot be."""
    os.environ.update(QUIET_ENVIRONMENT)
    try:
        import tensorflow as tf
    except ImportError as error:
        return None, str(error)
    tf.get_logger().setLevel(logging.ERROR)
    return tf, None


def tensorflow_findings(tf: ModuleType | None, error: str | None) -> list[Finding]:
    if tf is None:
        problem = f"TensorFlow does not import ({error}): {SETUP_FIX}"
        return [Finding("TensorFlow", "not importable", problem)]
    build = dict(tf.sysconfig.get_build_info())
    kind = "CUDA build" if build.get("is_cuda_build") else "CPU build"
    if build.get("is_cuda_build"):
        cuda = (
            f"{build.get('cuda_version', '?')} (TensorFlow's build; cuDNN {build.get('cudnn_version', '?')})"
        )
    else:
        cuda = "none (TensorFlow's CPU build)"
    return [
        Finding("TensorFlow", f"{tf.__version__} ({kind})"),
        Finding("Keras", package_version("keras") or "not installed"),
        Finding("CUDA", cuda),
    ]


def mpi_finding(horovod: HorovodBuild | None) -> Finding:
    """``mpirun --version``; missing mpirun is a problem only when Horovod was built with MPI."""
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        needed = horovod is not None and "MPI" in horovod.controllers
        problem = (
            f"Horovod is built with MPI but mpirun is not on PATH: {MPI_INSTALL_FIX}" if needed else None
        )
        return Finding("MPI", "mpirun not found", problem)
    outcome = run_bounded([mpirun, "--version"], PROBE_TIMEOUT_SECONDS)
    lines = outcome.output.strip().splitlines()
    if outcome.returncode != 0 or not lines:
        reason = _failure(outcome, PROBE_TIMEOUT_SECONDS)
        problem = f"`{mpirun} --version` failed ({reason}): {MPI_INSTALL_FIX}"
        return Finding("MPI", f"{mpirun}: {reason}", problem, _tail(outcome.output))
    version = re.sub(r"^mpirun \((.+)\)\s+", r"\1 ", lines[0].strip())  # "mpirun (Open MPI) 4.1.4"
    return Finding("MPI", f"{version} ({mpirun})")


def horovod_findings() -> tuple[list[Finding], HorovodBuild | None]:
    """Horovod's version, NCCL, controllers and tensor operations, and the build itself (None: no Horovod)."""
    from summarizer import distribution

    try:
        build = distribution.horovod_build()
    except ImportError as error:
        problem = (
            f"Horovod does not import in the Python environment of {sys.executable} ({error}): {SETUP_FIX}"
        )
        unknown = "unknown (no Horovod)"
        names = ("NCCL", "Horovod controllers", "Horovod tensor ops")
        return [
            Finding("Horovod", "not importable", problem),
            *(Finding(name, unknown) for name in names),
        ], None
    controllers = Finding("Horovod controllers", ", ".join(build.controllers) or "none")
    if "Gloo" not in build.controllers:
        problem = (
            f"Horovod is built without Gloo, which the train stage's `horovodrun --gloo` needs: {SETUP_FIX}"
        )
        controllers = Finding(controllers.name, controllers.value, problem)
    return [
        Finding("Horovod", build.version),
        Finding("NCCL", build.nccl_version or "not built into Horovod (its allreduce runs on the CPU)"),
        controllers,
        Finding("Horovod tensor ops", ", ".join(build.tensor_operations) or "none"),
    ], build


def package_finding(name: str, package: str) -> Finding:
    version = package_version(package)
    problem = None if version else f"{name} is not installed in this environment: {SETUP_FIX}"
    return Finding(name, version or "not installed", problem)


# GPUs --------------------------------------------------------------------------------------------------


def driver_gpus() -> list[str]:
    """The GPUs ``nvidia-smi -L`` lists (none when it is absent or fails)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    outcome = run_bounded([smi, "-L"], PROBE_TIMEOUT_SECONDS)
    return [line for line in outcome.output.splitlines() if line.startswith("GPU ")]


def gpu_finding(tf: ModuleType | None) -> Finding:
    if tf is None:
        return Finding("Visible GPUs", "unknown (TensorFlow does not import)")
    visible = [device.name for device in tf.config.list_physical_devices("GPU")]
    listed = driver_gpus()
    value = f"{len(visible)}: {', '.join(visible)}" if visible else "none"
    if listed and not visible:
        problem = (
            f"nvidia-smi lists {len(listed)} GPU(s) but TensorFlow sees none: install the GPU build "
            "(scripts/setup.sh --gpu) and check CUDA_VISIBLE_DEVICES"
        )
        return Finding("Visible GPUs", f"none (nvidia-smi lists {len(listed)})", problem)
    if not visible and tf.sysconfig.get_build_info().get("is_cuda_build"):
        problem = (
            "TensorFlow is a CUDA build but sees no GPU: check the driver (`nvidia-smi`) and "
            "CUDA_VISIBLE_DEVICES, or use the CPU set-up (scripts/setup.sh)"
        )
        return Finding("Visible GPUs", value, problem)
    return Finding("Visible GPUs", value)


# MLflow ------------------------------------------------------------------------------------------------


def tracking_uri(params_path: Path, root: Path) -> tuple[str | None, Finding | None]:
    """The URI the stages use (MLFLOW_TRACKING_URI, else the params file), or a finding saying why not."""
    from summarizer.config import ConfigError, TrackingConfig, load_params
    from summarizer.tracking import TrackingError, resolve_tracking_uri

    try:
        config = load_params(params_path).tracking if params_path.is_file() else TrackingConfig()
        return resolve_tracking_uri(config, root), None
    except (ConfigError, TrackingError) as error:
        return None, Finding("MLflow store", "not configured", f"{error}")


def tracking_finding(params_path: Path, root: Path, timeout: float) -> Finding:
    from summarizer.tracking import TrackingError, check_tracking_store, sqlite_path

    uri, invalid = tracking_uri(params_path, root)
    if invalid is not None:
        return invalid
    database = sqlite_path(uri)
    if database is not None and not database.exists():
        if database.parent.is_dir() and os.access(database.parent, os.W_OK):
            return Finding("MLflow store", f"{uri}: not created yet (the first training creates it)")
        problem = f"cannot create the MLflow store {uri}: {database.parent} is missing or not writable"
        return Finding("MLflow store", f"{uri}: directory not writable", problem)
    start = time.monotonic()
    try:
        check_tracking_store(uri, timeout_seconds=timeout)
    except TrackingError as error:
        return Finding("MLflow store", f"{uri}: unreachable ({time.monotonic() - start:.1f} s)", str(error))
    return Finding("MLflow store", f"{uri}: reachable ({time.monotonic() - start:.1f} s)")


# DVC ---------------------------------------------------------------------------------------------------


def dvc_root(start: Path) -> Path | None:
    """The nearest directory at or above ``start`` holding a ``.dvc`` directory."""
    for directory in (start, *start.parents):
        if (directory / ".dvc").is_dir():
            return directory
    return None


def dvc_command(root: Path, *arguments: str) -> Outcome:
    return run_bounded([sys.executable, "-m", "dvc", *arguments], PROBE_TIMEOUT_SECONDS * 4, cwd=root)


def _stage_summary(status: dict[str, Any]) -> str:
    if not status:
        return "up to date"
    names = [name.rsplit(":", 1)[-1] for name in status]  # "dvc.yaml:train" in a nested dvc.yaml
    return f"{len(names)} not up to date ({', '.join(names)}): `dvc pull` fetches, `dvc repro` rebuilds"


def _status_json(output: str) -> dict[str, Any] | None:
    """The JSON object ``dvc status --json`` printed (its last line starting with ``{``), or None."""
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                status = json.loads(line)
                return status if isinstance(status, dict) else None
    return None


def stage_lock_finding(root: Path) -> Finding:
    """Whether DVC's stage lock file (``.dvc/tmp/rwlock``) can be read.

    DVC rewrites it in place when a stage starts and ends; a dvc process killed in between (a node loss, kill
    -9) leaves it empty or cut, and every later ``dvc repro`` fails on it before running anything.
    """
    path = root / ".dvc" / "tmp" / "rwlock"
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return Finding("DVC stage locks", "none held")
    try:
        json.loads(text)
    except json.JSONDecodeError:
        state = "empty" if not text.strip() else f"cut off ({len(text)} characters, not JSON)"
        problem = (
            f"{path} is {state}: a dvc command was killed while writing it, and every `dvc repro` fails with "
            f'"Unable to read RWLock-file". When no dvc command runs in {root}, delete it (`rm {path}`); '
            "DVC writes a new one (a train stage it was running resumes from its checkpoint)"
        )
        return Finding("DVC stage locks", f"{path}: {state}", problem)
    return Finding("DVC stage locks", "readable")


def dvc_findings(root: Path | None) -> list[Finding]:
    """DVC's version, the repository, its stages' status and its remotes."""
    version = package_finding("DVC", "dvc")
    if root is None:
        return [
            version,
            Finding("DVC repository", f"none at or above {Path.cwd()} (run the doctor in the project clone)"),
        ]
    if version.problem:
        return [version, Finding("DVC repository", str(root))]
    locks = stage_lock_finding(root)
    if locks.problem:  # `dvc status` fails on it too: one problem, one fix
        return [version, Finding("DVC repository", str(root)), locks]
    outcome = dvc_command(root, "status", "--json")
    status = _status_json(outcome.output) if outcome.returncode == 0 else None
    if status is None:
        reason = _failure(outcome, PROBE_TIMEOUT_SECONDS * 4)
        problem = f"`dvc status` failed in {root} ({reason}): run it there to see why"
        return [version, locks, Finding("DVC status", f"failed ({reason})", problem, _tail(outcome.output))]
    remotes = dvc_command(root, "remote", "list")
    listed = [" ".join(line.split()) for line in remotes.output.splitlines() if line.strip()]
    return [
        version,
        Finding("DVC repository", str(root)),
        Finding("DVC status", _stage_summary(status)),
        locks,
        Finding("DVC remotes", "; ".join(listed) if remotes.returncode == 0 and listed else "none"),
    ]


# Allreduce self-tests ----------------------------------------------------------------------------------


def self_test(name: str, controller: str, command: list[str], timeout: float, note: str) -> Finding:
    outcome = run_bounded(command, timeout)
    wrong = (
        _failure(outcome, timeout)
        if outcome.returncode != 0
        else check_reports(worker_reports(outcome.output), controller)
    )
    if wrong is None:
        value = f"ok: 2 ranks summed 1 + 2 = 3 in {outcome.seconds:.1f} s ({note})"
        return Finding(name, value)
    problem = (
        f"the {controller} allreduce self-test failed ({wrong}); "
        f"run it to see its whole output: {shlex.join(command)}"
    )
    return Finding(name, f"failed: {wrong}", problem, _tail(outcome.output))


def gloo_self_test(build: HorovodBuild | None, timeout: float) -> Finding:
    name = "Allreduce, Gloo"
    if build is None or "Gloo" not in build.controllers:
        return Finding(name, "skipped (no Horovod with Gloo)")
    horovodrun = find_program("horovodrun")
    if horovodrun is None:
        problem = f"horovodrun is not on PATH: activate the environment (. .venv/bin/activate) or {SETUP_FIX}"
        return Finding(name, "horovodrun not found", problem)
    hosts = f"localhost:{SELF_TEST_PROCESSES}"
    command = [horovodrun, "--gloo", "-np", str(SELF_TEST_PROCESSES), "-H", hosts, *worker_command()]
    return self_test(name, "Gloo", command, timeout, f"horovodrun --gloo -np 2 -H {hosts}")


def mpi_self_test(build: HorovodBuild | None, timeout: float) -> Finding:
    name = "Allreduce, MPI"
    if build is None or "MPI" not in build.controllers:
        return Finding(name, "skipped (no Horovod with MPI)")
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        return Finding(name, "skipped (no mpirun)")
    options = ["-np", str(SELF_TEST_PROCESSES)]
    note = "mpirun -np 2"
    if "Open MPI" in run_bounded([mpirun, "--version"], PROBE_TIMEOUT_SECONDS).output:
        options += ["--bind-to", "none", "--oversubscribe"]
        if os.geteuid() == 0:  # Open MPI refuses root unless told; MPIJob images set the same
            options.append("--allow-run-as-root")
            note += " --allow-run-as-root: running as root"
    return self_test(name, "MPI", [mpirun, *options, *worker_command()], timeout, note)


# Report ------------------------------------------------------------------------------------------------


def format_finding(finding: Finding) -> str:
    lines = [f"{finding.name + ':':<{NAME_WIDTH}} {finding.value}"]
    lines += [f"{'':<{NAME_WIDTH}}   | {detail}" for detail in finding.details]
    return "\n".join(lines)


def format_problems(findings: Sequence[Finding]) -> str:
    problems = [finding.problem for finding in findings if finding.problem]
    if not problems:
        return "No problems found."
    heading = "1 problem:" if len(problems) == 1 else f"{len(problems)} problems:"
    return "\n".join([heading, *(f"- {problem}" for problem in problems)])


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """No library log records or Python warnings while the doctor runs: the report is for a person."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            logging.disable(previous)


def checks(arguments: argparse.Namespace) -> Iterator[list[Finding]]:
    """The report's groups of lines, in order, each computed when asked for (so it prints as it goes)."""
    root = dvc_root(Path.cwd())
    tf, tf_error = import_tensorflow()
    python = Finding("Python", f"{platform.python_version()} ({sys.executable})")
    yield [python, *tensorflow_findings(tf, tf_error), gpu_finding(tf)]
    horovod, build = horovod_findings()
    yield [horovod[0], mpi_finding(build), *horovod[1:]]  # Horovod, MPI, NCCL, controllers, operations
    yield dvc_findings(root)
    params_path = (root or Path.cwd()) / arguments.params  # an absolute --params stays as it is
    store = tracking_finding(params_path, root or Path.cwd(), arguments.store_timeout)
    yield [package_finding("MLflow", "mlflow"), store]
    if not arguments.no_self_tests:
        yield [gloo_self_test(build, arguments.self_test_timeout)]
        yield [mpi_self_test(build, arguments.self_test_timeout)]


def run(arguments: argparse.Namespace) -> int:
    """Print the report to stdout; 1 when it found a problem, else 0."""
    print(f"summarizer doctor on {platform.node()} ({platform.platform(terse=True)})\n", flush=True)
    findings: list[Finding] = []
    with quiet_libraries():
        for group in checks(arguments):
            # A blank line between sections; the two self-tests ("Allreduce, ...") are one section.
            new_section = bool(findings) and findings[-1].name.split(",")[0] != group[0].name.split(",")[0]
            findings += group
            separator = "\n" if new_section else ""
            print(separator + "\n".join(format_finding(finding) for finding in group), flush=True)
    print("\n" + format_problems(findings), flush=True)
    return 1 if any(finding.problem for finding in findings) else 0


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--params",
        default="params.yaml",
        help="params file whose `tracking` section names the MLflow store (relative to the DVC repository "
        "root; MLFLOW_TRACKING_URI overrides it, as in the stages)",
    )
    parser.add_argument(
        "--store-timeout", type=float, default=10.0, help="seconds to wait for the MLflow store to answer"
    )
    parser.add_argument(
        "--self-test-timeout", type=float, default=180.0, help="seconds allowed for each allreduce self-test"
    )
    parser.add_argument(
        "--no-self-tests", action="store_true", help="skip the 2-process allreduce self-tests (Gloo, MPI)"
    )
    parser.set_defaults(handler=run)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m summarizer.doctor``."""
    parser = argparse.ArgumentParser(prog="summarizer doctor", description=DESCRIPTION)
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
