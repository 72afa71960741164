"""summarizer.tracking against a real MLflow sqlite store (one per module: creating one runs migrations)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from summarizer import tracking
from summarizer.config import Params, TrackingConfig
from summarizer.io import read_json
from summarizer.tracking import (
    ERROR_TAG,
    RunTerminated,
    RunTracker,
    TrackingError,
    _batches,
    check_tracking_store,
    default_tags,
    find_run,
    list_runs,
    param_value,
    resolve_tracking_uri,
    run_name,
    run_status,
    system_metrics,
    tracked_run,
)
from tests.helpers import LoopbackMlflowServer

REPO_ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "tests"


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mlflow_store")


@pytest.fixture(scope="module")
def store_uri(store_dir: Path) -> str:
    uri = f"sqlite:///{store_dir / 'mlflow.db'}"
    check_tracking_store(uri)
    return uri


@pytest.fixture
def tracker(store_uri: str) -> RunTracker:
    return RunTracker(store_uri)


@pytest.fixture
def no_uri_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- tracking URI ---------------------------------------------------------------------------------


def test_relative_sqlite_uri_resolves_against_root_not_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_uri_environment: None
) -> None:
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "repo"
    uri = resolve_tracking_uri(TrackingConfig(tracking_uri="sqlite:///stores/mlflow.db"), root)
    assert uri == f"sqlite:///{root.resolve()}/stores/mlflow.db"


def test_absolute_sqlite_uri_and_query_are_kept(tmp_path: Path, no_uri_environment: None) -> None:
    uri = resolve_tracking_uri(
        TrackingConfig(tracking_uri="sqlite:////var/lib/mlflow.db?timeout=30"), tmp_path
    )
    assert uri == "sqlite:////var/lib/mlflow.db?timeout=30"


def test_environment_overrides_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert resolve_tracking_uri(TrackingConfig(), tmp_path) == "http://tracking.example:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///other.db")
    assert resolve_tracking_uri(TrackingConfig(), tmp_path) == f"sqlite:///{tmp_path.resolve()}/other.db"


@pytest.mark.parametrize("uri", ["file:///tmp/mlruns", "mlruns", "./mlruns", "/srv/mlruns"])
def test_file_store_is_rejected(uri: str, tmp_path: Path, no_uri_environment: None) -> None:
    with pytest.raises(
        TrackingError, match=r"tracking\.tracking_uri: .*deprecated in MLflow 3.*sqlite:///mlflow\.db"
    ):
        resolve_tracking_uri(TrackingConfig(tracking_uri=uri), tmp_path)


def test_file_store_from_environment_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:///tmp/mlruns")
    with pytest.raises(TrackingError, match="MLFLOW_TRACKING_URI: 'file:///tmp/mlruns'"):
        resolve_tracking_uri(TrackingConfig(), tmp_path)


@pytest.mark.parametrize("uri", ["sqlite://", "sqlite:///:memory:", "sqlite://host/mlflow.db"])
def test_non_file_sqlite_is_rejected(uri: str, tmp_path: Path, no_uri_environment: None) -> None:
    with pytest.raises(TrackingError, match="not a sqlite database file"):
        resolve_tracking_uri(TrackingConfig(tracking_uri=uri), tmp_path)


# --- store checks ---------------------------------------------------------------------------------


def test_unreachable_http_store_fails_fast() -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(TrackingError) as raised:
        check_tracking_store(uri)
    assert time.monotonic() - started < 30
    message = str(raised.value)
    assert message.startswith(f"cannot reach the MLflow tracking store at {uri}: ")
    assert "Connection refused" in message and "mlflow server" in message and "MLFLOW_TRACKING_URI" in message


def test_silent_http_store_times_out_after_the_given_seconds() -> None:
    with socket.socket() as silent:  # accepts connections (kernel backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(TrackingError, match="timed out"):
            check_tracking_store(uri, timeout_seconds=2)
        elapsed = time.monotonic() - started
    assert 1.5 < elapsed < 15


def test_sqlite_store_in_missing_directory_fails(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/missing/mlflow.db"
    with pytest.raises(TrackingError, match=f"at {uri}: directory {tmp_path}/missing does not exist"):
        check_tracking_store(uri)
    assert not (tmp_path / "missing").exists()


def test_sqlite_file_that_is_not_a_database_fails_fast(tmp_path: Path) -> None:
    (tmp_path / "mlflow.db").write_text("not a database\n" * 200)
    started = time.monotonic()
    with pytest.raises(TrackingError, match="file is not a database"):
        check_tracking_store(f"sqlite:///{tmp_path}/mlflow.db")
    assert time.monotonic() - started < 10


def test_reachable_store_passes(store_uri: str) -> None:
    check_tracking_store(store_uri)


# --- params, metrics, artifacts -------------------------------------------------------------------


def test_param_values_as_strings() -> None:
    assert [param_value(v) for v in (None, True, False, 3, 0.5, "gru", (6, 8), {"b": 1, "a": None})] == [
        "", "true", "false", "3", "0.5", "gru", "[6, 8]", '{"a": null, "b": 1}',
    ]  # fmt: skip


def test_batches_respect_the_limit() -> None:
    assert [len(batch) for batch in _batches(list(range(250)), 100)] == [100, 100, 50]
    assert list(_batches([], 100)) == []


def test_flattened_params_are_logged_in_batches(tracker: RunTracker, store_uri: str) -> None:
    tracker.start(EXPERIMENT, "params", tags={})
    flat = Params().to_flat_dict()
    extra = {f"extra.key{index:03d}": index for index in range(150)}  # more than one batch of 100
    tracker.log_params(
        {**flat, **extra, "none.value": None, "long.value": "x" * (MAX_PARAM_VAL_LENGTH + 1000)}
    )
    params = find_run(store_uri, tracker.run_id).params
    assert len(params) == len(flat) + len(extra) + 2
    assert params["train.horovod.fp16_allreduce"] == "false"
    assert params["train.learning_rate"] == "0.001"
    assert params["evaluate.lead_words"] == "[6, 8, 10]"
    assert params["tracking.experiment"] == "summarizer"
    assert params["extra.key149"] == "149"
    assert params["none.value"] == ""
    long_value = params["long.value"]
    assert len(long_value) == MAX_PARAM_VAL_LENGTH
    assert long_value.endswith(f"[truncated from {MAX_PARAM_VAL_LENGTH + 1000} characters]")


def test_metrics_history_per_step(tracker: RunTracker, store_uri: str) -> None:
    tracker.start(EXPERIMENT, "metrics")
    for step in range(5):
        tracker.log_metrics({"train_loss": 5.0 - step, "val_loss": 6.0 - step / 2}, step=step)
    tracker.log_metrics({"rouge_l": 0.25})
    client = MlflowClient(tracking_uri=store_uri)
    history = sorted(client.get_metric_history(tracker.run_id, "val_loss"), key=lambda metric: metric.step)
    assert [(metric.step, metric.value) for metric in history] == [
        (0, 6.0),
        (1, 5.5),
        (2, 5.0),
        (3, 4.5),
        (4, 4.0),
    ]
    assert [metric.step for metric in client.get_metric_history(tracker.run_id, "rouge_l")] == [0]
    assert find_run(store_uri, tracker.run_id).metrics == {
        "train_loss": 1.0,
        "val_loss": 4.0,
        "rouge_l": 0.25,
    }


def test_artifacts_land_beside_the_database(
    tracker: RunTracker, store_uri: str, store_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "model" / "assets").mkdir()
    (tmp_path / "model" / "assets" / "spm.vocab").write_text("a\t0\n")
    (tmp_path / "history.csv").write_text("epoch,train_loss\n0,1.5\n")
    tracker.start(EXPERIMENT, "artifacts")
    tracker.log_artifact(tmp_path / "history.csv")
    tracker.log_artifact(tmp_path / "history.csv", artifact_path="plots")
    tracker.log_artifacts(tmp_path / "model", artifact_path="model")
    tracker.log_text("a summary\n", "predictions/examples.txt")
    tracker.log_dict({"rouge_l": 0.25, "lead": [6, 8]}, "reports/scores.json")
    client = MlflowClient(tracking_uri=store_uri)

    def listing(path: str | None = None) -> list[str]:
        return sorted(info.path for info in client.list_artifacts(tracker.run_id, path))

    assert listing() == ["history.csv", "model", "plots", "predictions", "reports"]
    assert listing("model") == ["model/assets", "model/config.json"]
    assert listing("model/assets") == ["model/assets/spm.vocab"]
    assert listing("plots") == ["plots/history.csv"]
    downloaded = client.download_artifacts(tracker.run_id, "reports/scores.json", str(tmp_path / "download"))
    assert read_json(downloaded) == {"rouge_l": 0.25, "lead": [6, 8]}
    artifact_uri = find_run(store_uri, tracker.run_id).artifact_uri
    assert artifact_uri.startswith((store_dir / "mlartifacts").as_uri() + "/")


def test_missing_artifact_names_the_path(tracker: RunTracker, tmp_path: Path) -> None:
    tracker.start(EXPERIMENT, "missing-artifact")
    with pytest.raises(FileNotFoundError, match="absent.csv"):
        tracker.log_artifact(tmp_path / "absent.csv")


def test_tags_are_set(tracker: RunTracker, store_uri: str) -> None:
    tracker.start(EXPERIMENT, "tags", tags={"cell": "gru"})
    tracker.set_tags({"workers": 2, "bidirectional": True})
    tags = find_run(store_uri, tracker.run_id).tags
    assert (tags["cell"], tags["workers"], tags["bidirectional"]) == ("gru", "2", "true")
    assert tags["mlflow.runName"] == "tags"


# --- run lifecycle --------------------------------------------------------------------------------


def test_resumed_run_keeps_its_id_and_metrics_from_both_sessions(store_uri: str) -> None:
    first = RunTracker(store_uri)
    run_id = first.start(EXPERIMENT, "resumable", tags={"session": "1"})
    first.log_metrics({"train_loss": 3.0}, step=0)
    first.end("KILLED")
    assert find_run(store_uri, run_id).status == "KILLED"

    second = RunTracker(store_uri)
    assert second.start(EXPERIMENT, "ignored on resume", tags={"session": "2"}, run_id=run_id) == run_id
    record = find_run(store_uri, run_id)
    assert (record.status, record.run_name, record.tags["session"]) == ("RUNNING", "resumable", "2")
    second.log_metrics({"train_loss": 2.0}, step=1)
    second.end("FINISHED")

    history = MlflowClient(tracking_uri=store_uri).get_metric_history(run_id, "train_loss")
    assert sorted((metric.step, metric.value) for metric in history) == [(0, 3.0), (1, 2.0)]
    assert find_run(store_uri, run_id).status == "FINISHED"


def test_resuming_an_unknown_run_fails(tracker: RunTracker) -> None:
    with pytest.raises(TrackingError, match="cannot resume MLflow run 0123456789abcdef"):
        tracker.start(EXPERIMENT, "unknown", run_id="0123456789abcdef")


def test_resuming_a_run_of_another_experiment_fails(store_uri: str) -> None:
    run_id = RunTracker(store_uri).start("other-experiment", "elsewhere")
    with pytest.raises(TrackingError, match="belongs to experiment id"):
        RunTracker(store_uri).start(EXPERIMENT, "here", run_id=run_id)


def test_run_id_before_start_and_bad_status(tracker: RunTracker) -> None:
    with pytest.raises(TrackingError, match="no MLflow run started"):
        tracker.log_metrics({"loss": 1.0})
    tracker.start(EXPERIMENT, "bad-status")
    with pytest.raises(ValueError, match="expected one of FINISHED, FAILED, KILLED, got 'DONE'"):
        tracker.end("DONE")


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (None, "FINISHED"),
        (RuntimeError("x"), "FAILED"),
        (KeyboardInterrupt(), "KILLED"),
        (RunTerminated(143), "KILLED"),
        (SystemExit(0), "FINISHED"),
        (SystemExit(2), "FAILED"),
    ],
)
def test_run_status(error: BaseException | None, status: str) -> None:
    assert run_status(error) == status


def test_successful_block_finishes_and_restores_the_sigterm_handler(
    tracker: RunTracker, store_uri: str
) -> None:
    before = signal.getsignal(signal.SIGTERM)
    with tracked_run(tracker, EXPERIMENT, "success") as active:
        assert signal.getsignal(signal.SIGTERM) is not before
        active.log_metrics({"loss": 1.0}, step=0)
    assert signal.getsignal(signal.SIGTERM) is before
    assert find_run(store_uri, tracker.run_id).status == "FINISHED"


def test_raising_block_fails_the_run(tracker: RunTracker, store_uri: str) -> None:
    with pytest.raises(RuntimeError, match="boom"), tracked_run(tracker, EXPERIMENT, "failing"):
        raise RuntimeError("boom")
    record = find_run(store_uri, tracker.run_id)
    assert (record.status, record.tags[ERROR_TAG]) == ("FAILED", "RuntimeError: boom")


def test_keyboard_interrupt_kills_the_run(tracker: RunTracker, store_uri: str) -> None:
    with pytest.raises(KeyboardInterrupt), tracked_run(tracker, EXPERIMENT, "interrupted"):
        raise KeyboardInterrupt
    assert find_run(store_uri, tracker.run_id).status == "KILLED"


CHILD = textwrap.dedent(
    """
    import sys, time
    from summarizer.io import atomic_write_text
    from summarizer.tracking import RunTracker, tracked_run

    with tracked_run(RunTracker(sys.argv[1]), "tests", "sigterm") as tracker:
        atomic_write_text(sys.argv[2], tracker.run_id)
        time.sleep(120)
    """
)


def test_sigterm_kills_the_run_of_a_subprocess(store_uri: str, tmp_path: Path) -> None:
    ready = tmp_path / "run_id.txt"
    child = subprocess.Popen([sys.executable, "-c", CHILD, store_uri, str(ready)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while not ready.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ready.exists(), (
            f"child did not start a run: {child.stderr.read().decode() if child.poll() else 'timeout'}"
        )
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        child.kill()
        child.stderr.close()
    assert find_run(store_uri, ready.read_text()).status == "KILLED"


# --- names, tags, queries -------------------------------------------------------------------------


def test_run_name() -> None:
    assert run_name("gru", "float32", 2) == "gru-float32-2w"
    assert run_name("lstm", "mixed_float16", 4, extra="lucky-dace") == "lstm-mixed_float16-4w-lucky-dace"


def test_default_tags_in_a_git_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    git = ["git", "-C", str(tmp_path), "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "initial"], check=True)
    commit = subprocess.run(
        [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    monkeypatch.setenv("DVC_EXP_NAME", "lucky-dace")
    monkeypatch.setenv("DVC_STAGE", "train")
    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    tags = default_tags(tmp_path)
    assert tags["mlflow.source.git.commit"] == commit
    assert (tags["dvc.exp_name"], tags["dvc.stage"]) == ("lucky-dace", "train")
    assert "dvc.exp_baseline_rev" not in tags
    assert tags["mlflow.source.type"] == "LOCAL"


def test_default_tags_outside_git_have_no_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    tags = default_tags(tmp_path)
    assert "mlflow.source.git.commit" not in tags and "dvc.exp_name" not in tags


def test_list_runs_oldest_first(store_uri: str) -> None:
    names = ["first", "second", "third"]
    for name in names:
        RunTracker(store_uri).start("listing", name)
        time.sleep(0.01)  # distinct start times (milliseconds)
    assert [record.run_name for record in list_runs(store_uri, "listing")] == names


def test_unknown_experiment_lists_the_existing_ones(store_uri: str) -> None:
    with pytest.raises(TrackingError, match=r"'absent' not found in .*experiments: .*tests"):
        list_runs(store_uri, "absent")


def test_find_run_of_unknown_id_fails(store_uri: str) -> None:
    with pytest.raises(TrackingError, match="MLflow run 0123456789abcdef not found"):
        find_run(store_uri, "0123456789abcdef")


# --- a real tracking server -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def server_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    directory = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    command = [
        Path(sys.executable).with_name("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1", "--backend-store-uri", f"sqlite:///{directory / 'mlflow.db'}",
        "--artifacts-destination", str(directory / "mlartifacts"),
    ]  # fmt: skip
    log = (directory / "server.log").open("wb")
    environment = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner process
    server = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while server.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        if server.poll() is not None or time.monotonic() >= deadline:
            pytest.fail(f"mlflow server did not start: {(directory / 'server.log').read_text()[-2000:]}")
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server's own session: uvicorn and its job runner
        server.wait(timeout=30)
        log.close()


@pytest.mark.slow
def test_http_server_store(server_uri: str, tmp_path: Path) -> None:
    check_tracking_store(server_uri)
    (tmp_path / "history.csv").write_text("epoch,train_loss\n0,1.5\n")
    with tracked_run(RunTracker(server_uri), EXPERIMENT, "over-http", tags={"cell": "gru"}) as tracker:
        tracker.log_params({"train.units": 32, "train.bidirectional": True})
        tracker.log_metrics({"train_loss": 1.5}, step=0)
        tracker.log_metrics({"train_loss": 1.25}, step=1)
        tracker.log_artifact(tmp_path / "history.csv", artifact_path="plots")
    record = find_run(server_uri, tracker.run_id)
    assert (record.status, record.params, record.metrics) == (
        "FINISHED", {"train.units": "32", "train.bidirectional": "true"}, {"train_loss": 1.25},
    )  # fmt: skip
    client = MlflowClient(tracking_uri=server_uri)
    assert [info.path for info in client.list_artifacts(tracker.run_id, "plots")] == ["plots/history.csv"]
    assert [metric.step for metric in client.get_metric_history(tracker.run_id, "train_loss")] == [0, 1]


# --- system metrics ---------------------------------------------------------------------------------


def monitor_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "SystemMetricsMonitor"]


def test_system_metrics_land_on_the_run_while_the_block_runs(
    store_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    tracker = RunTracker(store_uri)
    run_id = tracker.start(EXPERIMENT, "system-metrics")
    with system_metrics(run_id, store_uri):
        assert len(monitor_threads()) == 1
        time.sleep(1.5)
    assert not monitor_threads()  # stopped with the block
    client = MlflowClient(store_uri)
    metrics = client.get_run(run_id).data.metrics
    assert 0 <= metrics["system/cpu_utilization_percentage"] <= 100
    assert metrics["system/system_memory_usage_megabytes"] > 0
    steps = [
        metric.step for metric in client.get_metric_history(run_id, "system/system_memory_usage_megabytes")
    ]
    assert len(steps) >= 2 and steps == sorted(steps)
    samples = len(steps)
    time.sleep(0.5)
    assert len(client.get_metric_history(run_id, "system/system_memory_usage_megabytes")) == samples
    with system_metrics(run_id, store_uri, resume=True):  # a resumed run: steps go on, none overwritten
        time.sleep(0.7)
    resumed = [
        metric.step for metric in client.get_metric_history(run_id, "system/system_memory_usage_megabytes")
    ]
    assert min(resumed[samples:]) > max(steps)
    tracker.end()


@pytest.mark.slow
def test_system_metrics_stop_within_their_bound_when_the_server_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    server = LoopbackMlflowServer(tmp_path / "server")
    server.start()
    try:
        tracker = RunTracker(server.uri)
        run_id = tracker.start(EXPERIMENT, "system-metrics-outage")
        with system_metrics(run_id, server.uri):
            time.sleep(1.0)
            server.stop()  # SIGKILL: requests now fail (connection refused, MLflow retries them)
            time.sleep(0.5)
            stopping = time.monotonic()
        assert time.monotonic() - stopping < tracking.SYSTEM_METRICS_STOP_SECONDS + 1
    finally:
        server.stop()
