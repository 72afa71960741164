"""The MLflow Model Registry contract: the registered model, its aliases, its version tags and the blessing.

The evaluate stage registers the run's pyfunc model (:mod:`summarizer.pyfunc`) as a new version of the
registered model ``registry.model_name`` (params.yaml, default ``summarizer``), tagged with
:data:`VERSION_TAGS`. The alias :data:`CHAMPION` moves to the new version only when its test ROUGE-L beats the
best lead baseline **and** the current champion's ROUGE-L measured on the same test split with the same
decoding settings. When the champion was measured on another split (its ``test_split_sha256`` tag differs) or
with other settings, it is first re-scored on this split (its model directory downloaded from the registry,
decoded by the caller's ``rescore``); if that fails, the two are not compared and the new version is only a
:data:`CHALLENGER`, the reason saying why. A first version with no champion becomes champion if it beats the
lead. Ties do not move the alias.

The decision is a :class:`Decision`: ``metrics.json`` holds it under :data:`REGISTRY_KEY` as
``{"model": str, "version": int | null, "alias": "champion" | "challenger" | null, "reason": str}``
(``version`` and ``alias`` are null when nothing was registered: registry disabled, or the tracking store
unreachable), the run gets the :data:`RUN_TAG_PREFIX` tags, and the stage prints :meth:`Decision.line`.

MLflow pitfalls this module works around (MLflow 3.17): a ``models:/<model_id>`` source makes the sqlite
registry store look the logged model up through a *default* ``MlflowClient()`` (the global tracking URI, not
this client's), so versions are created from the logged model's artifact location with ``model_id`` and
``run_id`` given; ``models:/`` downloads resolve the registry through the global URI too, which
:func:`summarizer.pyfunc.download_model_directory` (the owner of the pyfunc model's layout) sets meanwhile.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import LoggedModel
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from summarizer import pyfunc
from summarizer.config import RegistryConfig

REGISTRY_KEY = "registry"  # metrics.json key of the decision
CHAMPION = "champion"
CHALLENGER = "challenger"
RUN_TAG_PREFIX = "summarizer.registry."  # run tags: .model, .version, .alias, .reason
# Version tags: the figures the decision compares, and where they come from.
TAG_ROUGE1, TAG_ROUGE2, TAG_ROUGE_L = "test_rouge1", "test_rouge2", "test_rougeL"
TAG_PERPLEXITY, TAG_LEAD_ROUGE_L, TAG_LEAD_WORDS = "test_perplexity", "test_lead_rougeL", "test_lead_words"
TAG_SPLIT, TAG_DECODING, TAG_COMMIT = "test_split_sha256", "decoding", "git_commit"
TAG_REASON = "registry_reason"
VERSION_TAGS = (
    TAG_ROUGE1,
    TAG_ROUGE2,
    TAG_ROUGE_L,
    TAG_PERPLEXITY,
    TAG_LEAD_ROUGE_L,
    TAG_LEAD_WORDS,
    TAG_SPLIT,
    TAG_DECODING,
    TAG_COMMIT,
)
RESCORE_ERRORS = (MlflowException, OSError, ValueError, KeyError)
NOT_DECODING = ("lead_words", "num_logged_examples")  # evaluate.* keys that leave the summaries alone

Rescorer = Callable[[Path], float]  # a model directory -> its test ROUGE-L (percent) on this split


class RegistryError(RuntimeError):
    """The run has no logged pyfunc model to register."""


def split_sha256(path: str | Path) -> str:
    """The sha256 of a split file's bytes (DVC keeps an md5 in dvc.lock, written only after the stage)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def decoding_key(decoding: Mapping[str, Any]) -> str:
    """The settings that change the model's summaries (``evaluate.*`` but the lead and the logging) as one
    canonical JSON string (tuples as lists), to compare and to tag."""
    settings = {key: _plain(value) for key, value in decoding.items() if key not in NOT_DECODING}
    return json.dumps(settings, sort_keys=True)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """What the registry records of one evaluation: percent figures, the split and the decoding settings."""

    rouge1: float
    rouge2: float
    rouge_l: float
    perplexity: float
    lead_rouge_l: float
    lead_words: int
    split_sha256: str
    decoding: str  # decoding_key(...)
    git_commit: str | None = None

    @classmethod
    def from_metrics(
        cls, values: Mapping[str, Any], split_hash: str, decoding: Mapping[str, Any], git_commit: str | None
    ) -> Evaluation:
        """From the evaluate stage's metrics.json values (see :mod:`summarizer.evaluation`)."""
        lead = values["lead"]
        return cls(
            float(values["rouge1"]),
            float(values["rouge2"]),
            float(values["rougeL"]),
            float(values["test_perplexity"]),
            float(lead["rougeL"]),
            int(lead["best_words"]),
            split_hash,
            decoding_key(decoding),
            git_commit,
        )

    def version_tags(self) -> dict[str, str]:
        return {
            TAG_ROUGE1: f"{self.rouge1:.2f}",
            TAG_ROUGE2: f"{self.rouge2:.2f}",
            TAG_ROUGE_L: f"{self.rouge_l:.2f}",
            TAG_PERPLEXITY: f"{self.perplexity:.4f}",
            TAG_LEAD_ROUGE_L: f"{self.lead_rouge_l:.2f}",
            TAG_LEAD_WORDS: str(self.lead_words),
            TAG_SPLIT: self.split_sha256,
            TAG_DECODING: self.decoding,
            TAG_COMMIT: self.git_commit or "unknown",
        }


@dataclasses.dataclass(frozen=True)
class Decision:
    """Where the evaluated model went: version ``version`` of ``model`` got ``alias``, for ``reason``."""

    model: str
    version: int | None
    alias: str | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        """The ``metrics.json`` value under :data:`REGISTRY_KEY` (keep this shape: other readers use it)."""
        return {"model": self.model, "version": self.version, "alias": self.alias, "reason": self.reason}

    def run_tags(self) -> dict[str, str]:
        values = {"model": self.model, "version": self.version, "alias": self.alias, "reason": self.reason}
        return {
            f"{RUN_TAG_PREFIX}{key}": "" if value is None else str(value) for key, value in values.items()
        }

    def line(self) -> str:
        """One line a person reads at the end of the stage."""
        if self.version is None:
            return f"registry: {self.model}: not registered: {self.reason}"
        where = f"is {self.alias}" if self.alias else "has no alias"
        uri = f"models:/{self.model}/{self.version}"
        return f"registry: {self.model} version {self.version} {where} ({uri}): {self.reason}"


def decision_line(value: Mapping[str, Any]) -> str:
    """:meth:`Decision.line` of a ``metrics.json`` registry value."""
    return Decision(value["model"], value["version"], value["alias"], value["reason"]).line()


def not_registered(config: RegistryConfig, reason: str) -> Decision:
    return Decision(config.model_name, None, None, reason)


def _logged_pyfunc(client: MlflowClient, run_id: str, name: str) -> LoggedModel:
    """The newest pyfunc model named ``name`` logged into the run (evaluate may have run twice on it)."""
    experiment_id = client.get_run(run_id).info.experiment_id
    models = client.search_logged_models(
        [experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{name}'",
        order_by=[{"field_name": "creation_timestamp", "ascending": False}],
        max_results=1,
    )
    if not models:
        raise RegistryError(f"MLflow run {run_id} has no logged model named {name!r} to register")
    return models[0]


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.create_registered_model(name, description="Seq2seq summarizer (see the project README).")
    except MlflowException as error:
        if error.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise


def current_champion(client: MlflowClient, name: str) -> ModelVersion | None:
    """The version the alias :data:`CHAMPION` points to, or None (no such alias or registered model)."""
    aliases = client.get_registered_model(name).aliases
    if CHAMPION not in aliases:
        return None
    return client.get_model_version(name, str(aliases[CHAMPION]))


def _champion_score(
    client: MlflowClient, name: str, champion: ModelVersion, evaluation: Evaluation, rescore: Rescorer
) -> tuple[float | None, str]:
    """The champion's ROUGE-L on this split with these settings, and how it was obtained (or why not)."""
    tags = champion.tags
    same_split = tags.get(TAG_SPLIT) == evaluation.split_sha256
    same_decoding = tags.get(TAG_DECODING) == evaluation.decoding
    if same_split and same_decoding and TAG_ROUGE_L in tags:
        return float(tags[TAG_ROUGE_L]), "on the same test split"
    old_split = (tags.get(TAG_SPLIT) or "unknown")[:12]
    before = f"on split sha256 {old_split}…" if not same_split else "with other decoding settings"
    try:
        with tempfile.TemporaryDirectory(prefix="summarizer-champion-") as directory:
            uri = f"models:/{name}/{champion.version}"
            score = rescore(pyfunc.download_model_directory(uri, client.tracking_uri, directory)[0])
    except RESCORE_ERRORS as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        return None, (
            f"champion version {champion.version} was measured {before} (this split: sha256 "
            f"{evaluation.split_sha256[:12]}…) and could not be re-scored here ({type(error).__name__}: "
            f"{first_line}); not compared"
        )
    return round(score, 2), f"re-scored on this test split with these settings; measured before {before}"


def decide(
    client: MlflowClient,
    name: str,
    evaluation: Evaluation,
    champion: ModelVersion | None,
    rescore: Rescorer,
) -> tuple[str, str]:
    """The alias for a new version with ``evaluation`` and the reason (see the module docstring)."""
    model, lead = evaluation.rouge_l, evaluation.lead_rouge_l
    versus_lead = f"test ROUGE-L {model:.2f} vs best lead (first {evaluation.lead_words} words) {lead:.2f}"
    if model <= lead:
        return CHALLENGER, f"{versus_lead}: does not beat the lead"
    if champion is None:
        return CHAMPION, f"{versus_lead}; no champion yet"
    score, how = _champion_score(client, name, champion, evaluation, rescore)
    if score is None:
        return CHALLENGER, f"{versus_lead}; {how}: move the alias by hand if it should be champion"
    versus_champion = f"champion version {champion.version} {score:.2f} ({how})"
    if model > score:
        return CHAMPION, f"{versus_lead}; beats {versus_champion}"
    return CHALLENGER, f"{versus_lead}; does not beat {versus_champion}"


def register(
    tracking_uri: str, config: RegistryConfig, run_id: str, evaluation: Evaluation, rescore: Rescorer
) -> Decision:
    """Register the run's pyfunc model as a new tagged version, then alias it champion or challenger.

    Args:
        tracking_uri: the store the run is in (also its registry).
        rescore: scores a champion's model directory on this test split with this run's decoding settings,
            called only when the champion was measured on another split or with other settings.

    Raises:
        RegistryError: the run has no logged pyfunc model. MlflowException and store errors: as MLflow raises
            them (the caller tells an outage from a bug).
    """
    from summarizer.pyfunc import PYFUNC_NAME  # TensorFlow and the model code, only when registering

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    logged = _logged_pyfunc(client, run_id, PYFUNC_NAME)
    _ensure_registered_model(client, config.model_name)
    champion = current_champion(client, config.model_name)
    version = client.create_model_version(
        config.model_name,
        source=logged.artifact_location,  # not models:/<id>: see the module docstring
        run_id=run_id,
        tags=evaluation.version_tags(),
        model_id=logged.model_id,
    )
    alias, reason = decide(client, config.model_name, evaluation, champion, rescore)
    client.set_registered_model_alias(config.model_name, alias, version.version)
    client.set_model_version_tag(config.model_name, version.version, TAG_REASON, reason)
    return Decision(config.model_name, int(version.version), alias, reason)


__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "REGISTRY_KEY",
    "RUN_TAG_PREFIX",
    "VERSION_TAGS",
    "Decision",
    "Evaluation",
    "RegistryError",
    "Rescorer",
    "current_champion",
    "decide",
    "decision_line",
    "decoding_key",
    "not_registered",
    "register",
    "split_sha256",
]
