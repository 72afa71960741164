"""Typed, validated configuration: the only module that reads ``params.yaml``.

Each top-level section maps to one frozen dataclass. Unknown keys, wrong types and out-of-range
values raise :class:`ConfigError` before any work starts, naming the dotted key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

# train.horovod.cycle_time_ms: auto. On CPU ranks Horovod's 1 ms costs 2-worker efficiency (0.79 against 0.87
# at 20 ms on the 2-core VM: README, the scaling benchmark); a CPU step takes about a second, so waiting for
# the next cycle costs ~1-2%. GPU steps are far shorter, and their CPUs idle: Horovod's 1 ms.
CPU_CYCLE_TIME_MS = 20.0
GPU_CYCLE_TIME_MS = 1.0
AUTO_VOCAB_SIZE = 8000  # tokenize.vocab_size: auto asks for this many pieces, fewer if the corpus is small
# registry.model_name: MLflow forbids '/' and ':'; '@' would break `models:/<name>@<alias>` URIs.
MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


class ConfigError(ValueError):
    """A parameter is unknown, of the wrong type or out of range."""


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


@dataclass(frozen=True)
class SplitConfig:
    val: float = 0.05
    test: float = 0.05

    def validate(self, key: str) -> None:
        for name in ("val", "test"):
            value = getattr(self, name)
            _check(0.0 < value < 1.0, f"{key}.{name}", f"expected a fraction in (0, 1), got {value}")
        _check(self.val + self.test < 1.0, key, f"val + test must be < 1, got {self.val + self.test}")


@dataclass(frozen=True)
class IngestConfig:
    """Where the corpus comes from and which records are kept."""

    source: Literal["debian", "debian-live", "file"] = "debian"
    path: str = ""
    format: Literal["auto", "csv", "jsonl", "parquet"] = "auto"
    delimiter: Literal["auto", ",", ";", "\t", "|"] = "auto"  # CSV only; auto: the one the header splits on
    text_column: str = "text"
    summary_column: str = "summary"
    group_column: str = ""
    min_text_words: int = 20
    max_text_words: int = 400
    min_summary_words: int = 2
    max_summary_words: int = 30
    group_words: int = 12
    max_group_key_records: int = 50
    split: SplitConfig = field(default_factory=SplitConfig)
    seed: int = 13
    max_records: int = 0  # 0: all; N: a seeded sample of N input records

    def validate(self, key: str) -> None:
        _check(
            self.max_records >= 0,
            f"{key}.max_records",
            f"expected an integer >= 0 (0 = all records), got {self.max_records}",
        )
        if self.source == "file":
            _check(
                bool(self.path),
                f"{key}.path",
                "required when ingest.source is 'file' (a CSV, JSONL or Parquet file)",
            )
        for name in ("min_text_words", "max_text_words", "min_summary_words", "max_summary_words"):
            _check(
                getattr(self, name) >= 1,
                f"{key}.{name}",
                f"expected an integer >= 1, got {getattr(self, name)}",
            )
        _check(
            self.min_text_words <= self.max_text_words,
            f"{key}.max_text_words",
            f"must be >= {key}.min_text_words ({self.min_text_words}), got {self.max_text_words}",
        )
        _check(
            self.min_summary_words <= self.max_summary_words,
            f"{key}.max_summary_words",
            f"must be >= {key}.min_summary_words ({self.min_summary_words}), got {self.max_summary_words}",
        )
        _check(
            self.group_words >= 3, f"{key}.group_words", f"expected an integer >= 3, got {self.group_words}"
        )
        _check(self.max_group_key_records >= 2, f"{key}.max_group_key_records", "expected an integer >= 2")
        _check(
            bool(self.text_column) and bool(self.summary_column),
            key,
            "text_column and summary_column must be set",
        )
        self.split.validate(f"{key}.split")


@dataclass(frozen=True)
class TokenizeConfig:
    # "auto": AUTO_VOCAB_SIZE pieces, or the most the train split allows if that is fewer (a small corpus).
    vocab_size: int | Literal["auto"] = "auto"
    model_type: Literal["unigram", "bpe"] = "unigram"
    character_coverage: float = 0.9995
    max_source_tokens: int = 80
    max_target_tokens: int = 16
    num_shards: int = 4
    input_sentence_size: int = 100000
    seed: int = 13
    num_threads: int = 2

    @property
    def max_vocab_size(self) -> int:
        """The pieces asked of sentencepiece: ``vocab_size``, or AUTO_VOCAB_SIZE for "auto"."""
        return AUTO_VOCAB_SIZE if self.vocab_size == "auto" else self.vocab_size

    def validate(self, key: str) -> None:
        _check(
            self.vocab_size == "auto" or 100 <= self.vocab_size <= 1_000_000,
            f"{key}.vocab_size",
            f"expected auto or 100..1000000, got {self.vocab_size}",
        )
        _check(0.9 <= self.character_coverage <= 1.0, f"{key}.character_coverage", "expected 0.9..1.0")
        _check(self.max_source_tokens >= 4, f"{key}.max_source_tokens", "expected an integer >= 4")
        _check(self.max_target_tokens >= 2, f"{key}.max_target_tokens", "expected an integer >= 2")
        _check(1 <= self.num_shards <= 1024, f"{key}.num_shards", f"expected 1..1024, got {self.num_shards}")
        _check(self.input_sentence_size >= 1000, f"{key}.input_sentence_size", "expected an integer >= 1000")
        _check(self.seed >= 0, f"{key}.seed", f"expected an integer >= 0, got {self.seed}")
        _check(1 <= self.num_threads <= 256, f"{key}.num_threads", f"expected 1..256, got {self.num_threads}")


@dataclass(frozen=True)
class HorovodConfig:
    """Horovod tuning knobs: ``distribution.init`` sets them as HOROVOD_* variables before ``hvd.init()``."""

    fusion_threshold_mb: int = 64
    # How often Horovod's background thread wakes to agree with the other ranks on what to reduce; each wake
    # is a small collective, whether or not a gradient is waiting. "auto": GPU_CYCLE_TIME_MS when the ranks
    # train on GPUs (Horovod's own default: short steps, idle CPUs), else CPU_CYCLE_TIME_MS (the thread shares
    # the cores the ranks compute on).
    cycle_time_ms: float | Literal["auto"] = "auto"
    fp16_allreduce: bool = False
    # One allreduce per gradient tensor instead of one grouped call: each can start as soon as the backward
    # pass has produced its tensor (Horovod's cycle fuses what is ready), not after the whole backward pass.
    overlap_allreduce: bool = False
    timeline: str = ""

    def validate(self, key: str) -> None:
        _check(self.fusion_threshold_mb >= 0, f"{key}.fusion_threshold_mb", "expected an integer >= 0")
        _check(
            self.cycle_time_ms == "auto" or self.cycle_time_ms > 0,
            f"{key}.cycle_time_ms",
            f"expected auto or a number > 0, got {self.cycle_time_ms!r}",
        )

    def cycle_time_for(self, gpus: bool) -> float:
        """Milliseconds per Horovod cycle: ``cycle_time_ms``, or for "auto" the value for GPU or CPU ranks."""
        if self.cycle_time_ms != "auto":
            return float(self.cycle_time_ms)
        return GPU_CYCLE_TIME_MS if gpus else CPU_CYCLE_TIME_MS


@dataclass(frozen=True)
class TrainConfig:
    workers: int = 2
    cell: Literal["gru", "lstm"] = "gru"
    encoder_layers: int = 1
    bidirectional: bool = True
    embedding_dim: int = 128
    units: int = 256
    attention: Literal["additive", "multiplicative"] = "additive"
    copy_attention: bool = True
    coverage_weight: float = 0.0
    dropout: float = 0.1
    precision: Literal["float32", "mixed_float16", "mixed_bfloat16"] = "float32"
    # examples: batch_size is examples per batch per worker. tokens: batch_size is a budget of padded source
    # tokens per batch per worker; batches hold examples of similar source length (buckets bucket_width wide)
    # and, within that, of similar target length (buckets target_bucket_width wide).
    batch_type: Literal["examples", "tokens"] = "examples"
    batch_size: int = 64
    bucket_width: int = 16  # tokens batches: source-length buckets of this many tokens
    target_bucket_width: int = 2  # tokens batches: target-length buckets (>= max_target_tokens: none)
    accumulate_steps: int = 1  # micro-batches whose gradients make one optimizer step
    epochs: int = 5
    learning_rate: float = 0.001
    warmup_steps: int = 200
    weight_decay: float = 0.0001
    clipnorm: float = 1.0
    label_smoothing: float = 0.0
    early_stopping_patience: int = 3
    lr_reduce_patience: int = 1
    lr_reduce_factor: float = 0.5
    min_learning_rate: float = 0.00001
    max_wall_minutes: float = 0.0  # an opt-in cap; 0: none
    checkpoint_every_minutes: float = 10.0
    seed: int = 42
    horovod: HorovodConfig = field(default_factory=HorovodConfig)

    def validate(self, key: str) -> None:
        positive_ints = (
            "workers", "encoder_layers", "embedding_dim", "units", "batch_size", "bucket_width",
            "target_bucket_width", "accumulate_steps", "epochs",
        )  # fmt: skip
        for name in positive_ints:
            _check(
                getattr(self, name) >= 1,
                f"{key}.{name}",
                f"expected an integer >= 1, got {getattr(self, name)}",
            )
        _check(
            self.coverage_weight >= 0,
            f"{key}.coverage_weight",
            "expected a number >= 0 (0 turns coverage off)",
        )
        _check(0.0 <= self.dropout < 1.0, f"{key}.dropout", f"expected 0 <= dropout < 1, got {self.dropout}")
        _check(self.learning_rate > 0, f"{key}.learning_rate", "expected a number > 0")
        _check(self.warmup_steps >= 0, f"{key}.warmup_steps", "expected an integer >= 0")
        _check(self.weight_decay >= 0, f"{key}.weight_decay", "expected a number >= 0")
        _check(self.clipnorm > 0, f"{key}.clipnorm", "expected a number > 0")
        _check(
            0.0 <= self.label_smoothing < 1.0, f"{key}.label_smoothing", "expected 0 <= label_smoothing < 1"
        )
        _check(
            self.early_stopping_patience >= 1, f"{key}.early_stopping_patience", "expected an integer >= 1"
        )
        _check(self.lr_reduce_patience >= 1, f"{key}.lr_reduce_patience", "expected an integer >= 1")
        _check(0.0 < self.lr_reduce_factor < 1.0, f"{key}.lr_reduce_factor", "expected 0 < factor < 1")
        _check(
            0 < self.min_learning_rate <= self.learning_rate,
            f"{key}.min_learning_rate",
            f"expected 0 < value <= {key}.learning_rate ({self.learning_rate}), got {self.min_learning_rate}",
        )
        _check(
            not (self.bidirectional and self.units % 2),
            f"{key}.units",
            f"must be even when {key}.bidirectional is true (units // 2 per direction), got {self.units}",
        )
        _check(
            self.checkpoint_every_minutes >= 0,
            f"{key}.checkpoint_every_minutes",
            f"expected minutes >= 0 (0 = only at epoch ends), got {self.checkpoint_every_minutes}",
        )
        _check(
            self.max_wall_minutes >= 0,
            f"{key}.max_wall_minutes",
            f"expected a number of minutes >= 0 (0 = no cap), got {self.max_wall_minutes}",
        )
        self.horovod.validate(f"{key}.horovod")


@dataclass(frozen=True)
class EvaluateConfig:
    search: Literal["greedy", "beam"] = "beam"
    beam_width: int = 4
    length_penalty: float = 0.6
    min_length: int = 2
    max_length: int = 16
    no_repeat_ngram_size: int = 3
    batch_size: int = 128
    lead_words: tuple[int, ...] = (6, 8, 10)
    num_logged_examples: int = 10

    def validate(self, key: str) -> None:
        _check(1 <= self.beam_width <= 64, f"{key}.beam_width", f"expected 1..64, got {self.beam_width}")
        _check(self.length_penalty >= 0, f"{key}.length_penalty", "expected a number >= 0")
        _check(
            self.min_length >= 1, f"{key}.min_length", "expected an integer >= 1 (a summary is never empty)"
        )
        _check(
            self.max_length >= self.min_length,
            f"{key}.max_length",
            f"must be >= {key}.min_length ({self.min_length}), got {self.max_length}",
        )
        _check(
            self.no_repeat_ngram_size >= 0,
            f"{key}.no_repeat_ngram_size",
            "expected an integer >= 0 (0 = off)",
        )
        _check(self.batch_size >= 1, f"{key}.batch_size", "expected an integer >= 1")
        _check(
            len(self.lead_words) >= 1 and all(n >= 1 for n in self.lead_words),
            f"{key}.lead_words",
            "expected a non-empty list of integers >= 1",
        )
        _check(self.num_logged_examples >= 0, f"{key}.num_logged_examples", "expected an integer >= 0")


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow settings. ``MLFLOW_TRACKING_URI`` in the environment overrides ``tracking_uri``."""

    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "summarizer"

    def validate(self, key: str) -> None:
        _check(bool(self.tracking_uri), f"{key}.tracking_uri", "must not be empty")
        _check(bool(self.experiment), f"{key}.experiment", "must not be empty")


@dataclass(frozen=True)
class RegistryConfig:
    """The MLflow Model Registry: the evaluate stage registers each evaluated model under ``model_name``."""

    enabled: bool = True
    model_name: str = "summarizer"

    def validate(self, key: str) -> None:
        _check(
            MODEL_NAME_PATTERN.fullmatch(self.model_name) is not None,
            f"{key}.model_name",
            "expected 1 to 100 letters, digits, '_', '.' or '-', starting with a letter or digit "
            f"(it goes into models:/<name>@champion URIs), got {self.model_name!r}",
        )


@dataclass(frozen=True)
class Params:
    ingest: IngestConfig = field(default_factory=IngestConfig)
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)

    def validate(self) -> None:
        for section in dataclasses.fields(self):
            getattr(self, section.name).validate(section.name)
        _check(
            self.train.batch_type != "tokens" or self.train.batch_size >= self.tokenize.max_source_tokens,
            "train.batch_size",
            "with train.batch_type tokens it is a budget of source tokens per batch and must hold one "
            "example of the longest source: expected >= tokenize.max_source_tokens "
            f"({self.tokenize.max_source_tokens}), got {self.train.batch_size}",
        )

    def to_nested_dict(self) -> dict[str, Any]:
        """The params as plain YAML-ready data (tuples as lists), e.g. to write a params file."""
        return _plain(dataclasses.asdict(self))

    def to_flat_dict(self) -> dict[str, Any]:
        """Every parameter under its dotted key (``train.horovod.fp16_allreduce``), for MLflow."""
        return flatten(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    return list(value) if isinstance(value, tuple) else value


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in mapping.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{key}."))
        else:
            flat[key] = list(value) if isinstance(value, tuple) else value
    return flat


def _choice_name(choice: Any) -> str:
    """A choice as users write it: bare words bare, punctuation and whitespace quoted (``';'``, ``'\\t'``)."""
    return str(choice) if re.fullmatch(r"[\w.-]+", str(choice)) else repr(choice)


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(member) for member in typing.get_args(annotation))
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    if typing.get_origin(annotation) is Literal and len(typing.get_args(annotation)) == 1:
        return repr(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) is Literal:
        return "one of " + ", ".join(_choice_name(choice) for choice in typing.get_args(annotation))
    return getattr(annotation, "__name__", str(annotation))


def _convert(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a field annotation and return it in the field's type."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):  # the first member that takes the value
        for member in typing.get_args(annotation):
            try:
                return _convert(value, member, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(annotation)}, got {value!r}")
    if dataclasses.is_dataclass(annotation):
        _check(
            isinstance(value, Mapping),
            key,
            f"expected a mapping of {annotation.__name__} keys, got {value!r}",
        )
        return _build(annotation, value, key)
    if origin is Literal:
        choices = typing.get_args(annotation)
        _check(value in choices, key, f"expected {_type_name(annotation)}, got {value!r}")
        return value
    if origin is tuple:
        item_type = typing.get_args(annotation)[0]
        _check(isinstance(value, list | tuple), key, f"expected a list, got {value!r}")
        return tuple(_convert(item, item_type, f"{key}[{index}]") for index, item in enumerate(value))
    if annotation is bool:
        _check(isinstance(value, bool), key, f"expected true or false, got {value!r}")
        return value
    if annotation is int:
        _check(
            isinstance(value, int) and not isinstance(value, bool), key, f"expected an integer, got {value!r}"
        )
        return value
    if annotation is float:
        _check(
            isinstance(value, int | float) and not isinstance(value, bool),
            key,
            f"expected a number, got {value!r}",
        )
        return float(value)
    if annotation is str:
        _check(isinstance(value, str) or value is None, key, f"expected a string, got {value!r}")
        return value or ""
    raise TypeError(
        f"unsupported annotation {annotation!r} for {key}"
    )  # a bug in this module, not user input


def _build(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for name in values:
        _check(
            name in known,
            f"{prefix}.{name}" if prefix else str(name),
            f"unknown key; allowed keys are {', '.join(sorted(known))}",
        )
    kwargs = {
        name: _convert(value, hints[name], f"{prefix}.{name}" if prefix else name)
        for name, value in values.items()
    }
    return cls(**kwargs)


def params_from_dict(values: Mapping[str, Any] | None) -> Params:
    """Build and validate :class:`Params` from a parsed YAML mapping (missing keys take defaults)."""
    params = _build(Params, values or {}, "")
    params.validate()
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read, type-check and validate a params file.

    Raises:
        ConfigError: the file is missing or malformed, or a key is unknown, mistyped or out of range.
    """
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as handle:
            values = yaml.safe_load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if values is not None and not isinstance(values, Mapping):
        raise ConfigError(
            f"{path}: expected a mapping of sections (ingest, tokenize, ...), got {type(values).__name__}"
        )
    try:
        return params_from_dict(values)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


__all__ = [
    "AUTO_VOCAB_SIZE",
    "CPU_CYCLE_TIME_MS",
    "GPU_CYCLE_TIME_MS",
    "ConfigError",
    "EvaluateConfig",
    "HorovodConfig",
    "IngestConfig",
    "Params",
    "RegistryConfig",
    "SplitConfig",
    "TokenizeConfig",
    "TrackingConfig",
    "TrainConfig",
    "flatten",
    "load_params",
    "params_from_dict",
]
