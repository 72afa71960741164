"""Resume checkpoints of the train stage: where they live, and writing and reading them atomically.

``dvc repro`` deletes a stage's declared outs before running it, so checkpoints live outside them, under
``<root>/.checkpoints/``, in a directory keyed by a hash of the train and tracking params and of the input
data: a run resumes only from a checkpoint of the same settings and data. Only rank 0 writes them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from summarizer.config import Params
from summarizer.io import atomic_directory, write_json

STATE_FILE = "state.json"


def data_fingerprint(data_dir: str | Path) -> str:
    """sha256 over the relative names and contents of every file under ``data_dir``."""
    digest = hashlib.sha256()
    root = Path(data_dir)
    for path in sorted(path for path in root.rglob("*") if path.is_file()):
        digest.update(path.relative_to(root).as_posix().encode("utf-8") + b"\0")
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def checkpoint_directory(root: str | Path, params: Params, data_dir: str | Path) -> Path:
    """``<root>/.checkpoints/train-<hash of train + tracking params and the input data>``.

    The last checkpoint (with the best weights so far) is the only one kept: the directory is replaced.
    """
    train = dataclasses.asdict(params.train)
    train.pop("checkpoint_every_minutes")  # how often to checkpoint does not change what is trained
    settings = json.dumps({"train": train, "tracking": dataclasses.asdict(params.tracking)}, sort_keys=True)
    digest = hashlib.sha256(settings.encode("utf-8") + data_fingerprint(data_dir).encode("ascii")).hexdigest()
    return Path(root) / ".checkpoints" / f"train-{digest[:20]}"


def _random_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "tensorflow": tf.random.get_global_generator().state.numpy(),
    }


def _restore_random_state(saved: dict[str, Any]) -> None:
    random.setstate(saved["python"])
    np.random.set_state(saved["numpy"])
    tf.random.get_global_generator().reset(saved["tensorflow"])


def save_checkpoint(
    path: Path, variables: Sequence[Any], state: dict[str, Any], best_weights: Sequence[np.ndarray]
) -> None:
    """Write the variables, best weights, loop state and RNG state atomically (temp dir + rename).

    Args:
        variables: every model and optimizer variable, in a fixed order.
        state: the training loop's state as JSON-ready data.
    """
    with atomic_directory(path) as temporary:
        np.savez(temporary / "variables.npz", *[np.asarray(variable) for variable in variables])
        np.savez(temporary / "best.npz", *best_weights)
        with (temporary / "random.pkl").open("wb") as handle:
            pickle.dump(_random_state(), handle)
        write_json(temporary / STATE_FILE, state)


def read_state(path: Path) -> dict[str, Any]:
    """The loop state saved in the checkpoint at ``path`` (without loading any weights)."""
    return json.loads((path / STATE_FILE).read_text(encoding="utf-8"))


def load_checkpoint(path: Path, variables: Sequence[Any]) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Assign the saved values to ``variables`` and restore the RNG state; return loop state, best weights.

    Raises:
        ValueError: the checkpoint holds another number of variables (the message says what to delete).
    """
    with np.load(path / "variables.npz") as arrays:
        values = [arrays[f"arr_{index}"] for index in range(len(arrays.files))]
    if len(values) != len(variables):
        raise ValueError(
            f"{path}: checkpoint holds {len(values)} variables, the model has {len(variables)};"
            f" delete {path} to start afresh"
        )
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value)
    with np.load(path / "best.npz") as arrays:
        best_weights = [arrays[f"arr_{index}"] for index in range(len(arrays.files))]
    with (path / "random.pkl").open("rb") as handle:
        _restore_random_state(pickle.load(handle))
    return read_state(path), best_weights


__all__ = ["checkpoint_directory", "data_fingerprint", "load_checkpoint", "read_state", "save_checkpoint"]
