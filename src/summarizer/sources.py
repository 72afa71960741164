"""Where the ingest stage's records come from: the pinned Debian snapshot, the live Debian index, a user file.

Each source gives its records and its provenance, written to ``data/raw/SOURCE.json``: for the pinned
snapshot (the default) its file, suites, date and checksums, all fixed, so every clone writes the same bytes.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from summarizer import debian
from summarizer.config import IngestConfig
from summarizer.readers import (
    Columns,
    IngestError,
    SourceRecord,
    read_records,
    resolve_delimiter,
    resolve_format,
)

LOG = logging.getLogger(__name__)

SNAPSHOT_NAME = "Translation-en.txt"  # the decompressed Debian index in data/raw/
DEBIAN_SNAPSHOT_DIR = Path("corpora/debian")  # the pinned snapshot shipped with the repository


def check_source_ready(config: IngestConfig, debian_snapshot: Path) -> None:
    """Fail on a missing file, unknown format or missing apt before any output directory is created."""
    if config.source in ("debian", "debian-live"):
        try:
            if config.source == "debian-live":
                debian.check_apt_available()
            else:
                debian.check_pinned_snapshot(debian_snapshot)
        except debian.DebianError as error:
            raise IngestError(str(error)) from None
        return
    path = Path(config.path)
    if not path.is_file():
        raise IngestError(f"{path}: file not found (ingest.path; relative paths start at {Path.cwd()})")
    resolve_format(path, config.format)


def _columns(config: IngestConfig) -> Columns:
    return Columns(config.text_column, config.summary_column, config.group_column)


def open_source(
    config: IngestConfig, raw_staging: Path, debian_snapshot: Path
) -> tuple[dict[str, Any], Iterable[SourceRecord]]:
    """The SOURCE.json provenance and the source's records (a lazy iterator for user files)."""
    if config.source in ("debian", "debian-live"):
        try:
            return _debian_source(raw_staging, debian_snapshot if config.source == "debian" else None)
        except debian.DebianError as error:
            raise IngestError(str(error)) from None
    path = Path(config.path)
    file_format = resolve_format(path, config.format)
    sha256, num_bytes = _file_digest(path)
    info = {"source": "file", "path": str(path), "format": file_format, "sha256": sha256, "bytes": num_bytes}
    delimiter = ","
    if file_format == "csv":
        delimiter = info["delimiter"] = resolve_delimiter(path, config.delimiter, _columns(config))
        LOG.info("reading %s (csv, delimiter %r, %d bytes)", path, delimiter, num_bytes)
    else:
        LOG.info("reading %s (%s, %d bytes)", path, file_format, num_bytes)
    return info, read_records(path, file_format, _columns(config), delimiter)


def _debian_source(raw_staging: Path, pinned_dir: Path | None) -> tuple[dict[str, Any], list[SourceRecord]]:
    """The pinned snapshot (``pinned_dir``) or, when it is None, the live index fetched with apt."""
    destination = raw_staging / SNAPSHOT_NAME
    if pinned_dir is not None:
        LOG.info("reading the pinned Debian snapshot %s", pinned_dir / debian.PINNED_FILE)
        snapshot, manifest = debian.read_pinned_snapshot(pinned_dir, destination)
        provenance = {
            "source": "debian",
            "pinned_snapshot": str(pinned_dir / debian.PINNED_FILE),
            "xz_sha256": manifest["xz_sha256"],
            "fetched_at": manifest["fetched_at"],
            "suites": manifest["suites"],
            "apt_releases": manifest["apt_releases"],
        }
    else:
        with tempfile.TemporaryDirectory(prefix="summarizer-apt-") as work_dir:
            LOG.info("fetching the live Debian Translation-en index with apt-get update")
            index = debian.fetch_index(Path(work_dir))
            fetched_at = datetime.now(UTC).isoformat(timespec="seconds")
            snapshot = debian.write_snapshot(index.translation_files, destination)
        provenance = {
            "source": "debian-live",
            "fetched_at": fetched_at,
            "suites": [debian.suite_of(name) for name in snapshot.index_files],
            "apt_releases": index.release_dates,
        }
    LOG.info(
        "%d bytes from %d index files (suites %s; sha256 %s)",
        snapshot.num_bytes,
        len(snapshot.index_files),
        ", ".join(provenance["suites"]),
        snapshot.sha256[:12],
    )
    debian_records, num_stanzas = debian.read_snapshot(snapshot.path)
    LOG.info("parsed %d records (%d packages)", num_stanzas, len(debian_records))
    info = {
        **provenance,
        "snapshot": SNAPSHOT_NAME,
        "sha256": snapshot.sha256,
        "bytes": snapshot.num_bytes,
        "records": num_stanzas,
        "packages": len(debian_records),
        "apt_index_files": list(snapshot.index_files),
    }
    records = [
        SourceRecord(record.package, record.text, record.summary, package=record.package)
        for record in debian_records
    ]
    return info, records


def _file_digest(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    num_bytes = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            num_bytes += len(chunk)
    return digest.hexdigest(), num_bytes
