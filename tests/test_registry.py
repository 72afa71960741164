"""The Model Registry and blessing: real MLflow stores (sqlite and a loopback server), a real tiny model.

Every test reads the aliases back from the registry, not only the returned decision.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import mlflow
import pytest

from summarizer import metrics, registry
from summarizer.config import (
    ConfigError,
    EvaluateConfig,
    Params,
    RegistryConfig,
    TrackingConfig,
    params_from_dict,
)
from summarizer.evaluation import (
    champion_rescorer,
    read_test_examples,
    register_evaluated_model,
    run_evaluation,
)
from summarizer.inference import SummarizerPipeline
from summarizer.pyfunc import log_pyfunc_model
from summarizer.spool import SpooledTracker
from summarizer.tracking import RunTracker
from tests.helpers import (
    TOKENIZE,
    TRAIN,
    LoopbackMlflowServer,
    TinyModel,
    build_model_directory,
    training_run,
    write_ingested_split,
)

EVALUATE = EvaluateConfig(
    search="greedy",
    max_length=8,
    min_length=1,
    no_repeat_ngram_size=0,
    batch_size=4,
    lead_words=(3, 5),
    num_logged_examples=1,
)
NAME = RegistryConfig().model_name
DECODING = registry.decoding_key(dataclasses.asdict(EVALUATE))
SPLIT_A, SPLIT_B = "a" * 64, "b" * 64


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return build_model_directory(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def own_summaries(tiny: TinyModel) -> list[tuple[str, str]]:
    """(text, the tiny model's own summary) pairs: a test split this model summarizes perfectly."""
    texts = [text for text, _ in tiny.test_pairs()]
    return list(zip(texts, SummarizerPipeline.load(tiny.model_dir, EVALUATE).summarize(texts), strict=True))


@pytest.fixture(autouse=True)
def no_uri_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def aliases(uri: str) -> dict[str, int]:
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    return {alias: int(version) for alias, version in client.get_registered_model(NAME).aliases.items()}


def version_tags(uri: str, version: int) -> dict[str, str]:
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version(NAME, str(version)).tags


def logged_run(uri: str, tiny: TinyModel) -> str:
    """A finished training run with the tiny model logged into it as the pyfunc model (as evaluate does)."""
    run_id = training_run(uri)
    tracker = RunTracker(uri)
    tracker.attach(run_id)
    log_pyfunc_model(tracker, tiny.model_dir, EVALUATE)
    return run_id


def evaluation(rouge_l: float, split: str = SPLIT_A, lead: float = 20.0) -> registry.Evaluation:
    return registry.Evaluation(rouge_l, rouge_l / 2, rouge_l, 10.0, lead, 5, split, DECODING, "c0ffee")


def never_rescore(model_dir: Path) -> float:
    raise AssertionError(f"the champion was re-scored ({model_dir}) although it was measured on this split")


def params_for(uri: str) -> Params:
    return Params(
        tokenize=TOKENIZE, train=TRAIN, evaluate=EVALUATE, tracking=TrackingConfig(tracking_uri=uri)
    )


def evaluate_run(root: Path, tiny: TinyModel, uri: str, test_pairs: list[tuple[str, str]]) -> dict:
    """The evaluate stage on a new training run of the tiny model, over a test split of ``test_pairs``."""
    run_id = training_run(uri)
    model_dir = root / "model"
    shutil.copytree(tiny.model_dir, model_dir)
    (model_dir / "run.json").write_text(json.dumps({"run_id": run_id, "experiment": "summarizer"}))
    test = write_ingested_split(root / "test.jsonl", test_pairs)
    out = root / "out"
    values = run_evaluation(
        params_for(uri),
        model_dir,
        test,
        tiny.data_dir,
        out / "metrics.json",
        out / "predictions.jsonl",
        out / "rouge_by_length.csv",
        root=root,
        timings_path=out / "timings.json",
    )
    written = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert written[registry.REGISTRY_KEY] == values[registry.REGISTRY_KEY]
    return {**values, "run_id": run_id, "split_sha256": hashlib.sha256(test.read_bytes()).hexdigest()}


# Config and the decision's shape -------------------------------------------------------------------------


def test_the_registry_section_defaults_to_the_summarizer_model() -> None:
    assert Params().registry == RegistryConfig(enabled=True, model_name="summarizer")
    assert (
        params_from_dict({"registry": {"model_name": "debian-synopses"}}).registry.model_name
        == "debian-synopses"
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"registry": {"model_name": ""}}, "registry.model_name: expected 1 to 100 letters"),
        ({"registry": {"model_name": "a/b"}}, "registry.model_name: expected 1 to 100 letters"),
        ({"registry": {"model_name": "sum@x"}}, "got 'sum@x'"),
        ({"registry": {"enabled": "yes"}}, "registry.enabled: expected true or false, got 'yes'"),
        ({"registry": {"name": "x"}}, "registry.name: unknown key; allowed keys are enabled, model_name"),
    ],
)
def test_a_bad_registry_value_fails_naming_its_key(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        params_from_dict(values)


def test_only_settings_that_change_the_summaries_count_as_decoding() -> None:
    changed = dataclasses.replace(EVALUATE, lead_words=(4,), num_logged_examples=5)
    assert registry.decoding_key(dataclasses.asdict(changed)) == DECODING
    assert registry.decoding_key(dataclasses.asdict(dataclasses.replace(EVALUATE, max_length=9))) != DECODING


def test_the_decision_keeps_its_metrics_shape_and_reads_as_one_line() -> None:
    decision = registry.Decision("summarizer", 3, "champion", "beats the lead")
    assert decision.to_json() == {
        "model": "summarizer",
        "version": 3,
        "alias": "champion",
        "reason": "beats the lead",
    }
    assert registry.decision_line(decision.to_json()) == (
        "registry: summarizer version 3 is champion (models:/summarizer/3): beats the lead"
    )
    assert decision.run_tags()["summarizer.registry.alias"] == "champion"
    missing = registry.not_registered(RegistryConfig(), "store down")
    assert missing.to_json() == {
        "model": "summarizer",
        "version": None,
        "alias": None,
        "reason": "store down",
    }
    assert "\n" not in missing.line() and "not registered: store down" in missing.line()


# Decisions on a real sqlite store ------------------------------------------------------------------------


def test_the_evaluate_stage_registers_a_first_run_that_beats_the_lead_as_champion(
    tiny: TinyModel, own_summaries: list[tuple[str, str]], tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-C", str(tmp_path / "first")]
    subprocess.run(["git", "init", "-q", str(tmp_path / "first")], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "c"], check=True)
    commit = subprocess.run(
        [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    values = evaluate_run(tmp_path / "first", tiny, uri, own_summaries)
    assert values["rougeL"] > values["lead"]["rougeL"]  # the split is the model's own summaries
    decision = values[registry.REGISTRY_KEY]
    assert (decision["model"], decision["version"], decision["alias"]) == ("summarizer", 1, "champion")
    assert "no champion yet" in decision["reason"]
    assert aliases(uri) == {"champion": 1}
    tags = version_tags(uri, 1)
    assert (
        tags["test_rougeL"] == f"{values['rougeL']:.2f}" and tags["test_rouge1"] == f"{values['rouge1']:.2f}"
    )
    assert tags["test_lead_rougeL"] == f"{values['lead']['rougeL']:.2f}"
    assert tags["test_perplexity"] == f"{values['test_perplexity']:.4f}"
    assert tags["test_split_sha256"] == values["split_sha256"] and tags["git_commit"] == commit
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert client.get_model_version(NAME, "1").run_id == values["run_id"]
    run_tags = client.get_run(values["run_id"]).data.tags
    assert (
        run_tags["summarizer.registry.alias"] == "champion" and run_tags["summarizer.registry.version"] == "1"
    )

    # The same model evaluated again on its original split loses to the lead: a challenger, no move.
    second = evaluate_run(tmp_path / "second", tiny, uri, tiny.test_pairs())
    assert second["rougeL"] <= second["lead"]["rougeL"]
    assert second[registry.REGISTRY_KEY]["alias"] == "challenger"
    assert "does not beat the lead" in second[registry.REGISTRY_KEY]["reason"]
    assert aliases(uri) == {"champion": 1, "challenger": 2}


def test_a_worse_run_becomes_challenger_and_a_better_one_takes_the_alias(
    tiny: TinyModel, tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = registry.register(uri, RegistryConfig(), logged_run(uri, tiny), evaluation(40.0), never_rescore)
    assert (first.version, first.alias) == (1, "champion")

    worse = registry.register(uri, RegistryConfig(), logged_run(uri, tiny), evaluation(35.0), never_rescore)
    assert (worse.version, worse.alias) == (2, "challenger")
    assert "does not beat champion version 1 40.00 (on the same test split)" in worse.reason
    assert aliases(uri) == {"champion": 1, "challenger": 2}

    tie = registry.register(uri, RegistryConfig(), logged_run(uri, tiny), evaluation(40.0), never_rescore)
    assert tie.alias == "challenger" and aliases(uri) == {"champion": 1, "challenger": 3}

    better = registry.register(uri, RegistryConfig(), logged_run(uri, tiny), evaluation(41.5), never_rescore)
    assert (better.version, better.alias) == (
        4,
        "champion",
    ) and "beats champion version 1 40.00" in better.reason
    assert aliases(uri) == {"champion": 4, "challenger": 3}
    assert version_tags(uri, 4)["registry_reason"] == better.reason


def test_a_run_below_the_lead_never_becomes_champion_even_without_one(
    tiny: TinyModel, tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    decision = registry.register(
        uri, RegistryConfig(), logged_run(uri, tiny), evaluation(19.0), never_rescore
    )
    assert decision.alias == "challenger" and "does not beat the lead" in decision.reason
    assert aliases(uri) == {"challenger": 1}


def test_a_champion_measured_on_another_split_is_rescored_on_this_one(
    tiny: TinyModel, own_summaries: list[tuple[str, str]], tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # The champion claims 10 on split A; this split holds its own summaries, so here it really scores ~100.
    registry.register(
        uri, RegistryConfig(), logged_run(uri, tiny), evaluation(10.0, SPLIT_A, lead=0.0), never_rescore
    )
    summaries = [summary for _, summary in own_summaries]
    on_this_split = round(100 * metrics.rouge(summaries, summaries)["rougeL"], 2)
    assert on_this_split > 60
    examples = read_test_examples(write_ingested_split(tmp_path / "test.jsonl", own_summaries))

    new = evaluation(50.0, SPLIT_B, lead=0.0)  # compared blindly with the 10 of split A, it would win
    decision = registry.register(
        uri, RegistryConfig(), logged_run(uri, tiny), new, champion_rescorer(examples, EVALUATE)
    )
    assert decision.alias == "challenger", decision.reason
    assert (
        f"does not beat champion version 1 {on_this_split:.2f} (re-scored on this test split"
        in decision.reason
    )
    assert aliases(uri) == {"champion": 1, "challenger": 2}

    better = evaluation(on_this_split + 0.5, SPLIT_B, lead=0.0)
    decision = registry.register(
        uri, RegistryConfig(), logged_run(uri, tiny), better, champion_rescorer(examples, EVALUATE)
    )
    assert decision.alias == "champion" and aliases(uri) == {"champion": 3, "challenger": 2}


def test_a_champion_that_cannot_be_rescored_is_not_compared(tiny: TinyModel, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry.register(uri, RegistryConfig(), logged_run(uri, tiny), evaluation(30.0, SPLIT_A), never_rescore)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    shutil.rmtree(urlsplit(client.get_model_version_download_uri(NAME, "1")).path)  # its files are gone

    decision = registry.register(
        uri, RegistryConfig(), logged_run(uri, tiny), evaluation(50.0, SPLIT_B), never_rescore
    )
    assert decision.alias == "challenger"
    assert "could not be re-scored" in decision.reason and "not compared" in decision.reason
    assert aliases(uri) == {"champion": 1, "challenger": 2}


def test_a_champion_decoded_with_other_settings_is_rescored_with_these(
    tiny: TinyModel, tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    beam = dataclasses.replace(evaluation(40.0), decoding=registry.decoding_key({"search": "beam"}))
    registry.register(uri, RegistryConfig(), logged_run(uri, tiny), beam, never_rescore)
    rescored: list[Path] = []

    def rescore(model_dir: Path) -> float:  # the champion's real model directory, downloaded
        assert (model_dir / "model.keras").is_file() and (model_dir / "spm.model").is_file()
        rescored.append(model_dir)
        return 50.0

    decision = registry.register(uri, RegistryConfig(), logged_run(uri, tiny), evaluation(45.0), rescore)
    assert len(rescored) == 1 and not rescored[0].exists()  # downloaded into a temporary directory
    assert (
        decision.alias == "challenger"
        and "does not beat champion version 1 50.00 (re-scored" in decision.reason
    )
    assert aliases(uri) == {"champion": 1, "challenger": 2}


def test_a_disabled_registry_registers_nothing(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = dataclasses.replace(params_for(uri), registry=RegistryConfig(enabled=False))
    tracker = SpooledTracker(RunTracker(uri), tmp_path)
    tracker.start("summarizer", "evaluate")
    decision = register_evaluated_model(tracker, params, {}, [], SPLIT_A, tmp_path)
    assert decision.to_json() == {
        "model": "summarizer",
        "version": None,
        "alias": None,
        "reason": "registry.enabled is false in params.yaml",
    }
    assert mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).search_registered_models() == []


# Through an mlflow server, and without one ---------------------------------------------------------------


@pytest.mark.slow
def test_registration_through_an_mlflow_server_rescores_the_champion_on_a_new_split(
    tiny: TinyModel, own_summaries: list[tuple[str, str]], server: LoopbackMlflowServer, tmp_path: Path
) -> None:
    first = evaluate_run(tmp_path / "first", tiny, server.uri, own_summaries)
    assert first[registry.REGISTRY_KEY]["alias"] == "champion"

    # Another split (one example fewer): the champion is downloaded through the server and re-scored; it ties.
    second = evaluate_run(tmp_path / "second", tiny, server.uri, own_summaries[:-1])
    assert second["split_sha256"] != first["split_sha256"]
    decision = second[registry.REGISTRY_KEY]
    assert decision["alias"] == "challenger" and "re-scored on this test split" in decision["reason"]
    assert f"champion version 1 {second['rougeL']:.2f}" in decision["reason"]
    assert aliases(server.uri) == {"champion": 1, "challenger": 2}
    assert version_tags(server.uri, 2)["test_split_sha256"] == second["split_sha256"]


def test_an_unreachable_store_registers_nothing_and_says_what_to_do(
    server: LoopbackMlflowServer, tmp_path: Path
) -> None:
    tracker = SpooledTracker(RunTracker(server.uri), tmp_path)
    tracker.start("summarizer", "evaluate")
    server.stop()
    tracker.log_metrics({"test_rougeL": 30.0})  # spooled: the store is gone
    values = {
        "rouge1": 30.0,
        "rouge2": 10.0,
        "rougeL": 30.0,
        "test_perplexity": 9.0,
        "lead": {"rougeL": 20.0, "best_words": 5},
    }
    decision = register_evaluated_model(tracker, params_for(server.uri), values, [], SPLIT_A, tmp_path)
    assert (decision.version, decision.alias) == (None, None)
    assert "summarizer-replay" in decision.reason and "dvc repro --force evaluate" in decision.reason
