"""The evaluate stage's work: decode the test split, score it against lead baselines, log to the training run.

Outputs (every ROUGE figure is an F1 in percent, rounded to 2 decimals):

``metrics.json``::

    {"rouge1": 34.1, "rouge2": 15.2, "rougeL": 31.0, "rougeLsum": 31.0,       # the model
     "lead": {"best_words": 10, "rouge1": ..., "rouge2": ..., "rougeL": ..., "rougeLsum": ...,
              "rougeL_by_words": {"6": ..., "8": ..., "10": ...}},         # the text's first N words
     "beats_lead_rougeL": 4.2,              # model rougeL - best lead rougeL, in points (negative: lead wins)
     "test_perplexity": 12.3, "test_tokens": 5120,   # teacher-forced, over the TFRecord test shards
     "test_examples": 500,
     "search": "beam", "beam_width": 4, "batch_size": 128,
     "registry": {"model": "summarizer", "version": 3, "alias": "champion", "reason": "..."}}

``registry`` is :class:`summarizer.registry.Decision` (``version`` and ``alias`` null when nothing was
registered): the run's pyfunc model registered as a new version, and the alias it got (see
:mod:`summarizer.registry`); a tracking outage never fails the stage, the reason then says what to run.

``metrics/timings/evaluate.json`` (apart, as timings move on every run; :data:`TIMING_KEYS`)::

    {"summaries_per_second": 85.0,          # warm: batches after the first (which includes tracing)
     "decode_seconds": 7.1, "first_batch_seconds": 2.0}   # total wall time of decoding, and its first batch

``reports/predictions.jsonl``: per test example ``id, source, reference, prediction, lead`` (the best lead
baseline), ``rougeL`` and ``lead_rougeL``. ``plots/rouge_by_length.csv``: ``source_words`` (the lowest word
count of a bucket), mean ``rouge_l`` and ``lead_rouge_l``, ``count``.

Everything is logged to the training run (``run.json`` in the model directory), which ends FINISHED (FAILED if
this stage fails): numeric metrics flattened with a ``test_`` prefix (``test_rouge1``, ``test_lead_rougeL``),
the scorer and decoding settings, the output files, example summaries and the pyfunc model; then the
registry decision as ``summarizer.registry.*`` tags, the split's sha256 as ``summarizer.test_split_sha256``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from summarizer import metrics, registry, tracking
from summarizer.config import EvaluateConfig, Params
from summarizer.inference import SummarizerPipeline
from summarizer.ingested import read_pairs
from summarizer.io import atomic_write_text, jsonl_text, write_metrics
from summarizer.losses import negative_log_likelihood
from summarizer.model_directory import RunInfo, read_run_info
from summarizer.records import list_shards, read_dataset
from summarizer.spool import ATTEMPT_LIMITS, SpooledTracker, is_outage
from summarizer.text import first_words

logger = logging.getLogger(__name__)

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
TIMING_KEYS = ("summaries_per_second", "decode_seconds", "first_batch_seconds")
PLOT_COLUMNS = ("source_words", "rouge_l", "lead_rouge_l", "count")
BUCKET_WIDTHS = (5, 10, 20, 25, 50, 100, 200, 250, 500, 1000)
MAX_BUCKETS = 10
METRIC_PREFIX = "test_"
ARTIFACT_DIRECTORY = "evaluation"
EXAMPLE_TEXT_CHARACTERS = 600  # texts longer than this are cut in the logged examples
TEST_SPLIT_TAG = "summarizer.test_split_sha256"  # run tag: sha256 of the test split's bytes


@dataclasses.dataclass(frozen=True)
class EvaluationExample:
    id: str
    text: str
    summary: str


@dataclasses.dataclass(frozen=True)
class DecodeTiming:
    """Decoding wall times; the first batch includes tracing the ``tf.function``."""

    wall_seconds: float
    first_batch_seconds: float
    warm_seconds: float
    warm_summaries: int

    @property
    def summaries_per_second(self) -> float:
        return self.warm_summaries / max(self.warm_seconds, 1e-9)


@dataclasses.dataclass(frozen=True)
class LeadResult:
    """The best lead baseline: its N, ROUGE (fractions), its summaries, and ROUGE-L of every N tried."""

    best_words: int
    scores: dict[str, float]
    predictions: list[str]
    rouge_l_by_words: dict[int, float]


def percent(value: float) -> float:
    return round(100.0 * float(value), 2)


def read_test_examples(path: str | Path) -> list[EvaluationExample]:
    """The ingested test split (``{"id", "text", "summary", ...}`` a line; blank lines skipped).

    Raises:
        FileNotFoundError: no such file. ValueError: a malformed record (file, line and field named) or no
            records at all.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"test split not found: {path} (run the ingest stage first)")
    examples = [EvaluationExample(pair.id, pair.text, pair.summary) for pair in read_pairs(path)]
    if not examples:
        raise ValueError(f"{path}: the test split is empty; nothing to evaluate")
    return examples


def _timed(iterator: Iterator[list[str]]) -> Iterator[tuple[list[str], float]]:
    """Each batch of ``iterator`` with the seconds spent producing it."""
    while True:
        started = time.perf_counter()
        batch = next(iterator, None)
        if batch is None:
            return
        yield batch, time.perf_counter() - started


def decode_timed(
    pipeline: SummarizerPipeline, texts: Sequence[str], batch_size: int
) -> tuple[list[str], DecodeTiming]:
    """Summaries of every text and the decoding times.

    Warm throughput counts the batches after the first; with a single batch, that batch is decoded a second
    time (same shape, so no retracing) to measure it.
    """
    predictions: list[str] = []
    seconds: list[float] = []
    for batch, elapsed in _timed(pipeline.iter_batches(texts, batch_size)):
        predictions.extend(batch)
        seconds.append(elapsed)
    first_count = min(batch_size, len(texts))
    warm_seconds, warm_summaries = sum(seconds[1:]), len(texts) - first_count
    if len(seconds) == 1:
        started = time.perf_counter()
        pipeline.summarize(texts[:first_count], batch_size)
        warm_seconds, warm_summaries = time.perf_counter() - started, first_count
    return predictions, DecodeTiming(sum(seconds), seconds[0], warm_seconds, warm_summaries)


def teacher_forced_perplexity(
    pipeline: SummarizerPipeline, data_dir: str | Path, batch_size: int
) -> tuple[float, int]:
    """Teacher-forced perplexity over the TFRecord test shards (padding excluded) and the token count."""
    total_nll, total_tokens = 0.0, 0
    dataset = read_dataset(list_shards(data_dir, "test"), batch_size, shuffle=False)
    for batch in dataset:
        log_probs = pipeline.log_probs(batch["source_ids"], batch["target_in"])
        nll, count = negative_log_likelihood(log_probs, batch["target_out"])
        total_nll, total_tokens = total_nll + nll, total_tokens + count
    if total_tokens == 0:
        raise ValueError(f"{data_dir}: the test shards hold no target tokens; nothing to score")
    return metrics.perplexity(total_nll / total_tokens), total_tokens


def lead_result(texts: Sequence[str], references: Sequence[str], lead_words: Sequence[int]) -> LeadResult:
    best_words, scores_by_words = metrics.best_lead(list(texts), list(references), list(lead_words))
    return LeadResult(
        best_words=int(best_words),
        scores=dict(scores_by_words[best_words]),
        predictions=[first_words(text, best_words) for text in texts],
        rouge_l_by_words={int(words): scores["rougeL"] for words, scores in scores_by_words.items()},
    )


def bucket_width(max_words: int) -> int:
    """The smallest round width giving at most :data:`MAX_BUCKETS` buckets up to ``max_words``."""
    for width in BUCKET_WIDTHS:
        if max_words // width < MAX_BUCKETS:
            return width
    return BUCKET_WIDTHS[-1] * math.ceil((max_words + 1) / (MAX_BUCKETS * BUCKET_WIDTHS[-1]))


def rouge_by_length(
    texts: Sequence[str], rouge_l: Sequence[float], lead_rouge_l: Sequence[float]
) -> list[dict[str, Any]]:
    """Rows of :data:`PLOT_COLUMNS`: mean per-example ROUGE-L (percent) by source length bucket."""
    words = [len(text.split()) for text in texts]
    width = bucket_width(max(words))
    buckets: dict[int, list[int]] = {}
    for index, count in enumerate(words):
        buckets.setdefault(count // width * width, []).append(index)
    return [
        {
            "source_words": start,
            "rouge_l": round(sum(rouge_l[index] for index in members) / len(members), 2),
            "lead_rouge_l": round(sum(lead_rouge_l[index] for index in members) / len(members), 2),
            "count": len(members),
        }
        for start, members in sorted(buckets.items())
    ]


def plot_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=PLOT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def build_metrics(
    model_scores: Mapping[str, float],
    lead: LeadResult,
    perplexity_and_tokens: tuple[float, int],
    timing: DecodeTiming,
    examples: int,
    decoding: EvaluateConfig,
) -> dict[str, Any]:
    """The metrics.json and timings layout of this module's docstring, in one mapping."""
    perplexity, tokens = perplexity_and_tokens
    model = {key: percent(model_scores[key]) for key in ROUGE_KEYS}
    lead_scores = {key: percent(lead.scores[key]) for key in ROUGE_KEYS}
    by_words = {str(words): percent(score) for words, score in sorted(lead.rouge_l_by_words.items())}
    return {
        **model,
        "lead": {"best_words": lead.best_words, **lead_scores, "rougeL_by_words": by_words},
        "beats_lead_rougeL": round(model["rougeL"] - lead_scores["rougeL"], 2),
        "test_perplexity": round(perplexity, 4),
        "test_tokens": tokens,
        "test_examples": examples,
        "summaries_per_second": round(timing.summaries_per_second, 2),
        "decode_seconds": round(timing.wall_seconds, 3),
        "first_batch_seconds": round(timing.first_batch_seconds, 3),
        "search": decoding.search,
        "beam_width": decoding.beam_width if decoding.search == "beam" else 1,
        "batch_size": decoding.batch_size,
    }


def mlflow_metrics(values: Mapping[str, Any], prefix: str = METRIC_PREFIX) -> dict[str, float]:
    """Numeric metrics flattened with ``_`` and prefixed once: ``lead.rougeL`` -> ``test_lead_rougeL``."""
    flat: dict[str, float] = {}
    for key, value in values.items():
        name = key if key.startswith(prefix) else f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(mlflow_metrics(value, f"{name}_"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def prediction_records(
    examples: Sequence[EvaluationExample],
    predictions: Sequence[str],
    lead: LeadResult,
    rouge_l: Sequence[float],
    lead_rouge_l: Sequence[float],
) -> list[dict[str, Any]]:
    return [
        {
            "id": example.id,
            "source": example.text,
            "reference": example.summary,
            "prediction": prediction,
            "lead": lead_summary,
            "rougeL": model_score,
            "lead_rougeL": lead_score,
        }
        for example, prediction, lead_summary, model_score, lead_score in zip(
            examples, predictions, lead.predictions, rouge_l, lead_rouge_l, strict=True
        )
    ]


def examples_markdown(records: Sequence[Mapping[str, Any]], count: int) -> str:
    """The first ``count`` predictions as Markdown, for a glance in the MLflow UI."""
    sections = ["# Example summaries (test split)\n"]
    for record in records[:count]:
        source = record["source"]
        if len(source) > EXAMPLE_TEXT_CHARACTERS:
            source = source[:EXAMPLE_TEXT_CHARACTERS] + " …"
        sections.append(
            f"## {record['id']}\n\n**Text:** {source}\n\n**Reference:** {record['reference']}\n\n"
            f"**Model** (ROUGE-L {record['rougeL']:.1f}): {record['prediction']}\n\n"
            f"**Lead** (ROUGE-L {record['lead_rougeL']:.1f}): {record['lead']}\n"
        )
    return "\n".join(sections)


def summary_text(values: Mapping[str, Any]) -> str:
    """The short human summary printed at the end of the stage."""
    lead = values["lead"]
    return (
        f"test ROUGE-1/2/L {values['rouge1']:.2f}/{values['rouge2']:.2f}/{values['rougeL']:.2f} vs best lead "
        f"(first {lead['best_words']} words) {lead['rouge1']:.2f}/{lead['rouge2']:.2f}/{lead['rougeL']:.2f} "
        f"({values['beats_lead_rougeL']:+.2f} ROUGE-L); perplexity {values['test_perplexity']:.2f}; "
        f"{values['search']} search {values['summaries_per_second']:.1f} summaries/s "
        f"over {values['test_examples']} texts"
    )


def _log_evaluation(
    tracker: SpooledTracker,
    values: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]],
    outputs: Sequence[Path],
    params: Params,
    model_dir: Path,
) -> None:
    settings = dataclasses.asdict(params.evaluate)
    tracker.log_metrics(mlflow_metrics(values))
    tracker.log_dict(
        {"scorer": metrics.scorer_settings(), "decoding": settings}, f"{ARTIFACT_DIRECTORY}/settings.json"
    )
    for path in outputs:
        tracker.log_artifact(path, ARTIFACT_DIRECTORY)
    tracker.log_text(
        examples_markdown(records, params.evaluate.num_logged_examples), f"{ARTIFACT_DIRECTORY}/examples.md"
    )
    decoding = {key: list(value) if isinstance(value, tuple) else value for key, value in settings.items()}
    tracker.log_pyfunc(model_dir, decoding, [record["source"] for record in records[:2]])


def _tracker(params: Params, model_dir: Path, root: Path) -> tuple[SpooledTracker, RunInfo]:
    """A tracker on the store of ``params.tracking`` (as training used), checked before any decoding.

    It replays what the train stage spooled first (:mod:`summarizer.spool`), and spools in turn if the store
    goes away while this stage runs.
    """
    info = read_run_info(model_dir)
    uri = tracking.resolve_tracking_uri(params.tracking, root)
    if info.tracking_uri and info.tracking_uri != uri:
        logger.warning("run.json names the store %s, the params %s: using the latter", info.tracking_uri, uri)
    tracking.check_tracking_store(uri)
    return SpooledTracker(tracking.RunTracker(uri), root), info


def evaluate_model(
    pipeline: SummarizerPipeline,
    examples: Sequence[EvaluationExample],
    data_dir: str | Path,
    decoding: EvaluateConfig,
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """Decode and score the test split: (metrics.json values, prediction records, plot rows)."""
    texts, references = [example.text for example in examples], [example.summary for example in examples]
    predictions, timing = decode_timed(pipeline, texts, decoding.batch_size)
    lead = lead_result(texts, references, decoding.lead_words)
    rouge_l = [percent(score) for score in metrics.rouge_l_per_example(predictions, references)]
    lead_rouge_l = [percent(score) for score in metrics.rouge_l_per_example(lead.predictions, references)]
    perplexity = teacher_forced_perplexity(pipeline, data_dir, decoding.batch_size)
    values = build_metrics(
        metrics.rouge(predictions, references), lead, perplexity, timing, len(texts), decoding
    )
    records = prediction_records(examples, predictions, lead, rouge_l, lead_rouge_l)
    return values, records, rouge_by_length(texts, rouge_l, lead_rouge_l)


def run_evaluation(
    params: Params,
    model_dir: str | Path,
    test_jsonl: str | Path,
    data_dir: str | Path,
    metrics_path: str | Path,
    predictions_path: str | Path,
    plot_path: str | Path,
    root: str | Path,
    timings_path: str | Path,
) -> dict[str, Any]:
    """The evaluate stage: decode ``test_jsonl``, score it, write the three outputs, log to the training run.

    ``root`` resolves a relative sqlite tracking URI (the repository root). Each output is written
    atomically; the MLflow run ends FINISHED, or FAILED if anything raises after it was resumed.

    Returns:
        The metrics.json values and the timings.

    Raises:
        ModelDirectoryError, FileNotFoundError, ValueError: missing or malformed inputs (file, line, field).
        tracking.TrackingError: the store is unreachable or the training run cannot be resumed.
    """
    model_dir = Path(model_dir)
    pipeline = SummarizerPipeline.load(model_dir, params.evaluate)
    examples = read_test_examples(test_jsonl)
    tracker, info = _tracker(params, model_dir, Path(root))
    tags = {"evaluated": "true", "evaluate.search": params.evaluate.search}
    try:
        with tracking.tracked_run(tracker, info.experiment, "evaluate", tags, run_id=info.run_id):
            values, records, rows = evaluate_model(pipeline, examples, data_dir, params.evaluate)
            atomic_write_text(predictions_path, jsonl_text(records))
            atomic_write_text(plot_path, plot_csv(rows))
            _log_evaluation(
                tracker, values, records, [Path(predictions_path), Path(plot_path)], params, model_dir
            )
            split_hash = registry.split_sha256(test_jsonl)
            decision = register_evaluated_model(tracker, params, values, examples, split_hash, Path(root))
            values = {**values, registry.REGISTRY_KEY: decision.to_json()}
            write_metrics(values, TIMING_KEYS, metrics_path, timings_path)
            for path in (metrics_path, timings_path):
                tracker.log_artifact(path, ARTIFACT_DIRECTORY)
            tracker.set_tags({**decision.run_tags(), TEST_SPLIT_TAG: split_hash})
    finally:
        tracker.report_pending("evaluate")
    return values


def champion_rescorer(examples: Sequence[EvaluationExample], decoding: EvaluateConfig) -> registry.Rescorer:
    """Scores another model directory on these examples with these decoding settings (ROUGE-L, %)."""

    def rescore(model_dir: Path) -> float:
        predictions = SummarizerPipeline.load(model_dir, decoding).summarize(
            [example.text for example in examples], decoding.batch_size
        )
        return percent(metrics.rouge(predictions, [example.summary for example in examples])["rougeL"])

    return rescore


def register_evaluated_model(
    tracker: SpooledTracker,
    params: Params,
    values: Mapping[str, Any],
    examples: Sequence[EvaluationExample],
    split_hash: str,
    root: Path,
) -> registry.Decision:
    """Register the run's pyfunc model and decide its alias; never fails the stage for a tracking outage."""
    config = params.registry
    if not config.enabled:
        return registry.not_registered(config, "registry.enabled is false in params.yaml")
    replay_hint = (
        "once it answers, run `summarizer-replay`, then `dvc repro --force evaluate` to register the model"
    )
    if tracker.pending:
        return registry.not_registered(
            config, f"the MLflow store {tracker.tracking_uri} did not answer (records spooled); {replay_hint}"
        )
    commit = tracking.default_tags(root).get("mlflow.source.git.commit")
    evaluation = registry.Evaluation.from_metrics(
        values, split_hash, dataclasses.asdict(params.evaluate), commit
    )
    try:
        with tracking.environment(ATTEMPT_LIMITS):
            return registry.register(
                tracker.tracking_uri,
                config,
                tracker.run_id,
                evaluation,
                champion_rescorer(examples, params.evaluate),
            )
    except tracking.STORE_ERRORS as error:
        if not is_outage(error):
            raise
        first_line = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        return registry.not_registered(
            config,
            f"the MLflow store {tracker.tracking_uri} failed while registering ({first_line}); {replay_hint}",
        )


__all__ = [
    "DecodeTiming",
    "LeadResult",
    "EvaluationExample",
    "bucket_width",
    "build_metrics",
    "champion_rescorer",
    "register_evaluated_model",
    "decode_timed",
    "evaluate_model",
    "examples_markdown",
    "lead_result",
    "mlflow_metrics",
    "read_test_examples",
    "rouge_by_length",
    "run_evaluation",
    "summary_text",
    "teacher_forced_perplexity",
]
