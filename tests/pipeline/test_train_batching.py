"""Token batches and gradient accumulation in the train stage, under the real ``horovodrun -np 2``.

The two ranks' train shards batch unevenly (short sources and targets on rank 0, long ones on rank 1, so
different numbers of token batches and of target tokens per batch): both must still run the same number of
optimizer steps (else the next allreduce waits forever), end with identical weights, and a run interrupted
inside an epoch must resume on an optimizer step with the batches, and end with the weights, of an
uninterrupted run.
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from summarizer import records, runner
from tests.workers.launch import (
    CHECKPOINT_LINE,
    EVERY_STEP,
    Watched,
    check,
    horovod_environment,
    horovodrun,
    horovodrun_command,
    train_command,
)
from tests.workers.tiny_data import TOKENIZE, tiny_train_params, write_params, write_tokenized

pytestmark = pytest.mark.slow

EPOCHS = 2
ACCUMULATE = 2
BUDGET = 80  # source tokens per micro-batch: 2 examples of the longest sources (40), 5 of 16
BUCKET_WIDTH = 8
TARGET_BUCKET_WIDTH = 2
SHORT_SOURCE = 12  # rank 0's sources are cut to this many tokens
SHORT_TARGET = 3  # and its targets to this many (batches are bounded by target tokens too)


def write_run_params(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    values = tiny_train_params(
        epochs=EPOCHS,
        batch_type="tokens",
        batch_size=BUDGET,
        bucket_width=BUCKET_WIDTH,
        target_bucket_width=TARGET_BUCKET_WIDTH,
        accumulate_steps=ACCUMULATE,
        checkpoint_every_minutes=0.00001,
    )
    write_params(directory / "params.yaml", values, f"sqlite:///{directory / 'mlflow.db'}")


def rank_weights(directory: Path, rank: int) -> list[np.ndarray]:
    with np.load(directory / "weights" / f"weights-rank{rank}.npz") as arrays:
        return [arrays[f"arr_{index}"] for index in range(len(arrays.files))]


def assert_same_weights(first: list[np.ndarray], second: list[np.ndarray]) -> None:
    assert len(first) == len(second) > 10
    for left, right in zip(first, second, strict=True):
        np.testing.assert_array_equal(left, right)


def shard_examples(path: str) -> list[tuple[list[int], list[int]]]:
    examples = []
    for serialized in tf.data.TFRecordDataset(path):
        parsed = tf.io.parse_single_example(serialized, records.FEATURES)
        examples.append(
            tuple(tf.sparse.to_dense(parsed[name]).numpy().tolist() for name in ("source_ids", "target_ids"))
        )
    return examples


def expected_steps(files: list[str]) -> tuple[int, list[int]]:
    """Optimizer steps per epoch, and each rank's full token batches (rank r reads shard r)."""
    buckets = records.token_buckets(
        BUDGET, TOKENIZE.max_source_tokens, BUCKET_WIDTH, TOKENIZE.max_target_tokens, TARGET_BUCKET_WIDTH
    )
    batches = [records.full_batches(records.example_lengths([path]), buckets) for path in files]
    return min(batches) // ACCUMULATE, batches


@pytest.fixture(scope="module")
def uneven(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny tokenized data; train shard 0 rewritten with sources cut to SHORT_SOURCE tokens and targets to
    SHORT_TARGET (as the tokenize stage cuts them)."""
    data_dir = write_tokenized(tmp_path_factory.mktemp("data"))
    first = records.list_shards(data_dir, "train")[0]
    examples = shard_examples(first)
    with tf.io.TFRecordWriter(first) as writer:
        for source_ids, target_ids in examples:
            writer.write(records.make_example(source_ids[:SHORT_SOURCE], target_ids[:SHORT_TARGET]))
    return data_dir


@pytest.fixture(scope="module")
def uninterrupted(uneven: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run without faults; its directory (dumped weights in ``weights/``, the output in ``output.txt``)."""
    directory = tmp_path_factory.mktemp("uninterrupted")
    write_run_params(directory)
    dump = {runner.DUMP_WEIGHTS_VARIABLE: str(directory / "weights"), **EVERY_STEP}
    result = check(horovodrun(train_command(directory, uneven), cwd=directory, environment=dump))
    (directory / "output.txt").write_text(result.stdout + result.stderr, encoding="utf-8")
    return directory


def test_uneven_token_batches_run_the_same_steps_on_both_ranks_and_end_identical(
    uneven: Path, uninterrupted: Path
) -> None:
    steps, batches = expected_steps(records.list_shards(uneven, "train"))
    assert batches[0] != batches[1] and steps >= 4  # the ranks could not agree by themselves
    output = (uninterrupted / "output.txt").read_text(encoding="utf-8")
    assert {int(total) for _, total in re.findall(r"checkpoint: epoch \d+ step (\d+)/(\d+)", output)} == {
        steps
    }
    assert_same_weights(rank_weights(uninterrupted, 0), rank_weights(uninterrupted, 1))
    metrics = json.loads((uninterrupted / "metrics/train.json").read_text(encoding="utf-8"))
    assert (metrics["epochs"], metrics["workers"], metrics["stopped_by"]) == (EPOCHS, 2, "epochs")


def test_an_interrupted_epoch_resumes_on_an_optimizer_step_with_the_uninterrupted_weights(
    uneven: Path, uninterrupted: Path, tmp_path: Path
) -> None:
    write_run_params(tmp_path)
    job = Watched(
        horovodrun_command(train_command(tmp_path, uneven)), tmp_path, horovod_environment(EVERY_STEP)
    )
    job.wait_for(CHECKPOINT_LINE)
    job.process.send_signal(signal.SIGTERM)
    assert job.finish(timeout=60) != 0, job.output
    (checkpoint,) = (tmp_path / ".checkpoints").glob("train-*")
    state = json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))
    steps, _ = expected_steps(records.list_shards(uneven, "train"))
    assert state["epoch"] == 1 and 0 < state["epoch_step"] < steps
    assert state["step"] == steps + state["epoch_step"]  # optimizer steps, not micro-batches
    assert len(state["epoch_partials"]) == 2 and all(
        partial["examples"] > 0 for partial in state["epoch_partials"]
    )

    dump = {runner.DUMP_WEIGHTS_VARIABLE: str(tmp_path / "weights"), **EVERY_STEP}
    resumed = check(horovodrun(train_command(tmp_path, uneven), cwd=tmp_path, environment=dump))
    assert f"at step {state['epoch_step']} of epoch 2" in resumed.stdout
    assert_same_weights(rank_weights(tmp_path, 0), rank_weights(uninterrupted, 0))
    assert_same_weights(rank_weights(tmp_path, 1), rank_weights(uninterrupted, 0))
    history = (tmp_path / "plots/train_history.csv").read_text(encoding="utf-8")
    assert history == (uninterrupted / "plots/train_history.csv").read_text(encoding="utf-8")
