"""A throw-away copy of this repository for end-to-end `dvc` runs on tiny params."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from summarizer.config import params_from_dict
from tests.conftest import REPO_ROOT, make_pairs, write_csv

VENV_BIN = Path(sys.executable).parent


def tracked_files(root: Path) -> list[str]:
    listing = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [name for name in listing.split("\0") if name and (root / name).is_file()]


def tiny_params(workers: int = 2) -> dict:
    """Params small enough for a 2-core CI machine: a few hundred pairs, a 16-unit model, two epochs.

    Every section a stage lists in dvc.yaml is present: DVC requires it, and the train command interpolates
    ``train.horovod.*``.
    """
    defaults = params_from_dict({}).to_nested_dict()
    overrides = {
        "ingest": {
            "source": "file",
            "path": "data/external/tiny.csv",
            "min_text_words": 5,
            "split": {"val": 0.15, "test": 0.15},
        },
        "tokenize": {"vocab_size": 200, "max_source_tokens": 48, "max_target_tokens": 12, "num_shards": 2},
        "train": {
            "workers": workers,
            "units": 16,
            "embedding_dim": 16,
            "batch_size": 16,
            "epochs": 2,
            "warmup_steps": 2,
        },
        "evaluate": {"beam_width": 2, "max_length": 12, "batch_size": 32, "num_logged_examples": 3},
    }
    return merge(defaults, overrides)


def merge(base: dict, overrides: dict) -> dict:
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = merge(base[key], value) if isinstance(value, dict) else value
    return merged


class DvcProject:
    """A git + DVC copy of the repo in ``path`` whose commands run with this virtualenv on PATH."""

    def __init__(self, path: Path, params: dict, pairs: int = 300) -> None:
        self.path = path
        for name in tracked_files(REPO_ROOT):
            target = path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, target)
        for generated in ("dvc.lock", "metrics.json"):
            (path / generated).unlink(missing_ok=True)
        write_csv(path / "data/external/tiny.csv", make_pairs(pairs))
        (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
        self.env = {
            **os.environ,
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        self.env.pop("MLFLOW_TRACKING_URI", None)
        self.run("git", "init", "-q")
        self.run("git", "add", "-A")
        self.run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy")

    def run(self, *command: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
        result = subprocess.run(
            command, cwd=self.path, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        return result

    def dvc(self, *arguments: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(str(VENV_BIN / "dvc"), *arguments, check=check)
