"""File input and output every stage shares: atomic writes (complete outputs or none), JSON and JSONL."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _default_permissions(path: Path, directory: bool) -> None:
    """mkstemp/mkdtemp create owner-only entries; give outputs the permissions a plain open() would."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    temporary_path = Path(temporary)
    try:
        yield temporary_path
        _default_permissions(temporary_path, directory=False)
        os.replace(temporary_path, path)
    finally:
        temporary_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield temporary
        _default_permissions(temporary, directory=True)
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        os.replace(temporary, path)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json(path: str | Path, value: Any) -> None:
    """Write ``value`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_metrics(
    values: Mapping[str, Any], timing_keys: Iterable[str], metrics_path: str | Path, timings_path: str | Path
) -> None:
    """A stage's metrics in two DVC metrics files: quality figures, and timings (seconds, rates) apart.

    The same commit and inputs give the same quality figures on every rerun; timings move every time. Kept
    apart, a rerun's ``dvc metrics diff`` shows at a glance that only timings moved.
    """
    timing_keys = set(timing_keys)
    write_json(metrics_path, {key: value for key, value in values.items() if key not in timing_keys})
    write_json(timings_path, {key: value for key, value in values.items() if key in timing_keys})


def read_json(path: str | Path) -> Any:
    with Path(path).open(encoding="utf-8") as handle:
        return json.load(handle)


def jsonl_text(records: Iterable[Mapping[str, Any]]) -> str:
    """One compact JSON object a line (non-ASCII kept as is)."""
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def read_jsonl(path: str | Path, lines: set[int] | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line of a JSONL file, read one line at a time.

    The one JSONL parser of the project: every error names the file and the 1-based line, as
    ``<path>: line <n>: <problem>``.

    Args:
        lines: if given, only these 1-based line numbers are parsed.

    Raises:
        ValueError: a line is not UTF-8, not JSON, or not a JSON object.
    """
    path = Path(path)
    with path.open("rb") as handle:
        for line_number, raw_line in enumerate(handle, start=1):
            if lines is not None and line_number not in lines:
                continue
            try:
                line = raw_line.decode("utf-8-sig" if line_number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{path}: line {line_number}: not valid UTF-8 (byte 0x{raw_line[error.start]:02x} at "
                    f"column {error.start + 1}); re-encode the file as UTF-8"
                ) from None
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{path}: line {line_number}: malformed JSON: {error.msg} at column {error.colno}"
                ) from None
            if not isinstance(value, dict):
                raise ValueError(
                    f"{path}: line {line_number}: expected a JSON object, got {json_type(value)}"
                )
            yield line_number, value


def json_type(value: Any) -> str:
    """How a JSON value is named in error messages: 'null', 'a number', 'a string', ..."""
    names = {
        type(None): "null",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
    }
    return names.get(type(value), type(value).__name__)
