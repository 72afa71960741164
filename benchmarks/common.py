"""What every benchmark shares: the machine and versions, figures with targets, timing, synthetic batches."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from summarizer.tokenization import BOS_ID, EOS_ID, PAD_ID

FIRST_ORDINARY_ID = 4  # ids below are PAD, UNK, BOS, EOS
CPU_FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")
VERSIONED_DISTRIBUTIONS = {
    "tensorflow": ("tensorflow-cpu", "tensorflow"),
    "keras": ("keras",),
    "horovod": ("horovod",),
    "numpy": ("numpy",),
    "sentencepiece": ("sentencepiece",),
}
COMPARISONS = (">=", "<=", "~")


@dataclass(frozen=True)
class Shapes:
    """Synthetic batch shapes: every sequence is right-padded to these lengths."""

    vocab_size: int
    source_length: int
    target_length: int
    batch_size: int


def _cpuinfo_fields(path: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """The first processor's ``key: value`` lines."""
    fields: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def machine_info() -> dict[str, Any]:
    """CPU model, cores (online and usable by this process), CPU flags that matter here, memory, load."""
    fields = _cpuinfo_fields()
    flags = set(fields.get("flags", "").split())
    memory_kilobytes = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines()
        if line.startswith("MemTotal:")
    )
    return {
        "cpu_model": fields.get("model name", platform.processor() or "unknown"),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "cpu_flags": [flag for flag in CPU_FLAGS_OF_INTEREST if flag in flags],
        "memory_gigabytes": round(memory_kilobytes / 1e6, 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "platform": platform.platform(),
    }


def _installed_version(names: tuple[str, ...]) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def versions() -> dict[str, str | None]:
    """Python and library versions, read from package metadata (Horovod is not imported)."""
    found = {"python": platform.python_version()}
    found.update({label: _installed_version(names) for label, names in VERSIONED_DISTRIBUTIONS.items()})
    return found


def figure(
    value: float,
    unit: str,
    target: float | None = None,
    comparison: str = ">=",
    tolerance: float = 0.0,
    **details: Any,
) -> dict[str, Any]:
    """One reported figure with its target beside it; ``met`` is None when there is no target.

    Args:
        comparison: ``>=`` (at least the target), ``<=`` (at most) or ``~`` (within ``tolerance`` of it).
    """
    if comparison not in COMPARISONS:
        raise ValueError(f"figure: comparison must be one of {', '.join(COMPARISONS)}, got {comparison!r}")
    met = None
    if target is not None:
        met = {
            ">=": value >= target,
            "<=": value <= target,
            "~": abs(value - target) <= tolerance,
        }[comparison]
    result = {"value": round(float(value), 4), "unit": unit, "target": target, "comparison": comparison}
    if comparison == "~":
        result["tolerance"] = tolerance
    return {**result, "met": met, **details}


def timed_rates(run_once: Callable[[], float], repetitions: int) -> list[float]:
    """Call ``run_once`` (it returns the work done) ``repetitions`` times; the work per second of each."""
    if repetitions < 1:
        raise ValueError(f"repetitions must be >= 1, got {repetitions}")
    rates = []
    for _ in range(repetitions):
        started = time.perf_counter()
        work = run_once()
        rates.append(work / (time.perf_counter() - started))
    return rates


def summary_of(rates: list[float]) -> dict[str, Any]:
    """The median (the reported value) and every repetition, so the noise is visible."""
    return {"median": statistics.median(rates), "repetitions": [round(rate, 3) for rate in rates]}


def synthetic_batch(shapes: Shapes, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random token ids of random lengths (half to full), right-padded like ``records.read_dataset``.

    ``target_out`` ends with EOS; ``target_in`` is BOS + ``target_out[:-1]`` with the same padding.
    """
    batch, vocab = shapes.batch_size, shapes.vocab_size
    source = rng.integers(FIRST_ORDINARY_ID, vocab, (batch, shapes.source_length), dtype=np.int32)
    target = rng.integers(FIRST_ORDINARY_ID, vocab, (batch, shapes.target_length), dtype=np.int32)
    source_lengths = rng.integers(max(1, shapes.source_length // 2), shapes.source_length + 1, batch)
    target_lengths = rng.integers(max(1, shapes.target_length // 2), shapes.target_length + 1, batch)
    positions = np.arange(max(shapes.source_length, shapes.target_length))
    source[positions[np.newaxis, : shapes.source_length] >= source_lengths[:, np.newaxis]] = PAD_ID
    target[np.arange(batch), target_lengths - 1] = EOS_ID
    target_padding = positions[np.newaxis, : shapes.target_length] >= target_lengths[:, np.newaxis]
    target[target_padding] = PAD_ID
    target_in = np.concatenate([np.full((batch, 1), BOS_ID, np.int32), target[:, :-1]], axis=1)
    target_in[target_padding] = PAD_ID
    return {"source_ids": source, "target_in": target_in, "target_out": target}


def synthetic_batches(shapes: Shapes, count: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [synthetic_batch(shapes, rng) for _ in range(count)]


def target_tokens(batch: dict[str, np.ndarray]) -> int:
    """Non-PAD target tokens (EOS included): the tokens the loss is taken over."""
    return int(np.count_nonzero(batch["target_out"] != PAD_ID))


__all__ = [
    "Shapes",
    "figure",
    "machine_info",
    "summary_of",
    "synthetic_batch",
    "synthetic_batches",
    "target_tokens",
    "timed_rates",
    "versions",
]
