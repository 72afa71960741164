"""The doctor's 2-process allreduce self-test: each rank allreduces a known tensor and reports the sum.

``python -m summarizer.selftest`` is one rank (started by ``horovodrun`` or ``mpirun``); it prints one JSON
line, ``{"rank", "size", "controller", "sum"}``. :func:`check_reports` says what is wrong with the ranks'
lines, or nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from typing import Any

SELF_TEST_PROCESSES = 2
EXPECTED_SUM = float(sum(range(1, SELF_TEST_PROCESSES + 1)))  # rank r contributes r + 1
# TensorFlow's C++ start-up logs and Python warnings would bury the report (and the workers' output).
QUIET_ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}


def worker_command() -> list[str]:
    return [sys.executable, "-m", "summarizer.selftest"]


def worker_reports(output: str) -> list[dict[str, Any]]:
    """The JSON line each rank printed (horovodrun prefixes it with ``[rank]<stdout>:``)."""
    reports = []
    for match in re.finditer(r'\{"rank".*\}', output):
        with contextlib.suppress(json.JSONDecodeError):
            reports.append(json.loads(match.group(0)))
    return reports


def check_reports(reports: list[dict[str, Any]], controller: str) -> str | None:
    """What is wrong with the ranks' reports, or None when every rank summed the known tensor right."""
    ranks = sorted(report["rank"] for report in reports)
    if ranks != list(range(SELF_TEST_PROCESSES)):
        return f"expected a report from ranks 0 and 1, got ranks {ranks}"
    for report in reports:
        if report["size"] != SELF_TEST_PROCESSES or report["controller"] != controller:
            controller_used = report["controller"] or "no"
            return f"rank {report['rank']} ran as one of {report['size']} on {controller_used} controller"
        if report["sum"] != EXPECTED_SUM:
            return f"rank {report['rank']} summed {report['sum']}, expected {EXPECTED_SUM}"
    return None


def allreduce_worker() -> int:
    """One self-test rank: allreduce ``[rank + 1]`` and print what it saw as one JSON line."""
    os.environ.update(QUIET_ENVIRONMENT)
    import tensorflow as tf

    from summarizer import distribution

    run = distribution.init()
    total = float(run.sum(tf.constant([run.rank + 1.0])).numpy()[0])
    report = {"rank": run.rank, "size": run.size, "controller": run.controller, "sum": total}
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(allreduce_worker())
