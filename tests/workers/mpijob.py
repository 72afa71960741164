"""deploy/mpijob.yaml's launcher command and environment, adapted to the hosts of a test.

The tests run the manifest's own ``mpirun`` line: only what names the cluster changes (rank count, hostfile,
interface, the tracking server's URI, the image's paths); every other option is the manifest's.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from pathlib import Path

import yaml

from summarizer.config import Params
from tests.conftest import REPO_ROOT
from tests.workers.launch import horovod_environment
from tests.workers.tiny_data import tiny_train_params, write_params

MANIFEST = REPO_ROOT / "deploy" / "mpijob.yaml"
# OpenMPI refuses to start as root unless told it may. The MPIJob's image runs as uid 1000 and needs neither
# variable; the tests run as root (CI does), so they set what an image running as root would set.
ALLOW_ROOT = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
INTERFACE_PARAMETERS = ("btl_tcp_if_include", "oob_tcp_if_include")


def manifest() -> dict:
    with MANIFEST.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def pod_spec(document: dict, role: str) -> dict:
    return document["spec"]["mpiReplicaSpecs"][role]["template"]["spec"]


def launcher_command(document: dict) -> list[str]:
    """The ``exec mpirun ...`` line of the launcher's script, split like the shell does."""
    script = pod_spec(document, "Launcher")["containers"][0]["args"][0].replace("\\\n", " ")
    line = next(line for line in script.splitlines() if line.strip().startswith("exec mpirun"))
    return shlex.split(line)[1:]


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def mca_parameters(command: list[str]) -> dict[str, str]:
    """``--mca NAME VALUE`` pairs of an mpirun command line."""
    return {command[i + 1]: command[i + 2] for i, word in enumerate(command) if word == "--mca"}


def exported(command: list[str]) -> dict[str, str | None]:
    """``-x NAME`` (forward the launcher's value) and ``-x NAME=VALUE`` options of an mpirun command line."""
    pairs = [command[i + 1].partition("=") for i, word in enumerate(command) if word == "-x"]
    return {name: value if equals else None for name, equals, value in pairs}


def write_hostfile(path: Path, slots: dict[str, int]) -> Path:
    """A hostfile like the one the MPI Operator mounts at /etc/mpi/hostfile: ``host slots=N`` per line."""
    path.write_text("".join(f"{host} slots={count}\n" for host, count in slots.items()), encoding="utf-8")
    return path


def launcher(
    workers: int,
    hostfile: Path,
    interface: str,
    exports: Sequence[str] = (),
    mca: dict[str, str] | None = None,
) -> list[str]:
    """The manifest's ``mpirun`` for ``workers`` ranks on ``hostfile`` over ``interface``.

    ``exports`` are forwarded with ``-x`` as well (test-only debug variables); ``mca`` adds or replaces
    ``--mca`` parameters (e.g. the ssh agent).
    """
    command = launcher_command(manifest())
    command[command.index("-np") + 1] = str(workers)
    command[command.index("--hostfile") + 1] = str(hostfile)
    for index, word in enumerate(command):
        if word == "--mca" and command[index + 1] in INTERFACE_PARAMETERS:
            command[index + 2] = interface
    python = command.index("python")
    extra = [part for name in exports for part in ("-x", name)]
    extra += [part for name, value in (mca or {}).items() for part in ("--mca", name, value)]
    return command[:python] + extra + command[python:]


def launcher_environment(tracking_uri: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The launcher pod's variables (MLflow's URI replaced), this venv first on PATH, root allowed."""
    declared = {
        item["name"]: item["value"] for item in pod_spec(manifest(), "Launcher")["containers"][0]["env"]
    }
    environment = horovod_environment()  # PATH with this venv's python, PYTHONPATH with the repository
    declared["PYTHONPATH"] = environment["PYTHONPATH"]  # the manifest's /workspace is the image's checkout
    declared["MLFLOW_TRACKING_URI"] = tracking_uri
    return {**environment, **declared, **ALLOW_ROOT, **(extra or {})}


def lay_out_run_directory(directory: Path, tokenized: Path, epochs: int, workers: int = 2) -> Params:
    """``params.yaml`` (tiny, MLflow in ``mlflow.db`` there) and ``data/tokenized``, the manifest's paths."""
    values = tiny_train_params(epochs=epochs, workers=workers)
    params = write_params(directory / "params.yaml", values, "sqlite:///mlflow.db")
    (directory / "data").mkdir()
    (directory / "data/tokenized").symlink_to(tokenized, target_is_directory=True)
    return params


# dvc.yaml launches horovodrun through summarizer.quiet (its own TensorFlow import, quiet; see that module).
QUIET_LAUNCHER = ["python", "-m", "summarizer.quiet"]


def dvc_train_command(params: dict, controller: str = "--gloo") -> list[str]:
    """dvc.yaml's train command, interpolated with ``params`` as DVC does; ``--mpi`` replaces ``--gloo``."""
    template = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]["train"]["cmd"]

    def value(match: re.Match[str]) -> str:
        node = params
        for key in match.group(1).split("."):
            node = node[key]
        return str(node)

    command = shlex.split(re.sub(r"\$\{([\w.]+)\}", value, template))
    launcher = QUIET_LAUNCHER if command[: len(QUIET_LAUNCHER)] == QUIET_LAUNCHER else []
    command = command[len(launcher) :]
    if command[:2] != ["horovodrun", "--gloo"]:
        raise ValueError(f"dvc.yaml's train command no longer starts with horovodrun --gloo: {command}")
    return [*launcher, "horovodrun", controller, *command[2:]]
