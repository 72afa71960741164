"""The serving round trip: ``POST /invocations`` to a real ``mlflow models serve`` of a model directory.

The model directory (``models/summarizer`` by default, ``--model-dir``) is saved as the pyfunc model
(:func:`summarizer.pyfunc.save_pyfunc_model`, models-from-code, as the evaluate stage logs it) into a
temporary directory and served with ``--env-manager local`` on a free loopback port. Latency is timed on the
client, from the request to the decoded JSON answer, for one text and for a batch of 64 texts, after one
warm-up request of each size (the first request traces the decoding ``tf.function``).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from summarizer.ingested import read_pairs
from tests.workers.serve import ModelServer

BATCH_SIZE = 64
# Used when the model directory has no test split beside it: Debian-description-like texts.
FALLBACK_TEXTS = (
    "GNU Emacs is the extensible self-documenting text editor. This package contains the binaries and the "
    "support files, including the Lisp libraries, documentation and examples.",
    "A library for parsing and writing JSON documents, with a streaming interface for large inputs and a "
    "tree interface for small ones. This package contains the development headers.",
    "Command-line utility to copy files between hosts over a secure channel, resuming interrupted transfers "
    "and checking integrity with checksums.",
)


def benchmark_texts(test_split: Path | None, count: int) -> list[str]:
    """``count`` texts: the test split's in order (cycled), else the fallback texts cycled."""
    texts = [pair.text for pair in read_pairs(test_split)] if test_split and test_split.is_file() else []
    texts = texts or list(FALLBACK_TEXTS)
    return [texts[index % len(texts)] for index in range(count)]


def _timed(server: ModelServer, texts: list[str], repetitions: int) -> list[float]:
    payload = {"dataframe_records": [{"text": text} for text in texts]}
    answer = server.invoke(payload)  # warm-up: traces the decoding function for this batch shape
    if len(answer["predictions"]) != len(texts):
        raise RuntimeError(f"serving: {len(texts)} texts in, {len(answer['predictions'])} summaries out")
    seconds = []
    for _ in range(repetitions):
        started = time.perf_counter()
        server.invoke(payload)
        seconds.append(time.perf_counter() - started)
    return seconds


def measure_serving(model_dir: Path, texts: list[str], repetitions: int) -> dict[str, Any]:
    """Median (and all) latencies in milliseconds of one text and of a batch of :data:`BATCH_SIZE` texts."""
    from summarizer.pyfunc import save_pyfunc_model  # TensorFlow only once the benchmark runs

    with tempfile.TemporaryDirectory(prefix="benchmark-serving-") as directory:
        work_dir = Path(directory)
        save_pyfunc_model(model_dir, work_dir / "pyfunc")
        environment = {"TF_CPP_MIN_LOG_LEVEL": "2"}
        with ModelServer(str(work_dir / "pyfunc"), work_dir / "serve.log", environment) as server:
            one = _timed(server, texts[:1], repetitions)
            batch = _timed(server, texts[:BATCH_SIZE], repetitions)
    return {
        "one_text_milliseconds": [round(1000 * value, 1) for value in one],
        "batch_milliseconds": [round(1000 * value, 1) for value in batch],
        "one_text_median_milliseconds": 1000 * statistics.median(one),
        "batch_median_milliseconds": 1000 * statistics.median(batch),
        "batch_size": len(texts[:BATCH_SIZE]),
    }
