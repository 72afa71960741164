"""Helpers several test modules share: tiny ingested splits, a tiny model directory, a tiny trainer, a run.

Test modules import from here (or from conftest), never from each other.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import lzma
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import keras
import tensorflow as tf

from summarizer import debian
from summarizer.config import TokenizeConfig, TrainConfig
from summarizer.distribution import LocalDistribution
from summarizer.io import jsonl_text
from summarizer.model import build_model
from summarizer.model_directory import ModelSettings, RunInfo, write_model_directory
from summarizer.records import tokenize_splits
from summarizer.tokenization import Tokenizer
from summarizer.tracking import RunTracker
from summarizer.training import Trainer
from tests.conftest import make_pairs

TOKENIZE = TokenizeConfig(
    vocab_size=150, max_source_tokens=40, max_target_tokens=10, num_shards=2, input_sentence_size=1000
)
TRAIN = TrainConfig(units=16, embedding_dim=16, dropout=0.0, seed=7)
GREEDY = {"search": "greedy", "max_length": 10, "min_length": 1, "no_repeat_ngram_size": 0, "batch_size": 4}
SPLIT_SIZES = {"train": 120, "val": 8, "test": 10}
RECORDS_TRAIN_EXAMPLES = 160


def write_ingested_split(path: Path, pairs: Sequence[tuple[str, str]]) -> Path:
    """An ingested split: one {"id", "text", "summary", "group"} object a line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    records = (
        {"id": f"{path.stem}-{index}", "text": text, "summary": summary, "group": f"g{index}"}
        for index, (text, summary) in enumerate(pairs)
    )
    path.write_text(jsonl_text(records), encoding="utf-8")
    return path


def write_ingested(directory: Path) -> Path:
    """Three ingested splits of 160 / 30 / 30 synthetic pairs."""
    pairs = make_pairs(220)
    write_ingested_split(directory / "train.jsonl", pairs[:RECORDS_TRAIN_EXAMPLES])
    write_ingested_split(directory / "val.jsonl", pairs[RECORDS_TRAIN_EXAMPLES:190])
    write_ingested_split(directory / "test.jsonl", pairs[190:])
    return directory


@dataclasses.dataclass(frozen=True)
class TinyModel:
    model_dir: Path
    data_dir: Path  # tokenized: spm.model and {split}-NNNNN-of-00002.tfrecord
    ingested_dir: Path  # {train,val,test}.jsonl

    def test_pairs(self) -> list[tuple[str, str]]:
        lines = (self.ingested_dir / "test.jsonl").read_text(encoding="utf-8").splitlines()
        return [(record["text"], record["summary"]) for record in map(json.loads, lines)]


def build_model_directory(root: Path, run: dict | None = None) -> TinyModel:
    """Ingested splits, tokenized shards and a seeded untrained model directory under ``root``.

    Written the way the pipeline does: the real tokenize stage code, ``build_model`` and
    ``model_directory.write_model_directory``. The model is untrained: tests compare decoding paths.
    """
    ingested, tokenized = root / "ingested", root / "tokenized"
    ingested.mkdir(parents=True)
    tokenized.mkdir()
    for seed, (split, count) in enumerate(SPLIT_SIZES.items()):
        write_ingested_split(ingested / f"{split}.jsonl", make_pairs(count, seed=seed))
    tokenize_splits(ingested, tokenized, TOKENIZE)
    keras.utils.set_random_seed(TRAIN.seed)
    model = build_model(TRAIN, Tokenizer.load(tokenized / "spm.model").vocab_size)
    run = run or {"run_id": "0" * 32, "experiment": "summarizer", "tracking_uri": "sqlite:///unused.db"}
    settings = ModelSettings(TOKENIZE.max_source_tokens, TOKENIZE.max_target_tokens)
    write_model_directory(root / "model", model, tokenized / "spm.model", settings, RunInfo(**run))
    return TinyModel(root / "model", tokenized, ingested)


def tiny_trainer(config: TrainConfig) -> Trainer:
    """A built one-process trainer over a 30-id vocabulary."""
    keras.mixed_precision.set_dtype_policy(config.precision)
    trainer = Trainer(build_model(config, 30), config, LocalDistribution())
    trainer.build()
    return trainer


def tiny_batch() -> dict[str, tf.Tensor]:
    return {
        "source_ids": tf.constant([[5, 6, 7, 8], [9, 10, 0, 0]]),
        "target_in": tf.constant([[2, 6, 8], [2, 10, 0]]),
        "target_out": tf.constant([[6, 8, 3], [10, 3, 0]]),
    }


def training_run(uri: str) -> str:
    """A run like the train stage leaves it: created, given params, ended FINISHED."""
    tracker = RunTracker(uri)
    run_id = tracker.start("summarizer", "gru-float32-1w")
    tracker.log_params({"train.cell": "gru"})
    tracker.log_metrics({"val_loss": 4.0}, step=1)
    tracker.end("FINISHED")
    return run_id


class LoopbackMlflowServer:
    """A real ``mlflow server`` on 127.0.0.1 over a sqlite file, that a test can stop and start again."""

    def __init__(self, directory: Path) -> None:
        from tests.multihost.hosts import free_port

        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.port = free_port("127.0.0.1")
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> None:
        from tests.multihost.hosts import server_healthy

        command = [
            str(Path(sys.executable).parent / "mlflow"), "server",
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{self.directory / 'mlflow.db'}",
            "--artifacts-destination", str(self.directory / "artifacts"),
        ]  # fmt: skip
        log = (self.directory / "server.log").open("a", encoding="utf-8")
        self.process = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not server_healthy(self.uri):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"mlflow server did not start:\n{(self.directory / 'server.log').read_text()}"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGKILL the server and its workers: it is gone, as after a crash or a lost node."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)
        self.process = None


def write_pinned(directory: Path, text: str, **manifest_overrides: object) -> Path:
    """A pinned Debian snapshot of ``text`` as ``debian.pin_snapshot`` writes it: xz file and manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    compressed = lzma.compress(text.encode())
    (directory / debian.PINNED_FILE).write_bytes(compressed)
    manifest = {
        "file": debian.PINNED_FILE,
        "xz_sha256": hashlib.sha256(compressed).hexdigest(),
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "bytes": len(text.encode()),
        "fetched_at": "2026-11-30T03:07:08+00:00",
        "suites": ["bookworm"],
        "apt_index_files": ["deb.debian.org_debian_dists_bookworm_main_i18n_Translation-en.lz4"],
        "apt_releases": {"deb.debian.org_debian_dists_bookworm_InRelease": "Sat, 11 Jul 2026 10:16:37 UTC"},
        **manifest_overrides,
    }
    (directory / debian.MANIFEST_FILE).write_text(json.dumps(manifest), encoding="utf-8")
    return directory


def shell_assignments(path: Path) -> dict[str, str]:
    """Top-level ``NAME=value`` lines of a shell script."""
    return dict(re.findall(r"^([A-Z_]+)=(\S+)$", path.read_text(encoding="utf-8"), flags=re.MULTILINE))


@dataclasses.dataclass(frozen=True)
class RegisteredModel:
    """A tiny pyfunc model logged (from code) into a run of ``uri`` and registered with an alias."""

    uri: str  # the sqlite tracking and registry store
    run_id: str
    model_id: str
    name: str
    version: str


def register_tiny_model(
    uri: str, model_dir: Path, decoding: dict, name: str = "summarizer", alias: str = "champion"
) -> RegisteredModel:
    """Log ``model_dir`` as the pyfunc model in a new FINISHED run, register it as ``name`` with ``alias``."""
    import mlflow

    from summarizer.pyfunc import log_pyfunc_model_info

    tracker = RunTracker(uri)
    run_id = tracker.start("summarizer", "registry-test")
    info = log_pyfunc_model_info(tracker, model_dir, decoding, example_texts=["a tool for mail"])
    tracker.end("FINISHED")
    previous_uri = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)  # register_model resolves runs:/ through the global URI
    try:
        version = str(mlflow.register_model(f"runs:/{run_id}/summarizer", name).version)
    finally:
        mlflow.set_tracking_uri(previous_uri)
    mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).set_registered_model_alias(name, alias, version)
    return RegisteredModel(uri, run_id, info.model_id, name, version)
