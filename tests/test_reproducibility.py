"""make_deterministic: seeds and op determinism, checked in fresh processes (the switch is per process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO_ROOT

# Seeds, then draws from every generator the product uses, a few steps of a tiny model, and the flag.
PROBE = """
import hashlib, json, random, sys
import keras, numpy as np, tensorflow as tf
from summarizer.reproducibility import is_deterministic, make_deterministic
before = is_deterministic()
make_deterministic(int(sys.argv[1]))
layers = [keras.layers.Dense(16, activation="tanh"), keras.layers.Dropout(0.5), keras.layers.Dense(1)]
model = keras.Sequential([keras.Input((8,)), *layers])
model.compile(optimizer="adam", loss="mse")
features = np.random.normal(size=(64, 8)).astype("float32")
model.fit(features, features.sum(axis=1), epochs=2, batch_size=16, verbose=0)
weights = hashlib.sha256(b"".join(w.tobytes() for w in model.get_weights())).hexdigest()
print(json.dumps({
    "before": before, "after": is_deterministic(), "python": random.random(),
    "generator": tf.random.get_global_generator().normal([3]).numpy().tolist(), "weights": weights,
}))
"""


def probe(seed: int) -> dict:
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(seed)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_make_deterministic_turns_op_determinism_on_and_seeds_every_generator() -> None:
    first, second, other = probe(42), probe(42), probe(43)

    assert (first["before"], first["after"]) == (False, True)
    assert first == second  # dropout, initializers, shuffling and the global tf.random.Generator
    for key in ("python", "generator", "weights"):
        assert first[key] != other[key], key
