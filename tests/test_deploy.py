"""Dockerfile.gpu, .dockerignore and deploy/mpijob.yaml, checked without a Docker engine or a cluster.

The image itself is built and smoke-tested on GPU hosts; here: hadolint, and the facts that must agree across
files (version pins, image name, ranks, the train command, shared paths).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from summarizer.config import params_from_dict
from tests.conftest import REPO_ROOT
from tests.helpers import shell_assignments
from tests.workers.mpijob import exported, launcher_command, manifest, mca_parameters, option, pod_spec

DOCKERFILE = REPO_ROOT / "Dockerfile.gpu"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
SETUP_SCRIPT = REPO_ROOT / "scripts" / "setup.sh"
DEPLOY_README = REPO_ROOT / "deploy" / "README.md"
HADOLINT = Path(sys.executable).parent / "hadolint"


@dataclass(frozen=True)
class Instruction:
    stage: int  # -1 before the first FROM
    keyword: str
    arguments: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comment lines dropped, as Docker reads them."""
    instructions: list[Instruction] = []
    stage, pending = -1, ""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        if pending.strip():
            keyword, _, arguments = pending.strip().partition(" ")
            stage += keyword.upper() == "FROM"
            instructions.append(Instruction(stage, keyword.upper(), " ".join(arguments.split())))
        pending = ""
    return instructions


def arg_defaults(instructions: list[Instruction], stage: int) -> dict[str, str]:
    """ARG defaults visible in ``stage``: its own ARGs plus the global ones (before the first FROM)."""
    defaults = {}
    for instruction in instructions:
        if instruction.keyword == "ARG" and instruction.stage in (-1, stage) and "=" in instruction.arguments:
            name, _, value = instruction.arguments.partition("=")
            defaults[name] = value.strip('"')
    return defaults


def expand(value: str, defaults: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda match: defaults[match.group(1) or match.group(2)], value)


def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


def final_stage(instructions: list[Instruction]) -> int:
    return max(instruction.stage for instruction in instructions)


def runs(instructions: list[Instruction], stage: int | None = None) -> list[str]:
    return [i.arguments for i in instructions if i.keyword == "RUN" and stage in (None, i.stage)]


def test_hadolint_reports_nothing_for_dockerfile_gpu() -> None:
    result = subprocess.run(
        [str(HADOLINT), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr


def test_hadolint_does_report_a_bad_dockerfile(tmp_path: Path) -> None:
    """The lint above would pass vacuously if hadolint reported nothing for anything."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get install curl\n", encoding="utf-8")
    result = subprocess.run(
        [str(HADOLINT), "--no-color", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert {"DL3006", "DL3014", "DL3015"} <= set(re.findall(r"DL\d{4}", result.stdout))


def test_dockerfile_builds_horovod_with_the_setup_script_in_gpu_mode() -> None:
    instructions = dockerfile()
    setup_runs = [command for command in runs(instructions, stage=0) if "scripts/setup.sh --" in command]
    assert len(setup_runs) == 1 and "scripts/setup.sh --gpu --venv /opt/venv" in setup_runs[0]
    assert not [command for command in runs(instructions) if re.search(r"pip\S* install\b.*horovod", command)]
    assert "/opt/venv" in [
        i.arguments.split()[-1] for i in instructions if i.keyword == "COPY" and "--from" in i.arguments
    ]


def test_dockerfile_and_the_ci_gpu_build_run_the_same_setup_steps() -> None:
    """scripts/build-gpu.sh (run here without a GPU) differs from the image's build in the nvcc alone."""
    build_script = (REPO_ROOT / "scripts" / "build-gpu.sh").read_text(encoding="utf-8")
    assert '"$REPO_DIR/scripts/setup.sh" --gpu --cuda-from-wheels --venv "$VENV_DIR"' in build_script
    setup_runs = [command for command in runs(dockerfile(), stage=0) if "scripts/setup.sh --" in command]
    assert "--cuda-from-wheels" not in setup_runs[0]  # the -devel image's CUDA 12.5 nvcc (README says why)
    assert "HOROVOD_NCCL" not in setup_runs[0]  # NCCL: TensorFlow's wheel, as in build-gpu.sh


def test_dockerfile_version_args_match_the_pins_of_setup_script_and_constraints() -> None:
    instructions = dockerfile()
    pins = shell_assignments(SETUP_SCRIPT)
    wanted = {
        "TF_VERSION": pins["TF_VERSION"],
        "HOROVOD_VERSION": pins["HOROVOD_VERSION"],
        "PYTHON_VERSION": pins["PYTHON_MINOR"],
    }
    for stage in (0, final_stage(instructions)):
        defaults = arg_defaults(instructions, stage)
        assert {name: defaults.get(name) for name in wanted} == wanted, f"stage {stage}"
    constraints = (REPO_ROOT / "constraints.txt").read_text(encoding="utf-8")
    assert f"tensorflow_cpu=={pins['TF_VERSION']}" in constraints.splitlines()
    python_requires = re.search(
        r'requires-python = "(.+)"', (REPO_ROOT / "pyproject.toml").read_text()
    ).group(1)
    assert python_requires.startswith(f">={pins['PYTHON_MINOR']},")


def test_dockerfile_cuda_base_matches_the_cuda_wheels_setup_script_pins() -> None:
    instructions = dockerfile()
    cuda_version = arg_defaults(instructions, 0)["CUDA_VERSION"]
    setup = SETUP_SCRIPT.read_text(encoding="utf-8")
    runtime_pin = re.search(r"nvidia-cuda-runtime-cu12==(\d+\.\d+)\.", setup).group(1)
    cudnn_pin = re.search(r"nvidia-cudnn-cu12==(\d+\.\d+)\.", setup).group(1)
    # TensorFlow 2.21's tested GPU build: CUDA 12.5, cuDNN 9.3.
    assert ".".join(cuda_version.split(".")[:2]) == runtime_pin == "12.5" and cudnn_pin == "9.3"
    bases = [
        expand(i.arguments.split()[0], arg_defaults(instructions, i.stage))
        for i in instructions
        if i.keyword == "FROM"
    ]
    assert bases == [
        f"nvidia/cuda:{cuda_version}-devel-ubuntu22.04",
        f"nvidia/cuda:{cuda_version}-base-ubuntu22.04",
    ]


def test_dockerfile_checks_the_horovod_build_of_the_final_image() -> None:
    instructions = dockerfile()
    final = final_stage(instructions)
    checks = [command for command in runs(instructions, stage=final) if "horovodrun --check-build" in command]
    assert len(checks) == 1
    assert all(feature in checks[0] for feature in ("TensorFlow", "MPI", "Gloo", "NCCL"))
    order = [i.arguments for i in instructions if i.stage == final and i.keyword in ("RUN", "COPY")]
    assert next(i for i, text in enumerate(order) if "--from=builder" in text) < order.index(checks[0])


def test_dockerfile_runs_as_a_non_root_user() -> None:
    instructions = dockerfile()
    final = final_stage(instructions)
    users = [i.arguments for i in instructions if i.stage == final and i.keyword == "USER"]
    user = expand(users[-1], arg_defaults(instructions, final)).split(":")[0]
    assert user not in ("root", "0") and user == arg_defaults(instructions, final)["USER_ID"] == "1000"


def test_dockerfile_default_command_runs_the_pipeline_in_mixed_precision() -> None:
    command = json.loads(next(i.arguments for i in dockerfile() if i.keyword == "CMD"))
    assert command == ["dvc", "exp", "run", "-S", "train.precision=mixed_float16"]
    key, _, value = command[-1].partition("=")
    section, name = key.split(".")
    assert getattr(getattr(params_from_dict({section: {name: value}}), section), name) == "mixed_float16"


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(excludes, regex) per line, compiled the way Docker's pattern matcher does."""
    patterns = []
    for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        excludes = not line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!")).lstrip("/")
        regex = ""
        for token in re.findall(r"\*\*/?|\*|\?|[^*?]", pattern):
            if token.startswith("**"):
                regex += "(.*/)?" if token.endswith("/") else ".*"
            else:
                regex += {"*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
        patterns.append((excludes, re.compile(f"^{regex}$")))
    return patterns


def is_ignored(path: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories decides."""
    parts = path.split("/")
    candidates = [path] + ["/".join(parts[:index]) for index in range(1, len(parts))]
    ignored = False
    for excludes, regex in patterns:
        if any(regex.match(candidate) for candidate in candidates):
            ignored = excludes
    return ignored


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        "data/tokenized/train-00000-of-00004.tfrecord",
        "data/raw/Translation-en",
        "data/external/articles.csv",
        "models/summarizer/model.keras",
        "mlflow.db",
        "mlruns/0/meta.yaml",
        ".checkpoints/ab12/ckpt.keras",
        ".dvc/cache/files/md5/00/11",
        ".dvc/config.local",
        "src/summarizer/__pycache__/io.pyc",
    ],
)
def test_dockerignore_keeps_environments_data_and_runs_out_of_the_image(path: str) -> None:
    assert is_ignored(path, dockerignore_patterns())


def test_dockerignore_keeps_every_file_git_tracks_so_dvc_sees_a_clean_tree() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    patterns = dockerignore_patterns()
    required = {
        ".git/HEAD",
        "dvc.yaml",
        "params.yaml",
        "scripts/setup.sh",
        "data/external/README.md",
        "Dockerfile.gpu",
    }
    assert [
        path for path in sorted(required | {name for name in tracked if name}) if is_ignored(path, patterns)
    ] == []


def test_mpijob_manifest_is_a_v2beta1_mpijob_with_a_launcher_and_workers() -> None:
    document = manifest()
    assert (document["apiVersion"], document["kind"]) == ("kubeflow.org/v2beta1", "MPIJob")
    assert set(document["spec"]["mpiReplicaSpecs"]) == {"Launcher", "Worker"}
    assert document["spec"]["mpiReplicaSpecs"]["Launcher"]["replicas"] == 1


def test_mpijob_image_is_the_image_the_docs_build() -> None:
    built = {
        re.search(r"docker build -f Dockerfile\.gpu -t (\S+) \.", path.read_text()).group(1)
        for path in (DOCKERFILE, DEPLOY_README)
    }
    assert built == {"summarizer:gpu"}
    images = {pod_spec(manifest(), role)["containers"][0]["image"] for role in ("Launcher", "Worker")}
    assert len(images) == 1 and images.pop().rpartition("/")[2] == "summarizer:gpu"


def test_mpijob_ranks_equal_workers_times_slots_times_one_gpu_each() -> None:
    document = manifest()
    workers = document["spec"]["mpiReplicaSpecs"]["Worker"]["replicas"]
    slots = document["spec"]["slotsPerWorker"]
    gpus = pod_spec(document, "Worker")["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    ranks = int(option(launcher_command(document), "-np"))
    assert ranks == workers * slots == 8 and gpus == slots
    script = pod_spec(document, "Launcher")["containers"][0]["args"][0]
    assert f'[ "$workers" != {ranks} ]' in script, (
        "the launcher must refuse params.yaml with another train.workers"
    )


def test_mpijob_runs_the_train_stage_command_of_dvc_yaml() -> None:
    command = launcher_command(manifest())
    stage = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]["train"]["cmd"]
    stage_tokens = shlex.split(stage)
    assert command[command.index("python") :] == stage_tokens[stage_tokens.index("pipeline.train") - 2 :]
    assert command[command.index("python") :][:3] == ["python", "-m", "pipeline.train"]
    # Horovod's fusion threshold and cycle time have one source, params.yaml (pipeline.train sets them on
    # every rank): neither launcher line may carry a second copy that could disagree with it.
    owned = {"HOROVOD_FUSION_THRESHOLD", "HOROVOD_CYCLE_TIME"}
    assert not owned & set(exported(command)), "the MPIJob must not export train.horovod's variables"
    assert "--cycle-time-ms" not in stage_tokens and "--fusion-threshold-mb" not in stage_tokens
    # The MPI Operator's launcher runs OpenMPI's mpirun over the hostfile it mounts (one line per worker).
    assert command[0] == "mpirun" and option(command, "--hostfile") == "/etc/mpi/hostfile"
    assert mca_parameters(command)["pml"] == "ob1"  # as horovodrun --mpi: no UCX/openib on pod networks


def test_mpijob_forwards_every_launcher_variable_to_the_ranks() -> None:
    """mpirun starts remote ranks over ssh with a fresh environment: only ``-x`` names reach them."""
    document = manifest()
    names = {item["name"] for item in pod_spec(document, "Launcher")["containers"][0]["env"]}
    variables = exported(launcher_command(document))
    assert names <= set(variables) and variables["PATH"] is None  # the image's venv python on every rank


def test_mpijob_keeps_data_checkpoints_and_mlflow_where_every_pod_sees_them() -> None:
    document = manifest()
    script = pod_spec(document, "Launcher")["containers"][0]["args"][0]
    run_directory = re.search(r"^cd (\S+)$", script, flags=re.MULTILINE).group(1)
    for role in ("Launcher", "Worker"):
        spec = pod_spec(document, role)
        claims = {
            volume["name"]: volume["persistentVolumeClaim"]["claimName"]
            for volume in spec["volumes"]
            if "persistentVolumeClaim" in volume
        }
        mounts = [mount for mount in spec["containers"][0]["volumeMounts"] if mount["name"] in claims]
        assert [claims[mount["name"]] for mount in mounts] == ["summarizer-shared"], role
        assert run_directory.startswith(mounts[0]["mountPath"].rstrip("/") + "/"), role
    claim = next(
        yaml.safe_load(block)
        for block in re.findall(r"```yaml\n(.*?)```", DEPLOY_README.read_text(), re.S)
        if "PersistentVolumeClaim" in block
    )
    assert claim["metadata"]["name"] == "summarizer-shared" and claim["spec"]["accessModes"] == [
        "ReadWriteMany"
    ]
    environment = {
        item["name"]: item["value"] for item in pod_spec(document, "Launcher")["containers"][0]["env"]
    }
    assert re.fullmatch(r"http://[\w.-]+:\d+", environment["MLFLOW_TRACKING_URI"])


def test_mpijob_names_one_network_interface_for_nccl_and_mpi() -> None:
    document = manifest()
    environment = {
        item["name"]: item["value"] for item in pod_spec(document, "Launcher")["containers"][0]["env"]
    }
    parameters = mca_parameters(launcher_command(document))
    interfaces = {parameters["btl_tcp_if_include"], parameters["oob_tcp_if_include"]}
    assert interfaces == {environment["NCCL_SOCKET_IFNAME"]} == {"eth0"}


def test_mpijob_ssh_setup_matches_the_image_user_and_sshd_config() -> None:
    document = manifest()
    instructions = dockerfile()
    defaults = arg_defaults(instructions, final_stage(instructions))
    image_runs = " ".join(runs(instructions, stage=final_stage(instructions)))
    assert "/home/summarizer/.sshd_config" in image_runs and '"Port ${SSH_PORT}"' in image_runs
    assert document["spec"]["sshAuthMountPath"] == "/home/summarizer/.ssh"
    worker = pod_spec(document, "Worker")
    assert worker["containers"][0]["command"] + worker["containers"][0]["args"] == [
        "/usr/sbin/sshd",
        "-De",
        "-f",
        "/home/summarizer/.sshd_config",
    ]
    assert worker["containers"][0]["readinessProbe"]["tcpSocket"]["port"] == int(defaults["SSH_PORT"])
    for role in ("Launcher", "Worker"):
        context = pod_spec(document, role)["securityContext"]
        assert context["runAsUser"] == int(defaults["USER_ID"]) and context["runAsNonRoot"] is True, role


def run_bounded(
    command: list[str], environment: dict[str, str], timeout: float
) -> subprocess.CompletedProcess:
    """Run ``command`` in its own process group and kill the whole group if it outlives ``timeout``."""
    with subprocess.Popen(
        command,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def test_setup_gpu_stops_before_installing_anything_without_nvcc(tmp_path: Path) -> None:
    environment = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PYTHON": sys.executable,
        "HOROVOD_CUDA_HOME": str(tmp_path / "no-cuda"),
    }
    result = run_bounded(
        [str(SETUP_SCRIPT), "--gpu", "--venv", str(tmp_path / "venv")], environment, timeout=60
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        "setup: error: nvcc not found" in result.stderr
        and "Checking GPU build prerequisites" in result.stdout
    )
    assert not (tmp_path / "venv").exists()


def test_setup_refuses_cuda_from_wheels_without_gpu(tmp_path: Path) -> None:
    environment = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHON": sys.executable}
    result = run_bounded(
        [str(SETUP_SCRIPT), "--cuda-from-wheels", "--venv", str(tmp_path / "venv")], environment, timeout=60
    )
    assert result.returncode == 2
    assert "--cuda-from-wheels is for the GPU build: add --gpu" in result.stderr
    assert not (tmp_path / "venv").exists()
