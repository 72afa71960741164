"""The evaluate stage's library: metrics layout, lead baselines, perplexity, outputs and the MLflow run."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import mlflow
import pytest

from summarizer import metrics
from summarizer.config import EvaluateConfig, Params, TrackingConfig
from summarizer.evaluation import (
    TIMING_KEYS,
    DecodeTiming,
    LeadResult,
    bucket_width,
    build_metrics,
    examples_markdown,
    mlflow_metrics,
    read_test_examples,
    rouge_by_length,
    run_evaluation,
    summary_text,
)
from summarizer.inference import SummarizerPipeline
from summarizer.text import first_words
from summarizer.tracking import TrackingError
from tests.helpers import TOKENIZE, TRAIN, TinyModel, build_model_directory, training_run

EVALUATE = EvaluateConfig(
    search="beam",
    beam_width=2,
    max_length=8,
    min_length=1,
    no_repeat_ngram_size=2,
    batch_size=4,
    lead_words=(3, 5, 8),
    num_logged_examples=2,
)
METRIC_KEYS = {
    "rouge1",
    "rouge2",
    "rougeL",
    "rougeLsum",
    "lead",
    "beats_lead_rougeL",
    "test_perplexity",
    "test_tokens",
    "test_examples",
    "search",
    "beam_width",
    "batch_size",
    "registry",
}


@dataclasses.dataclass(frozen=True)
class Evaluated:
    tiny: TinyModel
    uri: str
    run_id: str
    values: dict
    outputs: Path


def params_for(uri: str, evaluate: EvaluateConfig = EVALUATE) -> Params:
    return Params(
        tokenize=TOKENIZE, train=TRAIN, evaluate=evaluate, tracking=TrackingConfig(tracking_uri=uri)
    )


def evaluate_into(outputs: Path, tiny: TinyModel, params: Params) -> dict:
    return run_evaluation(
        params,
        tiny.model_dir,
        tiny.ingested_dir / "test.jsonl",
        tiny.data_dir,
        outputs / "metrics.json",
        outputs / "reports/predictions.jsonl",
        outputs / "plots/rouge_by_length.csv",
        root=outputs,
        timings_path=outputs / "metrics/timings/evaluate.json",
    )


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> Evaluated:
    root = tmp_path_factory.mktemp("evaluation")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    run_id = training_run(uri)
    tiny = build_model_directory(
        root / "tiny", run={"run_id": run_id, "experiment": "summarizer", "tracking_uri": uri}
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        values = evaluate_into(root / "out", tiny, params_for(uri))
    return Evaluated(tiny, uri, run_id, values, root / "out")


def read_predictions(evaluated: Evaluated) -> list[dict]:
    lines = (evaluated.outputs / "reports/predictions.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


# Pure functions --------------------------------------------------------------------------------------------


def test_bucket_width_gives_at_most_ten_round_buckets() -> None:
    assert [bucket_width(words) for words in (9, 49, 50, 99, 380, 4999)] == [5, 5, 10, 10, 50, 500]
    assert (bucket_width(19_999), bucket_width(20_000)) == (2000, 3000)


def test_rouge_by_length_means_per_bucket() -> None:
    texts = ["word " * 12, "word " * 14, "word " * 31]
    rows = rouge_by_length(texts, [10.0, 20.0, 50.0], [0.0, 5.0, 40.0])
    assert rows == [
        {"source_words": 10, "rouge_l": 15.0, "lead_rouge_l": 2.5, "count": 2},
        {"source_words": 30, "rouge_l": 50.0, "lead_rouge_l": 40.0, "count": 1},
    ]


def test_metrics_layout_in_percent_and_mlflow_names() -> None:
    scores = {"rouge1": 0.34123, "rouge2": 0.1, "rougeL": 0.3, "rougeLsum": 0.31}
    lead = LeadResult(
        8, {"rouge1": 0.3, "rouge2": 0.05, "rougeL": 0.25, "rougeLsum": 0.25}, ["a"], {6: 0.2, 8: 0.25}
    )
    values = build_metrics(scores, lead, (12.3456789, 400), DecodeTiming(5.0, 2.0, 1.5, 30), 50, EVALUATE)
    assert set(values) | {"registry"} == METRIC_KEYS | set(TIMING_KEYS)  # run_evaluation adds the registry
    assert values["rouge1"] == 34.12 and values["beats_lead_rougeL"] == 5.0
    assert values["lead"] == {
        "best_words": 8,
        "rouge1": 30.0,
        "rouge2": 5.0,
        "rougeL": 25.0,
        "rougeLsum": 25.0,
        "rougeL_by_words": {"6": 20.0, "8": 25.0},
    }
    assert values["summaries_per_second"] == 20.0 and values["test_perplexity"] == 12.3457
    flat = mlflow_metrics(values)
    assert (
        flat["test_rouge1"] == 34.12
        and flat["test_lead_rougeL"] == 25.0
        and flat["test_lead_best_words"] == 8
    )
    assert flat["test_lead_rougeL_by_words_6"] == 20.0 and flat["test_perplexity"] == 12.3457
    assert "search" not in flat and "test_search" not in flat and "test_test_perplexity" not in flat
    assert summary_text(values).startswith("test ROUGE-1/2/L 34.12/10.00/30.00 vs best lead (first 8 words)")


def test_examples_markdown_holds_the_first_examples() -> None:
    records = [
        {
            "id": f"t{index}",
            "source": "x" * 700,
            "reference": "ref",
            "prediction": f"p{index}",
            "lead": "lead",
            "rougeL": 12.5,
            "lead_rougeL": 3.0,
        }
        for index in range(3)
    ]
    markdown = examples_markdown(records, 2)
    assert "## t0" in markdown and "## t1" in markdown and "## t2" not in markdown
    assert "**Model** (ROUGE-L 12.5): p0" in markdown and "x" * 601 not in markdown


def test_malformed_test_split_names_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "test.jsonl"
    path.write_text(
        '{"id": "a", "text": "t", "summary": "s"}\n\n{"id": "b", "text": "t"}\n', encoding="utf-8"
    )
    with pytest.raises(ValueError, match=r"test.jsonl: line 3: field 'summary'"):
        read_test_examples(path)
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="test split is empty"):
        read_test_examples(path)
    with pytest.raises(FileNotFoundError, match="run the ingest stage"):
        read_test_examples(tmp_path / "absent.jsonl")


def test_metrics_file_has_every_key(evaluated: Evaluated) -> None:
    written = json.loads((evaluated.outputs / "metrics.json").read_text(encoding="utf-8"))
    timings = json.loads((evaluated.outputs / "metrics/timings/evaluate.json").read_text(encoding="utf-8"))
    assert {**written, **timings} == evaluated.values and set(written) == METRIC_KEYS
    assert written["test_examples"] == 10 and written["search"] == "beam" and written["beam_width"] == 2
    assert all(0 <= written[key] <= 100 for key in ("rouge1", "rouge2", "rougeL", "rougeLsum"))
    assert set(timings) == set(TIMING_KEYS) and timings["summaries_per_second"] > 0
    assert timings["decode_seconds"] >= timings["first_batch_seconds"] > 0


def test_predictions_are_the_pipelines_summaries_with_their_scores(evaluated: Evaluated) -> None:
    records = read_predictions(evaluated)
    pairs = evaluated.tiny.test_pairs()
    assert [(record["source"], record["reference"]) for record in records] == pairs
    assert records[0]["id"] == "test-0"
    predictions = SummarizerPipeline.load(evaluated.tiny.model_dir, EVALUATE).summarize(
        [text for text, _ in pairs]
    )
    assert [record["prediction"] for record in records] == predictions
    references = [summary for _, summary in pairs]
    expected_rouge_l = [
        round(100 * score, 2) for score in metrics.rouge_l_per_example(predictions, references)
    ]
    assert [record["rougeL"] for record in records] == expected_rouge_l
    model_scores = metrics.rouge(predictions, references)
    assert evaluated.values["rougeL"] == round(100 * model_scores["rougeL"], 2)


def test_lead_baselines_match_rouge_computed_directly(evaluated: Evaluated) -> None:
    texts, references = zip(*evaluated.tiny.test_pairs(), strict=True)
    lead = evaluated.values["lead"]
    by_words = {}
    for words in EVALUATE.lead_words:
        scores = metrics.rouge([first_words(text, words) for text in texts], list(references))
        by_words[words] = scores
        assert lead["rougeL_by_words"][str(words)] == round(100 * scores["rougeL"], 2)
    best = by_words[lead["best_words"]]
    assert [lead[key] for key in ("rouge1", "rouge2", "rougeL", "rougeLsum")] == [
        round(100 * best[key], 2) for key in ("rouge1", "rouge2", "rougeL", "rougeLsum")
    ]
    assert evaluated.values["beats_lead_rougeL"] == round(evaluated.values["rougeL"] - lead["rougeL"], 2)
    assert [record["lead"] for record in read_predictions(evaluated)] == [
        first_words(text, lead["best_words"]) for text in texts
    ]


def test_perplexity_from_shards_equals_scoring_the_jsonl(evaluated: Evaluated) -> None:
    pairs = evaluated.tiny.test_pairs()
    pipeline = SummarizerPipeline.load(evaluated.tiny.model_dir, EVALUATE)
    total_nll, tokens = pipeline.score([text for text, _ in pairs], [summary for _, summary in pairs])
    assert evaluated.values["test_tokens"] == tokens
    assert evaluated.values["test_perplexity"] == pytest.approx(math.exp(total_nll / tokens), rel=1e-3)
    assert evaluated.values["test_perplexity"] > 1


def test_plot_csv_buckets_every_example(evaluated: Evaluated) -> None:
    with (evaluated.outputs / "plots/rouge_by_length.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["source_words", "rouge_l", "lead_rouge_l", "count"]
    assert sum(int(row["count"]) for row in rows) == 10
    records = read_predictions(evaluated)
    overall = sum(float(row["rouge_l"]) * int(row["count"]) for row in rows) / 10
    assert overall == pytest.approx(sum(record["rougeL"] for record in records) / 10, abs=0.01)


def test_results_are_logged_to_the_training_run(evaluated: Evaluated) -> None:
    client = mlflow.MlflowClient(evaluated.uri)
    run = client.get_run(evaluated.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_rougeL"] == evaluated.values["rougeL"]
    assert run.data.metrics["test_lead_rougeL"] == evaluated.values["lead"]["rougeL"]
    assert run.data.metrics["test_perplexity"] == evaluated.values["test_perplexity"]
    assert run.data.metrics["val_loss"] == 4.0 and run.data.params["train.cell"] == "gru"  # the same run
    assert len(client.search_runs([run.info.experiment_id])) == 1
    artifacts = {item.path for item in client.list_artifacts(evaluated.run_id, "evaluation")}
    assert {
        "evaluation/predictions.jsonl",
        "evaluation/metrics.json",
        "evaluation/rouge_by_length.csv",
        "evaluation/examples.md",
        "evaluation/settings.json",
    } <= artifacts
    examples = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/evaluation/examples.md")
    assert examples.count("\n## ") == 2
    settings = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/evaluation/settings.json")
    assert settings["scorer"] == json.loads(json.dumps(metrics.scorer_settings()))
    assert settings["decoding"]["beam_width"] == 2
    models = client.search_logged_models([run.info.experiment_id])
    assert [(model.name, model.source_run_id) for model in models] == [("summarizer", evaluated.run_id)]


def test_unknown_run_fails_before_writing_anything(
    evaluated: Evaluated, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for path in evaluated.tiny.model_dir.iterdir():
        (model_dir / path.name).write_bytes(path.read_bytes())
    (model_dir / "run.json").write_text(json.dumps({"run_id": "f" * 32, "experiment": "summarizer"}))
    tiny = dataclasses.replace(evaluated.tiny, model_dir=model_dir)
    with pytest.raises(TrackingError, match="f" * 32):
        evaluate_into(tmp_path / "out", tiny, params_for(evaluated.uri))
    assert not (tmp_path / "out").exists()


def test_a_failure_marks_the_run_failed_and_leaves_no_metrics(
    tmp_path: Path, evaluated: Evaluated, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = training_run(uri)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for path in evaluated.tiny.model_dir.iterdir():
        (model_dir / path.name).write_bytes(path.read_bytes())
    (model_dir / "run.json").write_text(json.dumps({"run_id": run_id, "experiment": "summarizer"}))
    no_shards = dataclasses.replace(evaluated.tiny, model_dir=model_dir, data_dir=tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no test shards"):
        evaluate_into(
            tmp_path / "out", no_shards, params_for(uri, dataclasses.replace(EVALUATE, batch_size=16))
        )
    assert mlflow.MlflowClient(uri).get_run(run_id).info.status == "FAILED"
    assert not (tmp_path / "out/metrics.json").exists()
