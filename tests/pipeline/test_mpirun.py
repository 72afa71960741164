"""The train stage under MPI on one host: ``mpirun -np 2`` with deploy/mpijob.yaml's launcher arguments,
and ``horovodrun --mpi -np 2`` with dvc.yaml's train command. Each run must log exactly one MLflow run and end
with identical weights on both ranks. (The same launcher across two hosts: tests/multihost/test_two_hosts.py.)
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest

from summarizer import runner
from tests.workers import mpijob
from tests.workers.launch import check, horovod_environment
from tests.workers.tiny_data import write_tokenized

pytestmark = pytest.mark.slow

EPOCHS = 2
WORKERS = 2


@dataclass(frozen=True)
class StageRun:
    """One train stage run in ``directory`` (laid out like the MPIJob's run directory)."""

    result: subprocess.CompletedProcess
    directory: Path

    @property
    def metrics(self) -> dict:
        return json.loads((self.directory / "metrics/train.json").read_text(encoding="utf-8"))

    @property
    def timings(self) -> dict:
        return json.loads((self.directory / "metrics/timings/train.json").read_text(encoding="utf-8"))

    def weights(self, rank: int) -> list[np.ndarray]:
        with np.load(self.directory / "weights" / f"weights-rank{rank}.npz") as arrays:
            return [arrays[f"arr_{index}"] for index in range(len(arrays.files))]


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tokenized(tmp_path_factory.mktemp("data"))


def run(command: list[str], directory: Path, environment: dict[str, str]) -> StageRun:
    result = subprocess.run(
        command, cwd=directory, env=environment, capture_output=True, text=True, timeout=600
    )
    return StageRun(check(result), directory)


@pytest.fixture(scope="module")
def mpirun_training(tmp_path_factory: pytest.TempPathFactory, tokenized: Path) -> StageRun:
    """The MPIJob launcher's command, with this host's hostfile and loopback instead of the pod network."""
    directory = tmp_path_factory.mktemp("mpirun")
    mpijob.lay_out_run_directory(directory, tokenized, EPOCHS)
    hostfile = mpijob.write_hostfile(directory / "hostfile", {"localhost": WORKERS})
    command = mpijob.launcher(WORKERS, hostfile, "lo", exports=[runner.DUMP_WEIGHTS_VARIABLE])
    environment = mpijob.launcher_environment(
        f"sqlite:///{directory / 'mlflow.db'}", {runner.DUMP_WEIGHTS_VARIABLE: str(directory / "weights")}
    )
    return run(command, directory, environment)


@pytest.fixture(scope="module")
def horovodrun_mpi_training(tmp_path_factory: pytest.TempPathFactory, tokenized: Path) -> StageRun:
    directory = tmp_path_factory.mktemp("horovodrun-mpi")
    params = mpijob.lay_out_run_directory(directory, tokenized, EPOCHS).to_nested_dict()
    environment = horovod_environment({runner.DUMP_WEIGHTS_VARIABLE: str(directory / "weights")})
    return run(mpijob.dvc_train_command(params, "--mpi"), directory, environment)


def assert_one_finished_run_and_identical_ranks(stage: StageRun) -> None:
    chief, other = stage.weights(0), stage.weights(1)
    assert len(chief) == len(other) > 0
    for chief_array, other_array in zip(chief, other, strict=True):
        assert np.array_equal(chief_array, other_array)
    metrics = stage.metrics
    assert (metrics["workers"], metrics["epochs"]) == (WORKERS, EPOCHS)
    saved = json.loads((stage.directory / "models/summarizer/run.json").read_text(encoding="utf-8"))
    client = mlflow.MlflowClient(saved["tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert [tracked.info.run_id for tracked in runs] == [saved["run_id"]]
    assert runs[0].info.status == "FINISHED" and runs[0].data.tags["workers"] == str(WORKERS)
    assert len(client.get_metric_history(saved["run_id"], "val_loss")) == EPOCHS


def test_mpirun_with_the_mpijob_launcher_arguments_trains_identical_ranks(mpirun_training: StageRun) -> None:
    assert_one_finished_run_and_identical_ranks(mpirun_training)
    saved = json.loads((mpirun_training.directory / "models/summarizer/run.json").read_text(encoding="utf-8"))
    # The launcher's MLFLOW_TRACKING_URI (here an absolute path) won over params.yaml's relative store.
    assert saved["tracking_uri"] == f"sqlite:///{mpirun_training.directory / 'mlflow.db'}"


def test_horovodrun_mpi_with_the_dvc_yaml_command_trains_identical_ranks(
    horovodrun_mpi_training: StageRun,
) -> None:
    assert_one_finished_run_and_identical_ranks(horovodrun_mpi_training)


def test_both_mpi_launchers_train_the_same_model(
    mpirun_training: StageRun, horovodrun_mpi_training: StageRun
) -> None:
    """Same params, data and seed: the two launchers differ only in how they start the ranks.

    Both throughputs are printed (``pytest -s``); benchmarks, not this test, compare them.
    """
    for mpirun_array, horovodrun_array in zip(
        mpirun_training.weights(0), horovodrun_mpi_training.weights(0), strict=True
    ):
        np.testing.assert_allclose(mpirun_array, horovodrun_array, rtol=1e-5, atol=1e-7)
    throughput = {
        name: stage.timings["samples_per_second"]
        for name, stage in (("mpirun", mpirun_training), ("horovodrun --mpi", horovodrun_mpi_training))
    }
    print("samples/s: " + ", ".join(f"{name} {value:.1f}" for name, value in throughput.items()))
