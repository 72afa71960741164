"""Data and models between two hosts without a shared file system: a DVC remote over ssh on host B.

Host A (network namespace A) runs the pipeline up to train in its clone, commits ``dvc.lock`` and the
remote's URL, and ``dvc push``es the outputs to a directory on host B over ssh (the ``dvc-ssh`` plugin).
Host B clones A's git repository over ssh into a directory of its own, ``dvc pull``s and runs ``dvc repro
evaluate``: ingest, tokenize and train must be skipped, and evaluate must run and end the training's MLflow
run on the shared server.

The namespaces share this machine's file system, so the hosts are kept apart by directory: each works only in
its own clone with its own DVC cache, and what passes between them goes over ssh (git, dvc-ssh: the sshd logs
show the logins) or over the MLflow server's HTTP. Needs root and ``ip netns``; skipped otherwise, saying why.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import yaml

from tests.multihost import hosts
from tests.pipeline.dvc_project import VENV_BIN, DvcProject, tiny_params

pytestmark = pytest.mark.slow

REMOTE = "host-b"
EXPERIMENT = "dvc-remote"
UPSTREAM_STAGES = ("ingest", "tokenize", "train")
GIT_IDENTITY = ["-c", "user.name=host-a", "-c", "user.email=host-a@example.invalid"]


@dataclass(frozen=True)
class RoundTrip:
    """Host A's and host B's clones, the remote's directory on B, and what the dvc commands printed."""

    clone_a: Path
    clone_b: Path
    storage: Path
    push: subprocess.CompletedProcess
    pull: subprocess.CompletedProcess
    status_after_pull: dict
    repro: subprocess.CompletedProcess
    logins_before: dict[str, int]  # by host name, before the push


def host_environment(cluster: hosts.Cluster, base: dict[str, str]) -> dict[str, str]:
    """``base`` plus the ssh wrapper (for git) on PATH and the shared MLflow server, never through a proxy."""
    values = {
        "PATH": f"{cluster.ssh.bin_dir}{os.pathsep}{base['PATH']}",
        "MLFLOW_TRACKING_URI": cluster.tracking_uri,
    }
    addresses = (cluster.network.address, *(host.address for host in cluster.hosts))
    return hosts.no_proxy_environment(*addresses, base=base | values)


def run_on(
    host: hosts.Host, command: list[str | os.PathLike[str]], cwd: Path, environment: dict[str, str]
) -> subprocess.CompletedProcess:
    """Run ``command`` inside ``host``'s network namespace; raise with its output if it fails."""
    return hosts.run(host.command(command), cwd=cwd, env=environment, timeout=900)


def dvc(*arguments: str) -> list[str]:
    return [str(VENV_BIN / "dvc"), *arguments]


def set_up_host_a(cluster: hosts.Cluster, directory: Path) -> tuple[Path, Path, dict[str, str]]:
    """Host A's clone, trained, with an ssh remote on host B committed (the key stays in config.local)."""
    params = tiny_params()
    params["tracking"]["experiment"] = EXPERIMENT
    params["train"]["epochs"] = 1  # what is tested is the data's journey, not the training
    project = DvcProject(directory / "host-a", params)
    environment = host_environment(cluster, project.env)
    host_a, host_b = cluster.hosts
    run_on(host_a, dvc("repro", "train"), project.path, environment)
    storage = directory / "host-b-storage"  # on host B: reached over ssh only
    for arguments in (
        ("remote", "add", "--default", REMOTE, f"ssh://{host_b.address}{storage}"),
        ("remote", "modify", REMOTE, "user", "root"),
        ("remote", "modify", REMOTE, "timeout", "60"),
        ("remote", "modify", "--local", REMOTE, "keyfile", str(cluster.ssh.key)),
    ):
        run_on(host_a, dvc(*arguments), project.path, environment)
    # dvc.lock, the remote's URL, and the small outputs DVC leaves to git (metrics, plots: `cache: false`).
    run_on(host_a, ["git", "add", "--all"], project.path, environment)
    commit = ["git", *GIT_IDENTITY, "commit", "-qm", "train; data and model in the ssh remote"]
    run_on(host_a, commit, project.path, environment)
    leftover = run_on(host_a, ["git", "status", "--porcelain"], project.path, environment).stdout
    assert leftover == "", f"host A's commit left changes that host B would not see:\n{leftover}"
    return project.path, storage, environment


@pytest.fixture(scope="module")
def round_trip(cluster: hosts.Cluster, tmp_path_factory: pytest.TempPathFactory) -> RoundTrip:
    directory = tmp_path_factory.mktemp("dvc-remote")
    clone_a, storage, environment = set_up_host_a(cluster, directory)
    host_a, host_b = cluster.hosts
    logins_before = {host.name: len(cluster.logins(host)) for host in cluster.hosts}
    push = run_on(host_a, dvc("push"), clone_a, environment)
    clone_b = directory / "host-b"
    clone = ["git", "clone", "-q", f"ssh://root@{host_a.address}{clone_a}", clone_b]
    run_on(host_b, clone, directory, environment)
    run_on(
        host_b,
        dvc("remote", "modify", "--local", REMOTE, "keyfile", str(cluster.ssh.key)),
        clone_b,
        environment,
    )
    pull = run_on(host_b, dvc("pull", "--with-deps", "train"), clone_b, environment)  # what evaluate needs
    status = json.loads(run_on(host_b, dvc("status", "--json"), clone_b, environment).stdout)
    repro = run_on(host_b, dvc("repro", "evaluate"), clone_b, environment)
    return RoundTrip(clone_a, clone_b, storage, push, pull, status, repro, logins_before)


def lock(clone: Path) -> dict:
    return yaml.safe_load((clone / "dvc.lock").read_text(encoding="utf-8"))["stages"]


def ingested_test_examples(clone: Path) -> int:
    """The test split's size as host A's ingest counted it (``metrics/ingest.json``, committed by A)."""
    return json.loads((clone / "metrics" / "ingest.json").read_text(encoding="utf-8"))["splits"]["test"]


def test_host_b_runs_evaluate_only_on_the_pulled_data_and_model(round_trip: RoundTrip) -> None:
    assert set(round_trip.status_after_pull) == {"evaluate"}  # upstream outputs arrived intact
    output = round_trip.repro.stdout
    for stage in UPSTREAM_STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in output
        assert f"Running stage '{stage}'" not in output
    assert "Running stage 'evaluate'" in output
    metrics = json.loads((round_trip.clone_b / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["test_examples"] == ingested_test_examples(round_trip.clone_b)
    assert 0 <= metrics["rougeL"] <= 100 and metrics["test_perplexity"] > 1
    lock_a, lock_b = lock(round_trip.clone_a), lock(round_trip.clone_b)
    for stage in UPSTREAM_STAGES:
        assert lock_b[stage] == lock_a[stage]  # same deps, params and output hashes: nothing recomputed
    assert "evaluate" in lock_b and "evaluate" not in lock_a


def test_data_and_model_travelled_over_ssh_through_host_b(
    cluster: hosts.Cluster, round_trip: RoundTrip
) -> None:
    host_a, host_b = cluster.hosts
    new_logins = {
        host.name: cluster.logins(host)[round_trip.logins_before[host.name] :] for host in cluster.hosts
    }
    assert any(f"from {host_a.address} " in login for login in new_logins[host_b.name])  # dvc push
    assert any(f"from {host_b.address} " in login for login in new_logins[host_a.name])  # git clone
    assert any(f"from {host_b.address} " in login for login in new_logins[host_b.name])  # dvc pull
    stored = {
        path.relative_to(round_trip.storage) for path in round_trip.storage.rglob("*") if path.is_file()
    }
    assert len(stored) > 10  # the content-addressed files of data/raw, ingested, tokenized and the model
    assert f"{len(stored)} files pushed" in round_trip.push.stdout
    assert f"{len(stored)} files fetched" in round_trip.pull.stdout
    cache_b = round_trip.clone_b / ".dvc" / "cache"
    assert stored <= {path.relative_to(cache_b) for path in cache_b.rglob("*") if path.is_file()}
    for name in ("models/summarizer/model.keras", "data/tokenized/spm.model", "data/ingested/test.jsonl"):
        assert (round_trip.clone_b / name).read_bytes() == (round_trip.clone_a / name).read_bytes(), name


def test_evaluate_on_host_b_finished_the_run_trained_on_host_a(
    cluster: hosts.Cluster, round_trip: RoundTrip, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_PROXY", cluster.network.address)
    run_json = json.loads((round_trip.clone_b / "models/summarizer/run.json").read_text(encoding="utf-8"))
    assert run_json["tracking_uri"] == cluster.tracking_uri
    run = mlflow.MlflowClient(cluster.tracking_uri).get_run(run_json["run_id"])
    metrics = json.loads((round_trip.clone_b / "metrics.json").read_text(encoding="utf-8"))
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_rougeL"] == pytest.approx(metrics["rougeL"])
    assert "train_loss" in run.data.metrics  # logged by host A's training
