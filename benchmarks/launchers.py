"""Train-stage throughput under the two launchers, on the tests' tiny params and data, 2 ranks on this host.

- ``mpirun``: deploy/mpijob.yaml's launcher line (hostfile ``localhost slots=2``, loopback), MPI controller;
- ``horovodrun --gloo``: dvc.yaml's train command, Gloo controller.

The launchers alternate, ``--rounds`` times each, so drifting load on a shared machine hits both alike; each
run's samples/s is the train stage's own (epochs after the first). Prints every run and the medians; with
``--out`` writes them as JSON.

Usage: python -m benchmarks.launchers [--rounds 3] [--epochs 4] [--out benchmarks/results/launchers.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
from pathlib import Path

from summarizer.io import write_json
from tests.workers import mpijob
from tests.workers.launch import horovod_environment
from tests.workers.tiny_data import write_tokenized

WORKERS = 2


def measure(launcher: str, directory: Path, tokenized: Path, epochs: int) -> float:
    directory.mkdir()
    params = mpijob.lay_out_run_directory(directory, tokenized, epochs).to_nested_dict()
    if launcher == "mpirun":
        hostfile = mpijob.write_hostfile(directory / "hostfile", {"localhost": WORKERS})
        command = mpijob.launcher(WORKERS, hostfile, "lo")
        environment = mpijob.launcher_environment(f"sqlite:///{directory / 'mlflow.db'}")
    else:
        command, environment = mpijob.dvc_train_command(params), horovod_environment()
    subprocess.run(command, cwd=directory, env=environment, check=True, capture_output=True, timeout=1200)
    timings = json.loads((directory / "metrics/timings/train.json").read_text(encoding="utf-8"))
    return float(timings["samples_per_second"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs per launcher (default 3)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run; the first is not timed")
    parser.add_argument("--out", type=Path, help="write the figures to this JSON file")
    arguments = parser.parse_args(argv)
    runs: dict[str, list[float]] = {"mpirun": [], "horovodrun --gloo": []}
    with tempfile.TemporaryDirectory(prefix="launchers-") as temporary:
        root = Path(temporary)
        tokenized = write_tokenized(root / "data")
        for round_index in range(arguments.rounds):
            for launcher in runs:
                name = f"{launcher.split()[0]}-{round_index}"
                runs[launcher].append(measure(launcher, root / name, tokenized, arguments.epochs))
                print(f"{launcher}: {runs[launcher][-1]:.1f} samples/s", flush=True)
    medians = {launcher: statistics.median(values) for launcher, values in runs.items()}
    print(", ".join(f"{launcher} median {value:.1f}" for launcher, value in medians.items()))
    if arguments.out:
        write_json(arguments.out, {"samples_per_second": runs, "median": medians, "epochs": arguments.epochs})


if __name__ == "__main__":
    main()
