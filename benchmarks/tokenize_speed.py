"""Tokenize stage throughput and peak memory: ``python -m pipeline.tokenize`` under ``/usr/bin/time -v``.

Run on an ingested corpus and on a copy whose JSONL lines are each repeated ``factor`` times; the stage
streams its input, so its peak resident memory should not grow with the corpus.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from summarizer.config import TokenizeConfig
from summarizer.ingested import SPLITS
from summarizer.io import atomic_write_text, read_json

REPO_ROOT = Path(__file__).resolve().parents[1]
TIME_COMMAND = "/usr/bin/time"
_SYLLABLES = ("ka", "lo", "mi", "ne", "pu", "ra", "si", "to", "vu", "ze", "bar", "dex", "fin", "gor", "hul")


class StageError(RuntimeError):
    """A pipeline stage run by the benchmark failed; the message holds its command and output."""


def _run(command: list[str], environment: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, env=environment)
    if result.returncode != 0:
        raise StageError(f"{' '.join(command)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


def ingest_default_corpus(params_path: Path, directory: Path) -> Path:
    """Run the ingest stage with ``params_path`` into ``directory``; returns the ingested directory."""
    _run(
        [
            sys.executable,
            "-m",
            "pipeline.ingest",
            "--params",
            str(params_path),
            "--raw-dir",
            str(directory / "raw"),
            "--out-dir",
            str(directory / "ingested"),
            "--stats",
            str(directory / "ingest.json"),
        ]
    )
    return directory / "ingested"


def write_synthetic_corpus(directory: Path, records: int, seed: int) -> Path:
    """A tiny ingested corpus of random word sequences ({split}.jsonl), for --quick runs.

    Words are random syllable strings, so sentencepiece finds well over 100 pieces in a few hundred records.
    """
    rng = random.Random(seed)
    words = ["".join(rng.choices(_SYLLABLES, k=rng.randint(1, 3))) for _ in range(400)]
    directory.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        count = records if split == "train" else max(2, records // 10)
        lines = []
        for index in range(count):
            text = " ".join(rng.choices(words, k=40))
            record = {
                "id": f"{split}-{index}",
                "text": text,
                "summary": " ".join(text.split()[:5]),
                "group": "",
            }
            lines.append(json.dumps(record) + "\n")
        atomic_write_text(directory / f"{split}.jsonl", "".join(lines))
    return directory


def replicate_corpus(source: Path, target: Path, factor: int) -> Path:
    """Copy every split with each line repeated ``factor`` times, streaming (the copy may be large)."""
    target.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        with (
            (source / f"{split}.jsonl").open(encoding="utf-8") as lines,
            (target / f"{split}.jsonl").open("w", encoding="utf-8") as copy,
        ):
            for line in lines:
                copy.write(line * factor)
    return target


def write_tokenize_params(config: TokenizeConfig, path: Path) -> Path:
    """A params file whose ``tokenize`` section is ``config`` (the other sections take their defaults)."""
    atomic_write_text(path, yaml.safe_dump({"tokenize": dataclasses.asdict(config)}, sort_keys=False))
    return path


def parse_time_report(report: str) -> dict[str, float]:
    """Peak RSS (MB), wall, user and system seconds from GNU ``time -v`` output.

    Raises:
        ValueError: a field is missing (not GNU time?).
    """
    patterns = {
        "peak_rss_megabytes": r"Maximum resident set size \(kbytes\): (\d+)",
        "user_seconds": r"User time \(seconds\): ([\d.]+)",
        "system_seconds": r"System time \(seconds\): ([\d.]+)",
        "wall_seconds": r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)",
    }
    values = {}
    for name, pattern in patterns.items():
        match = re.search(pattern, report)
        if match is None:
            raise ValueError(f"{TIME_COMMAND} -v output lacks {name}:\n{report[-2000:]}")
        values[name] = match.group(1)
    seconds = 0.0
    for part in values["wall_seconds"].split(":"):
        seconds = seconds * 60 + float(part)
    return {
        "peak_rss_megabytes": int(values["peak_rss_megabytes"]) / 1000.0,
        "user_seconds": float(values["user_seconds"]),
        "system_seconds": float(values["system_seconds"]),
        "wall_seconds": seconds,
    }


def measure_tokenize(in_dir: Path, params_path: Path, work_dir: Path) -> dict[str, Any]:
    """Run the tokenize stage on ``in_dir``: input MB, MB/s (wall and CPU), peak RSS, the stage's timings."""
    out_dir, stats_path = work_dir / "tokenized", work_dir / "tokenize.json"
    timings_path = work_dir / "tokenize-timings.json"
    command = [
        TIME_COMMAND,
        "-v",
        sys.executable,
        "-m",
        "pipeline.tokenize",
        "--params",
        str(params_path),
        "--in-dir",
        str(in_dir),
        "--out-dir",
        str(out_dir),
        "--stats",
        str(stats_path),
        "--timings",
        str(timings_path),
    ]
    report = parse_time_report(_run(command).stderr)
    stats, timings = read_json(stats_path), read_json(timings_path)
    megabytes = sum((in_dir / f"{split}.jsonl").stat().st_size for split in SPLITS) / 1e6
    cpu_seconds = report["user_seconds"] + report["system_seconds"]
    return {
        "input_megabytes": round(megabytes, 3),
        "megabytes_per_second": megabytes / report["wall_seconds"],
        "megabytes_per_cpu_second": megabytes / cpu_seconds,
        "encode_megabytes_per_second": timings["encode_megabytes_per_second"],
        "tokenizer_seconds": timings["tokenizer_seconds"],
        "encode_seconds": timings["encode_seconds"],
        "examples": sum(stats[split]["examples"] for split in SPLITS),
        **report,
    }


__all__ = [
    "StageError",
    "ingest_default_corpus",
    "measure_tokenize",
    "parse_time_report",
    "replicate_corpus",
    "write_synthetic_corpus",
    "write_tokenize_params",
]
