"""Horovod across two hosts for real: two network namespaces joined by a bridge, rank 1 started over ssh,
Gloo on ``eth0``, rank 0 logging to a PostgreSQL-backed ``mlflow server`` over HTTP.

Needs root and ``ip netns`` (CI has both); without them the module is skipped, saying why.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from summarizer import runner
from tests.multihost import hosts
from tests.workers.launch import Watched, check, horovodrun
from tests.workers.tiny_data import tiny_train_params, write_tokenized

pytestmark = pytest.mark.slow

EXPERIMENT = "two-hosts"
MPIRUN_EXPERIMENT = "two-hosts-mpirun"
EPOCHS = 2
# Put before the train command: each rank records its network namespace, then becomes the train stage.
RECORD_NAMESPACE = 'readlink /proc/self/ns/net > "$0/namespace-rank$OMPI_COMM_WORLD_RANK" && exec "$@"'
# Run by every rank: where it runs (namespace, Horovod's host and interface) and three collectives.
ALLREDUCE_WORKER = """
import json, os, sys
from pathlib import Path
import tensorflow as tf
from summarizer import distribution

run = distribution.init()
record = {
    "rank": run.rank,
    "size": run.size,
    "local_size": int(os.environ["HOROVOD_LOCAL_SIZE"]),
    "cross_size": int(os.environ["HOROVOD_CROSS_SIZE"]),
    "hostname": os.environ["HOROVOD_HOSTNAME"],
    "gloo_interface": os.environ["HOROVOD_GLOO_IFACE"],
    "network_namespace": os.readlink("/proc/self/ns/net"),
    "sum": run.sum(tf.constant([run.rank + 1.0, 10.0 ** run.rank])).numpy().tolist(),
    "average": run.average({"loss": 2.0 * run.rank, "tokens": 5.0}),
    "chief_object": run.broadcast_object({"from_rank": run.rank}),
}
Path(sys.argv[1], f"rank{run.rank}.json").write_text(json.dumps(record))
"""


@dataclass(frozen=True)
class TrainingRun:
    """One train stage run: its launcher's output, the files it wrote, host B's sshd logins before it."""

    result: subprocess.CompletedProcess
    directory: Path
    logins_before: int = 0

    @property
    def metrics(self) -> dict:
        return json.loads((self.directory / "metrics.json").read_text(encoding="utf-8"))

    @property
    def timings(self) -> dict:
        return json.loads((self.directory / "timings.json").read_text(encoding="utf-8"))

    def weights(self, rank: int) -> list[np.ndarray]:
        with np.load(self.directory / "weights" / f"weights-rank{rank}.npz") as arrays:
            return [arrays[f"arr_{index}"] for index in range(len(arrays.files))]


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tokenized(tmp_path_factory.mktemp("data"))


def train_arguments(directory: Path, data_dir: Path, **train: object) -> list[str]:
    """``-m pipeline.train`` with tiny params whose own tracking URI must be overridden by the environment."""
    params = tiny_train_params(**{"epochs": EPOCHS, "workers": 2, **train})
    params["tracking"] = {"tracking_uri": "sqlite:///params-store.db", "experiment": EXPERIMENT}
    (directory / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    options = {
        "--params": directory / "params.yaml",
        "--data-dir": data_dir,
        "--out-dir": directory / "model",
        "--metrics": directory / "metrics.json",
        "--history": directory / "history.csv",
        "--timings": directory / "timings.json",
    }
    return ["-m", "pipeline.train", *hosts.option_list(options)]


@pytest.fixture(scope="module")
def two_host_training(cluster: hosts.Cluster, tokenized: Path, tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("two-hosts")
    logins_before = len(cluster.logins(cluster.hosts[1]))
    result = cluster.horovodrun(
        train_arguments(directory, tokenized),
        cwd=directory,
        extra_environment={runner.DUMP_WEIGHTS_VARIABLE: str(directory / "weights")},
    )
    return TrainingRun(check(result), directory, logins_before)


def test_allreduce_across_two_namespaced_hosts(cluster: hosts.Cluster, tmp_path: Path) -> None:
    check(cluster.horovodrun(["-c", ALLREDUCE_WORKER, str(tmp_path)], cwd=tmp_path))
    records = [json.loads((tmp_path / f"rank{rank}.json").read_text(encoding="utf-8")) for rank in (0, 1)]
    for rank, (record, host) in enumerate(zip(records, cluster.hosts, strict=True)):
        namespace_inode = os.stat(f"/run/netns/{host.namespace}").st_ino
        assert record["network_namespace"] == f"net:[{namespace_inode}]"  # rank N ran inside host N
        assert (record["rank"], record["size"], record["local_size"], record["cross_size"]) == (rank, 2, 1, 2)
        assert (record["hostname"], record["gloo_interface"]) == (host.address, hosts.INTERFACE)
        assert record["sum"] == [3.0, 11.0]  # [1 + 2, 10**0 + 10**1]
        assert record["average"] == {"loss": 1.0, "tokens": 5.0}
        assert record["chief_object"] == {"from_rank": 0}
    assert any(cluster.hosts[0].address in login for login in cluster.logins(cluster.hosts[1]))


def test_train_stage_on_two_hosts_gives_identical_ranks(
    cluster: hosts.Cluster, two_host_training: TrainingRun
) -> None:
    run = two_host_training
    new_logins = cluster.logins(cluster.hosts[1])[run.logins_before :]
    # Rank 1 was started over ssh from host A.
    assert any(f"from {cluster.hosts[0].address} " in login for login in new_logins)
    chief, other = run.weights(0), run.weights(1)
    assert len(chief) == len(other) > 0
    for chief_array, other_array in zip(chief, other, strict=True):
        assert np.array_equal(chief_array, other_array)
    metrics = run.metrics
    assert (metrics["workers"], metrics["epochs"]) == (2, EPOCHS)
    assert run.timings["samples_per_second"] > 0
    assert not (run.directory / "params-store.db").exists()  # MLFLOW_TRACKING_URI won over params.yaml


def test_rank_zero_logs_one_finished_run_to_the_shared_server(
    cluster: hosts.Cluster, two_host_training: TrainingRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = two_host_training
    monkeypatch.setenv("NO_PROXY", cluster.network.address)
    client = mlflow.MlflowClient(cluster.tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    tracked = runs[0]
    assert tracked.info.status == "FINISHED"
    assert tracked.data.tags["workers"] == "2"
    for name in ("train_loss", "val_loss", "learning_rate"):
        history = client.get_metric_history(tracked.info.run_id, name)
        assert sorted(metric.step for metric in history) == list(range(1, EPOCHS + 1)), name
    last_val_loss = max(
        client.get_metric_history(tracked.info.run_id, "val_loss"), key=lambda metric: metric.step
    )
    assert last_val_loss.value == pytest.approx(run.metrics["final_val_loss"])
    saved = json.loads((run.directory / "model" / "run.json").read_text(encoding="utf-8"))
    assert (saved["run_id"], saved["tracking_uri"]) == (tracked.info.run_id, cluster.tracking_uri)
    artifacts = [artifact.path for artifact in client.list_artifacts(tracked.info.run_id, "model")]
    assert "model/model.keras" in artifacts
    stored = list((cluster.directory / "mlartifacts").rglob("model.keras"))
    assert len(stored) == 1  # uploaded through the server into its --artifacts-destination


def test_two_hosts_train_like_one_host(
    two_host_training: TrainingRun, tokenized: Path, tmp_path: Path
) -> None:
    """The same run with both ranks on one host (``-H localhost:2``) ends with the same weights and loss.

    Gloo averages two numbers the same way over a bridge as over loopback; measured bit-identical here.
    Both throughputs are printed (``pytest -s``).
    """
    two_hosts = two_host_training
    arguments = train_arguments(tmp_path, tokenized)
    weights = {runner.DUMP_WEIGHTS_VARIABLE: str(tmp_path / "weights")}
    one_host = TrainingRun(check(horovodrun(arguments, cwd=tmp_path, environment=weights)), tmp_path)
    for two_host_array, one_host_array in zip(two_hosts.weights(0), one_host.weights(0), strict=True):
        np.testing.assert_allclose(two_host_array, one_host_array, rtol=1e-5, atol=1e-7)
    assert one_host.metrics["final_val_loss"] == pytest.approx(two_hosts.metrics["final_val_loss"], rel=1e-5)
    assert re.search(r"\bepoch 2/2\b", one_host.result.stdout)
    throughput = {
        name: run.timings["samples_per_second"] for name, run in (("two", two_hosts), ("one", one_host))
    }
    print(f"samples/s: two hosts {throughput['two']:.1f}, one host {throughput['one']:.1f}")


def test_killing_the_rank_on_host_b_ends_the_job_and_the_rerun_resumes(
    cluster: hosts.Cluster, tokenized: Path, tmp_path: Path
) -> None:
    arguments = train_arguments(tmp_path, tokenized, epochs=4, checkpoint_every_minutes=0.00001)
    every_step = {runner.CONTROL_EVERY_STEPS_VARIABLE: "1"}  # checkpoints inside the tiny epochs
    job = Watched(cluster.horovodrun_command(arguments), tmp_path, cluster.environment(every_step))
    job.wait_for(r"checkpoint: epoch 2 step")

    killed = time.monotonic()
    job.rank_process(1, marker=str(tmp_path / "params.yaml")).kill()  # host B's rank: OOM, or B is gone
    status = job.finish(timeout=120)
    seconds_to_exit = time.monotonic() - killed

    assert status != 0 and seconds_to_exit < 60, (seconds_to_exit, job.output)
    assert "lost a rank" in job.output and "Process name:" in job.output, job.output
    (checkpoint,) = (tmp_path / ".checkpoints").glob("train-*")
    state = json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))
    client = mlflow.MlflowClient(cluster.tracking_uri)
    run = client.get_run(state["run_id"])
    assert run.info.status == "KILLED" and "lost a rank" in run.data.tags[runner.STOP_TAG]

    resumed = check(cluster.horovodrun(arguments, cwd=tmp_path, extra_environment=every_step))
    assert "resuming from" in resumed.stdout
    assert client.get_run(state["run_id"]).info.status == "FINISHED"


@pytest.fixture(scope="module")
def two_host_mpirun_training(
    cluster: hosts.Cluster, tokenized: Path, tmp_path_factory: pytest.TempPathFactory
) -> TrainingRun:
    """deploy/mpijob.yaml's launcher line over the two hosts, in a run directory laid out like the job's."""
    directory = tmp_path_factory.mktemp("two-hosts-mpirun")
    params = tiny_train_params(epochs=EPOCHS, workers=2)
    params["tracking"] = {"tracking_uri": "sqlite:///params-store.db", "experiment": MPIRUN_EXPERIMENT}
    (directory / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    (directory / "data").mkdir()
    (directory / "data/tokenized").symlink_to(tokenized, target_is_directory=True)
    logins_before = len(cluster.logins(cluster.hosts[1]))
    result = cluster.mpirun(
        directory,
        exports=[runner.DUMP_WEIGHTS_VARIABLE],
        extra_environment={runner.DUMP_WEIGHTS_VARIABLE: str(directory / "weights")},
        wrapper=["sh", "-c", RECORD_NAMESPACE, str(directory)],
    )
    return TrainingRun(check(result), directory, logins_before)


def test_mpirun_as_the_mpijob_runs_it_starts_rank_one_on_host_b(
    cluster: hosts.Cluster, two_host_mpirun_training: TrainingRun
) -> None:
    run = two_host_mpirun_training
    for rank, host in enumerate(cluster.hosts):
        namespace_inode = os.stat(f"/run/netns/{host.namespace}").st_ino
        recorded = (run.directory / f"namespace-rank{rank}").read_text(encoding="utf-8").strip()
        assert recorded == f"net:[{namespace_inode}]", f"rank {rank} did not run on {host.name}"
    new_logins = cluster.logins(cluster.hosts[1])[run.logins_before :]
    assert any(f"from {cluster.hosts[0].address} " in login for login in new_logins)  # orted over ssh
    chief, other = run.weights(0), run.weights(1)
    assert len(chief) == len(other) > 0
    for chief_array, other_array in zip(chief, other, strict=True):
        assert np.array_equal(chief_array, other_array)
    metrics = json.loads((run.directory / "metrics/train.json").read_text(encoding="utf-8"))
    assert (metrics["workers"], metrics["epochs"]) == (2, EPOCHS)
    assert not (run.directory / "params-store.db").exists()  # MLFLOW_TRACKING_URI, forwarded by -x, won


def test_mpirun_across_hosts_logs_one_run_and_trains_like_gloo(
    cluster: hosts.Cluster,
    two_host_mpirun_training: TrainingRun,
    two_host_training: TrainingRun,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One FINISHED run on the shared server; the same weights as horovodrun --gloo over the same hosts."""
    run = two_host_mpirun_training
    monkeypatch.setenv("NO_PROXY", cluster.network.address)
    client = mlflow.MlflowClient(cluster.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(MPIRUN_EXPERIMENT).experiment_id])
    saved = json.loads((run.directory / "models/summarizer/run.json").read_text(encoding="utf-8"))
    assert [tracked.info.run_id for tracked in runs] == [saved["run_id"]]
    assert runs[0].info.status == "FINISHED" and runs[0].data.tags["workers"] == "2"
    assert len(client.get_metric_history(saved["run_id"], "val_loss")) == EPOCHS
    for mpi_array, gloo_array in zip(run.weights(0), two_host_training.weights(0), strict=True):
        np.testing.assert_allclose(mpi_array, gloo_array, rtol=1e-5, atol=1e-7)
    mpi_timings = json.loads((run.directory / "metrics/timings/train.json").read_text(encoding="utf-8"))
    print(
        f"samples/s across two hosts: mpirun {mpi_timings['samples_per_second']:.1f}, "
        f"horovodrun --gloo {two_host_training.timings['samples_per_second']:.1f}"
    )
