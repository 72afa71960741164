"""A trained summarizer on disk (model + tokenizer + settings) turned into summaries, and its MLflow pyfunc.

:class:`SummarizerPipeline` loads ``models/summarizer/`` (written by the train stage), normalizes texts
the way the ingest stage does (:func:`summarizer.data.normalize_text`), encodes them capped at
``max_source_tokens`` and decodes each batch with greedy or beam search inside ONE ``tf.function`` per batch
size. Batches are padded to a fixed shape, ``(batch_size, max_source_tokens)``, so every batch of a run reuses
the same trace; padding rows (copies of the batch's first text) are dropped from the result.

A summary is never empty: the searches ban EOS before ``min_length >= 1`` tokens, special and unknown ids are
dropped, and if the remaining pieces still decode to whitespace (a lone ``▁`` piece, say) the summary falls
back to the text's first word, its lead word.

:class:`SummarizerPyfunc` wraps the pipeline as an ``mlflow.pyfunc.PythonModel`` (a ``text`` column in, a
``summary`` column out); :func:`log_pyfunc_model` logs it into an existing run so that
``mlflow models predict -m runs:/<run_id>/summarizer -i texts.csv -t csv --env-manager local`` works.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
import tensorflow as tf
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

import summarizer
import summarizer.model  # noqa: F401  (registers the custom layers that load_model needs)
from summarizer.config import EvaluateConfig, params_from_dict
from summarizer.data import normalize_summary, normalize_text
from summarizer.decoding import beam_search, greedy_search, tile_beams
from summarizer.metrics import token_nll
from summarizer.tokenization import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer
from summarizer.tracking import RunTracker

MODEL_FILE = "model.keras"
TOKENIZER_FILE = "spm.model"
CONFIG_FILE = "config.json"
RUN_FILE = "run.json"
REQUIRED_FILES = (MODEL_FILE, TOKENIZER_FILE, CONFIG_FILE)
SPECIAL_IDS = {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID}
DROPPED_IDS = frozenset(SPECIAL_IDS.values())
TEXT_COLUMN = "text"
SUMMARY_COLUMN = "summary"
PYFUNC_NAME = "summarizer"
# Distribution names whose installed versions the pyfunc model pins (tensorflow is added separately).
PINNED_DISTRIBUTIONS = (
    "keras",
    "sentencepiece",
    "rouge-score",
    "numpy",
    "pandas",
    "pyarrow",
    "pyyaml",
    "mlflow",
)


class ModelDirectoryError(FileNotFoundError):
    """A model directory is missing or incomplete, or its config.json is malformed."""


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """What config.json tells inference besides the weights."""

    max_source_tokens: int
    max_target_tokens: int


def check_model_directory(model_dir: str | Path) -> Path:
    """Return ``model_dir`` as a Path if it holds every file inference needs.

    Raises:
        ModelDirectoryError: naming the directory, the missing files and how to produce them.
    """
    model_dir = Path(model_dir)
    missing = [name for name in REQUIRED_FILES if not (model_dir / name).is_file()]
    if not missing:
        return model_dir
    problem = "does not exist" if not model_dir.is_dir() else f"lacks {', '.join(missing)}"
    raise ModelDirectoryError(
        f"{model_dir}: not a summarizer model directory ({problem}); expected {', '.join(REQUIRED_FILES)} "
        "as written by the train stage (run `dvc repro train`, or pass --model-dir)"
    )


def _positive_int(config: Mapping[str, Any], key: str, path: Path) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ModelDirectoryError(f"{path}: field '{key}' must be an integer >= 1, got {value!r}")
    return value


def read_model_settings(model_dir: Path) -> ModelSettings:
    """Parse config.json; its special ids must equal :mod:`summarizer.tokenization`'s."""
    path = model_dir / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ModelDirectoryError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from None
    if not isinstance(config, dict):
        raise ModelDirectoryError(f"{path}: expected a JSON object, got {type(config).__name__}")
    special_ids = config.get("special_ids", SPECIAL_IDS)
    if special_ids != SPECIAL_IDS:
        raise ModelDirectoryError(
            f"{path}: field 'special_ids' is {special_ids!r}, this code uses {SPECIAL_IDS!r}"
        )
    return ModelSettings(
        _positive_int(config, "max_source_tokens", path), _positive_int(config, "max_target_tokens", path)
    )


def decoding_config(decoding: EvaluateConfig | Mapping[str, Any] | None) -> EvaluateConfig:
    """An :class:`EvaluateConfig` from a config, a mapping of ``evaluate.*`` keys or None (the defaults).

    Raises:
        ConfigError: naming the ``evaluate.<key>`` that is unknown, mistyped or out of range.
    """
    if isinstance(decoding, EvaluateConfig):
        decoding.validate("evaluate")
        return decoding
    return params_from_dict({"evaluate": dict(decoding or {})}).evaluate


def lead_word(text: str) -> str:
    """The text's first word: the fallback summary when decoding yields only whitespace."""
    words = text.split()
    return words[0] if words else text


class SummarizerPipeline:
    """Texts in, summaries out, with a trained model, its tokenizer and decoding settings.

    Build it with :meth:`load`. ``decoding`` holds the search settings (``search``, ``beam_width``,
    ``length_penalty``, ``min_length``, ``max_length``, ``no_repeat_ngram_size``, ``batch_size``).
    """

    def __init__(
        self, model: keras.Model, tokenizer: Tokenizer, settings: ModelSettings, decoding: EvaluateConfig
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.decoding = decoding
        self._decoders: dict[int, tf.types.experimental.PolymorphicFunction] = {}
        self._log_probs_function = tf.function(
            self._teacher_forced_log_probs,
            input_signature=[tf.TensorSpec((None, None), tf.int32), tf.TensorSpec((None, None), tf.int32)],
        )

    @classmethod
    def load(
        cls, model_dir: str | Path, decoding: EvaluateConfig | Mapping[str, Any] | None = None
    ) -> SummarizerPipeline:
        """Load ``model.keras``, ``spm.model`` and ``config.json`` from ``model_dir``.

        Raises:
            ModelDirectoryError: a file is missing or config.json is malformed.
            ConfigError: ``decoding`` has an unknown or out-of-range key.
        """
        model_dir = check_model_directory(model_dir)
        decoding = decoding_config(decoding)
        settings = read_model_settings(model_dir)
        tokenizer = Tokenizer.load(model_dir / TOKENIZER_FILE)
        model = keras.saving.load_model(model_dir / MODEL_FILE, compile=False)
        if model.vocab_size != tokenizer.vocab_size:
            raise ModelDirectoryError(
                f"{model_dir}: {MODEL_FILE} has a {model.vocab_size}-id vocabulary but {TOKENIZER_FILE} has "
                f"{tokenizer.vocab_size} pieces; they come from different runs"
            )
        return cls(model, tokenizer, settings, decoding)

    def with_decoding(self, decoding: EvaluateConfig | Mapping[str, Any] | None) -> SummarizerPipeline:
        """The same model and tokenizer with other search settings (a new set of traces)."""
        return SummarizerPipeline(self.model, self.tokenizer, self.settings, decoding_config(decoding))

    # Encoding --------------------------------------------------------------------------------------------

    def source_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Normalized, encoded and capped source ids of each text.

        Raises:
            ValueError: a text is not a string or is empty after normalization (the message gives its index).
        """
        normalized = []
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"text {index}: expected a string, got {type(text).__name__}")
            normalized.append(normalize_text(text))
            if not normalized[-1]:
                raise ValueError(f"text {index}: empty (only whitespace); nothing to summarize")
        # A text whose pieces sentencepiece drops entirely still gets one token to attend to.
        return [
            ids[: self.settings.max_source_tokens] or [UNK_ID]
            for ids in self.tokenizer.encode_batch(normalized)
        ]

    def target_ids(self, summary: str) -> list[int]:
        """Summary ids ending with EOS, capped at ``max_target_tokens`` as the TFRecord writer does."""
        return [*self.tokenizer.encode(normalize_summary(summary)), EOS_ID][: self.settings.max_target_tokens]

    # Decoding --------------------------------------------------------------------------------------------

    def _search(self, source_ids: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Encode and search one fixed-shape batch; traced once per batch size."""
        decoding = self.decoding
        batch_size = source_ids.shape[0]
        context, state = self.model.encode(source_ids)
        search_settings = {
            "bos_id": BOS_ID,
            "eos_id": EOS_ID,
            "pad_id": PAD_ID,
            "max_length": decoding.max_length,
            "min_length": decoding.min_length,
            "no_repeat_ngram_size": decoding.no_repeat_ngram_size,
        }
        if decoding.search == "greedy":
            result = greedy_search(
                lambda ids, step_state: self.model.decode_step(ids, step_state, context),
                state,
                batch_size,
                **search_settings,
            )
        else:
            beams = decoding.beam_width
            tiled_context = tile_beams(context, beams)
            result = beam_search(
                lambda ids, step_state: self.model.decode_step(ids, step_state, tiled_context),
                tile_beams(state, beams),
                batch_size,
                beam_width=beams,
                length_penalty=decoding.length_penalty,
                **search_settings,
            )
        return result.ids, result.lengths

    def decoder(self, batch_size: int) -> tf.types.experimental.PolymorphicFunction:
        """The traced search: source ids (batch_size, max_source_tokens) -> (ids, lengths); one per size."""
        if batch_size not in self._decoders:
            signature = [tf.TensorSpec((batch_size, self.settings.max_source_tokens), tf.int32)]
            self._decoders[batch_size] = tf.function(self._search, input_signature=signature, autograph=False)
        return self._decoders[batch_size]

    def _padded(self, rows: Sequence[Sequence[int]], batch_size: int) -> np.ndarray:
        """A (batch_size, max_source_tokens) array; missing rows repeat row 0, a harmless real input."""
        array = np.full((batch_size, self.settings.max_source_tokens), PAD_ID, dtype=np.int32)
        for index in range(batch_size):
            row = rows[index] if index < len(rows) else rows[0]
            array[index, : len(row)] = row
        return array

    def summary_of_ids(self, ids: Sequence[int], source_text: str) -> str:
        """The summary text of generated ids: special and unknown ids dropped, whitespace collapsed.

        Falls back to the source's lead word when the pieces decode to nothing but whitespace.
        """
        kept = [int(piece_id) for piece_id in ids if int(piece_id) not in DROPPED_IDS]
        text = " ".join(self.tokenizer.decode(kept).split())
        return text or lead_word(normalize_text(source_text))

    def iter_batches(self, texts: Sequence[str], batch_size: int | None = None) -> Iterator[list[str]]:
        """Summaries batch by batch (``batch_size`` texts each, the last batch possibly fewer).

        The decoding batch is ``min(batch_size, len(texts))`` rows, so one text is not decoded as 128.
        """
        texts = list(texts)
        rows = self.source_ids(texts)
        size = max(1, min(batch_size or self.decoding.batch_size, len(texts)))
        decoder = self.decoder(size)
        for start in range(0, len(texts), size):
            chunk = rows[start : start + size]
            ids, lengths = decoder(tf.constant(self._padded(chunk, size)))
            ids, lengths = ids.numpy(), lengths.numpy()
            yield [
                self.summary_of_ids(ids[row, : lengths[row]], texts[start + row]) for row in range(len(chunk))
            ]

    def summarize(self, texts: Sequence[str], batch_size: int | None = None) -> list[str]:
        """One non-empty summary per text, in order.

        Raises:
            ValueError: a text is empty or not a string.
        """
        return [summary for batch in self.iter_batches(texts, batch_size) for summary in batch]

    # Teacher forcing -------------------------------------------------------------------------------------

    def _teacher_forced_log_probs(self, source_ids: tf.Tensor, target_in: tf.Tensor) -> tf.Tensor:
        return self.model({"source_ids": source_ids, "target_in": target_in}, training=False)["log_probs"]

    def log_probs(self, source_ids: Any, target_in: Any) -> tf.Tensor:
        """Teacher-forced float32 log-probabilities (batch, target_time, vocab); one trace for every shape."""
        return self._log_probs_function(tf.cast(source_ids, tf.int32), tf.cast(target_in, tf.int32))

    def score(
        self, texts: Sequence[str], summaries: Sequence[str], batch_size: int | None = None
    ) -> tuple[float, int]:
        """Summed negative log-likelihood of ``summaries`` (EOS included, padding excluded) and token count.

        Perplexity is ``exp(sum / count)``. Texts and summaries are encoded as the tokenize stage does.
        """
        if len(texts) != len(summaries):
            raise ValueError(f"score: {len(texts)} texts but {len(summaries)} summaries")
        sources, targets = self.source_ids(texts), [self.target_ids(summary) for summary in summaries]
        size = batch_size or self.decoding.batch_size
        total_nll, total_tokens = 0.0, 0
        for start in range(0, len(targets), size):
            source_rows, target_rows = sources[start : start + size], targets[start : start + size]
            target_out = _right_padded(target_rows)
            target_in = _right_padded([[BOS_ID, *row[:-1]] for row in target_rows])
            nll, count = token_nll(
                self.log_probs(_right_padded(source_rows), target_in), target_out, pad_id=PAD_ID
            )
            total_nll, total_tokens = total_nll + float(nll), total_tokens + int(count)
        return total_nll, total_tokens


def _right_padded(rows: Sequence[Sequence[int]]) -> np.ndarray:
    array = np.full((len(rows), max(len(row) for row in rows)), PAD_ID, dtype=np.int32)
    for index, row in enumerate(rows):
        array[index, : len(row)] = row
    return array


# MLflow pyfunc ------------------------------------------------------------------------------------------


def _texts_of(model_input: Any) -> list[str]:
    """The texts of a pyfunc input: a DataFrame's ``text`` column (or its only column), a Series or a list."""
    if isinstance(model_input, pd.DataFrame):
        if TEXT_COLUMN in model_input.columns:
            return model_input[TEXT_COLUMN].tolist()
        if len(model_input.columns) == 1:
            return model_input.iloc[:, 0].tolist()
        raise ValueError(f"expected a '{TEXT_COLUMN}' column, got columns {list(model_input.columns)}")
    if isinstance(model_input, pd.Series | np.ndarray):
        return list(model_input.tolist())
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, Mapping) and TEXT_COLUMN in model_input:
        return list(model_input[TEXT_COLUMN])
    return list(model_input)


class SummarizerPyfunc(mlflow.pyfunc.PythonModel):
    """The summarizer as an MLflow pyfunc model: ``predict`` maps a ``text`` column to a ``summary`` column.

    The model directory is the ``model_dir`` artifact; the decoding settings are the ``decoding`` entry of the
    model config (``evaluate.*`` keys).
    """

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        decoding = (context.model_config or {}).get("decoding")
        self.pipeline = SummarizerPipeline.load(context.artifacts["model_dir"], decoding)

    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame | list[str]:
        """A DataFrame with a ``summary`` column for DataFrame input, else a list of summaries."""
        summaries = self.pipeline.summarize(_texts_of(model_input))
        if isinstance(model_input, pd.DataFrame):
            return pd.DataFrame({SUMMARY_COLUMN: summaries}, index=model_input.index)
        return summaries


def _installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def pip_requirements() -> list[str]:
    """Exact pins of the installed TensorFlow (``tensorflow-cpu`` or ``tensorflow``) and other libraries."""
    names = [
        next((name for name in ("tensorflow-cpu", "tensorflow") if _installed_version(name)), "tensorflow")
    ]
    names += PINNED_DISTRIBUTIONS
    return [f"{name}=={version}" if (version := _installed_version(name)) else name for name in names]


def pyfunc_signature() -> ModelSignature:
    return ModelSignature(
        inputs=Schema([ColSpec("string", TEXT_COLUMN)]), outputs=Schema([ColSpec("string", SUMMARY_COLUMN)])
    )


def log_pyfunc_model(
    run: RunTracker | str,
    model_dir: str | Path,
    decoding: EvaluateConfig | Mapping[str, Any] | None = None,
    *,
    name: str = PYFUNC_NAME,
    tracking_uri: str | None = None,
    example_texts: Sequence[str] = (),
) -> str:
    """Log ``model_dir`` as a pyfunc model named ``name`` in an existing run; returns ``runs:/<id>/<name>``.

    ``run`` is a started :class:`RunTracker` (its store is used) or a run id (in ``tracking_uri``, else the
    current MLflow tracking URI). The fluent MLflow state is restored afterwards: the previous tracking URI,
    and the run's status (the fluent API ends the run FINISHED; a RUNNING run goes back to RUNNING).
    ``example_texts``, if given, become the input example, which MLflow checks by loading the logged model
    and summarizing them.
    """
    model_dir = check_model_directory(model_dir)
    settings = dataclasses.asdict(decoding_config(decoding))
    run_id = run.run_id if isinstance(run, RunTracker) else run
    uri = run.tracking_uri if isinstance(run, RunTracker) else tracking_uri or mlflow.get_tracking_uri()
    # mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI (for subprocesses), which would override every
    # later resolve_tracking_uri in this process: restore the variable exactly, unset if it was unset.
    previous_uri = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        client = mlflow.MlflowClient(tracking_uri=uri)
        previous_status = client.get_run(run_id).info.status
        with mlflow.start_run(run_id=run_id):
            mlflow.pyfunc.log_model(
                name=name,
                python_model=SummarizerPyfunc(),
                artifacts={"model_dir": str(model_dir)},
                model_config={"decoding": {key: _jsonable(value) for key, value in settings.items()}},
                code_paths=[str(Path(summarizer.__file__).parent)],
                pip_requirements=pip_requirements(),
                signature=pyfunc_signature(),
                input_example=pd.DataFrame({TEXT_COLUMN: list(example_texts)}) if example_texts else None,
            )
        if previous_status != "FINISHED":
            client.update_run(run_id, status=previous_status)
    finally:
        mlflow.set_tracking_uri(previous_uri)
    return f"runs:/{run_id}/{name}"


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


__all__ = [
    "CONFIG_FILE",
    "MODEL_FILE",
    "REQUIRED_FILES",
    "RUN_FILE",
    "TOKENIZER_FILE",
    "ModelDirectoryError",
    "ModelSettings",
    "SummarizerPipeline",
    "SummarizerPyfunc",
    "check_model_directory",
    "decoding_config",
    "lead_word",
    "log_pyfunc_model",
    "pip_requirements",
    "read_model_settings",
]
