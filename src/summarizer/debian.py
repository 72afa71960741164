"""The default corpus: Debian package descriptions (synopsis = summary, long description = text).

Two ways to get it:

* the **pinned snapshot** shipped in the repository (``corpora/debian/``: ``Translation-en.txt.xz`` and its
  ``SNAPSHOT.json`` manifest naming the suites, the date and the checksums), the default, so every clone on
  every day reads the same bytes; :func:`read_pinned_snapshot` decompresses it and checks its sha256;
* the **live index** (``ingest.source: debian-live``): the ordinary apt client fetches ``Translation-en``
  into a private directory (no root needed) and ``apt-helper cat-file`` decompresses it. It changes
  whenever the archive does (``-updates`` and ``-security`` suites weekly).

``python -m summarizer.debian pin corpora/debian`` refreshes the pinned snapshot from the live index. The
record parser is our own, so nothing depends on python-apt.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

APT_HELPER = Path("/usr/lib/apt/apt-helper")
TRANSLATION_GLOB = "*_i18n_Translation-en*"
APT_TIMEOUT_SECONDS = 900
PINNED_FILE = "Translation-en.txt.xz"
MANIFEST_FILE = "SNAPSHOT.json"
MANIFEST_KEYS = ("sha256", "xz_sha256", "fetched_at", "suites", "apt_index_files", "apt_releases")
XZ_PRESET = 9 | lzma.PRESET_EXTREME
_CHUNK_BYTES = 1 << 20
_INDEX_SUITE = re.compile(r"_dists_(?P<suite>[^_]+)_(?P<component>[^_]+)_i18n_Translation-en")

_NO_APT_HINT = (
    "Use your own corpus instead: put a CSV, JSONL or Parquet file with a text and a summary column under "
    "data/external/ and set 'ingest.source: file' and 'ingest.path: data/external/<file>' in params.yaml."
)

# Package-name affixes that mark a split-out part of one source package (foo, foo-dev, libfoo1, python3-foo).
_NAME_PREFIXES = (
    "python3-",
    "python-",
    "pypy3-",
    "pypy-",
    "ruby-",
    "node-",
    "golang-",
    "librust-",
    "libghc-",
    "r-cran-",
    "r-bioc-",
    "php-",
    "lua-",
    "lib",
)
_NAME_SUFFIXES = (
    "-dev",
    "-doc",
    "-docs",
    "-data",
    "-common",
    "-bin",
    "-utils",
    "-tools",
    "-dbg",
    "-dbgsym",
    "-perl",
    "-java",
    "-prof",
    "-examples",
    "-tests",
    "-headers",
    "-static",
    "-runtime",
    "-plugins",
    "-l10n",
    "-locales",
    "-cli",
    "-core",
    "-daemon",
    "-server",
    "-client",
    "-gtk",
    "-qt",
)
_TRAILING_VERSION = re.compile(r"[-.+~]?\d+[a-z]?$")  # one component: libgtk2.0-0 -> gtk2.0 -> gtk2 -> gtk


class DebianError(ValueError):
    """The Debian corpus could not be fetched or its index is not in the expected format."""


@dataclass(frozen=True, slots=True)
class DebianRecord:
    package: str
    description_md5: str
    summary: str
    text: str  # paragraphs joined by "\n", the lines of a paragraph by " "


@dataclass(frozen=True)
class Snapshot:
    """The concatenated, decompressed ``Translation-en`` files as fetched."""

    path: Path
    sha256: str
    num_bytes: int
    index_files: tuple[str, ...]


def check_apt_available() -> None:
    """Raise :class:`DebianError` with a how-to-use-your-own-data hint if apt is missing."""
    if shutil.which("apt-get") is None or not APT_HELPER.is_file():
        raise DebianError(
            "the live Debian index (ingest.source: debian-live) needs the apt client (apt-get and "
            f"{APT_HELPER}), which this machine lacks. {_NO_APT_HINT}"
        )


@dataclass(frozen=True)
class AptIndex:
    translation_files: list[Path]
    release_dates: dict[
        str, str
    ]  # InRelease file name -> its Date field: which state of the archive was read


def fetch_index(work_dir: Path) -> AptIndex:
    """Run ``apt-get update`` into a private directory under ``work_dir``; find the Translation-en files.

    The files are sorted by name, which puts security, then updates, then the main suite: the first record
    of a package is then its newest description.
    """
    check_apt_available()
    lists_dir, cache_dir = work_dir / "lists", work_dir / "cache"
    (lists_dir / "partial").mkdir(parents=True, exist_ok=True)
    (cache_dir / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    command = [
        "apt-get",
        "update",
        "-o",
        f"Dir::State::Lists={lists_dir}",
        "-o",
        f"Dir::Cache={cache_dir}",
        "-o",
        "Debug::NoLocking=1",
        "-o",
        "Acquire::Languages=en",
    ]
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=APT_TIMEOUT_SECONDS, check=False
        )
    except subprocess.TimeoutExpired:
        raise DebianError(
            f"apt-get update did not finish in {APT_TIMEOUT_SECONDS} s. {_NO_APT_HINT}"
        ) from None
    output = result.stdout + result.stderr
    if result.returncode != 0 or "Failed to fetch" in output:
        tail = "\n".join(output.strip().splitlines()[-8:])
        raise DebianError(f"apt-get update failed (exit code {result.returncode}):\n{tail}\n{_NO_APT_HINT}")
    files = sorted(path for path in lists_dir.glob(TRANSLATION_GLOB) if path.is_file())
    if not files:
        raise DebianError(
            f"apt-get update left no {TRANSLATION_GLOB} files in {lists_dir}; are the Debian "
            f"sources configured in /etc/apt? {_NO_APT_HINT}"
        )
    return AptIndex(files, {path.name: _release_date(path) for path in sorted(lists_dir.glob("*_InRelease"))})


def _release_date(in_release: Path) -> str:
    with in_release.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.startswith("Date:"):
                return line.partition(":")[2].strip()
    return ""


def write_snapshot(index_files: list[Path], destination: Path) -> Snapshot:
    """Decompress ``index_files`` with ``apt-helper cat-file`` and concatenate them into ``destination``."""
    digest = hashlib.sha256()
    num_bytes = 0
    with destination.open("wb") as output:
        for index_file in index_files:
            result = subprocess.run(
                [str(APT_HELPER), "cat-file", str(index_file)], capture_output=True, check=False
            )
            if result.returncode != 0:
                message = result.stderr.decode("utf-8", "replace").strip()
                raise DebianError(f"{index_file}: apt-helper cat-file failed: {message}")
            output.write(result.stdout)
            digest.update(result.stdout)
            num_bytes += len(result.stdout)
    return Snapshot(destination, digest.hexdigest(), num_bytes, tuple(path.name for path in index_files))


class _RecordBuilder:
    """Collects the fields of one stanza while the parser walks its lines."""

    def __init__(self, line_number: int) -> None:
        self.line_number = line_number
        self.package = ""
        self.description_md5 = ""
        self.summary: str | None = None
        self.paragraphs: list[list[str]] = [[]]
        self.in_description = False

    def add_continuation(self, content: str) -> None:
        if content == ".":
            self.paragraphs.append([])
        else:
            # A line starting with a further space is verbatim (lists, code): kept as is; whitespace is
            # normalized later, with the rest of the text.
            self.paragraphs[-1].append(content)

    def build(self, source: str) -> DebianRecord:
        if not self.package or self.summary is None:
            missing = "Package" if not self.package else "Description-en"
            raise DebianError(f"{source}: line {self.line_number}: record has no {missing} field")
        text = "\n".join(" ".join(lines) for lines in self.paragraphs if lines)
        return DebianRecord(self.package, self.description_md5, self.summary, text)


def parse_translations(lines: Iterable[str], source: str = "<Translation-en>") -> Iterator[DebianRecord]:
    """Parse ``Package`` / ``Description-md5`` / ``Description-en`` stanzas.

    A continuation line (leading space) extends the description; the line " ." is a paragraph break.
    A new stanza starts at a blank line or at a ``Package:`` line.

    Raises:
        DebianError: a continuation line outside a description, or a stanza without Package or Description-en.
    """
    builder: _RecordBuilder | None = None
    for line_number, raw_line in enumerate(lines, start=1):
        line = raw_line.rstrip("\r\n")
        if not line.strip():
            if builder is not None:
                yield builder.build(source)
            builder = None
        elif line[0] in " \t":
            if builder is None or not builder.in_description:
                raise DebianError(
                    f"{source}: line {line_number}: continuation line outside a Description-en "
                    f"field: {line[:60]!r}"
                )
            builder.add_continuation(line[1:])
        else:
            name, _, value = line.partition(":")
            if name == "Package" and builder is not None:
                yield builder.build(source)
                builder = None
            builder = builder or _RecordBuilder(line_number)
            builder.in_description = name == "Description-en"
            if name == "Package":
                builder.package = value.strip()
            elif name == "Description-md5":
                builder.description_md5 = value.strip()
            elif name == "Description-en":
                builder.summary = value.strip()
    if builder is not None:
        yield builder.build(source)


def read_snapshot(path: Path) -> tuple[list[DebianRecord], int]:
    """Parse a snapshot and keep the first record of each package.

    Returns:
        The records in file order, and the number of stanzas in the file (repeated packages included).
    """
    first_records: dict[str, DebianRecord] = {}
    num_stanzas = 0
    with path.open(encoding="utf-8", newline="") as handle:
        for record in parse_translations(handle, str(path)):
            num_stanzas += 1
            first_records.setdefault(record.package, record)
    return list(first_records.values()), num_stanzas


def suite_of(index_file: str) -> str:
    """The suite named in an apt list file's name ("" if none).

    ``deb.debian.org_debian_dists_bookworm-updates_main_i18n_Translation-en.lz4`` -> ``bookworm-updates``.
    """
    match = _INDEX_SUITE.search(index_file)
    return match.group("suite") if match else ""


def check_pinned_snapshot(snapshot_dir: Path) -> None:
    """Raise :class:`DebianError` naming the fix if the snapshot or its manifest is missing."""
    for name in (PINNED_FILE, MANIFEST_FILE):
        if not (snapshot_dir / name).is_file():
            raise DebianError(
                f"{snapshot_dir / name}: the pinned Debian snapshot is missing; restore it with "
                f"`git checkout -- {snapshot_dir}`, or fetch the live index with 'ingest.source: debian-live'"
            )


def read_pinned_snapshot(snapshot_dir: Path, destination: Path) -> tuple[Snapshot, dict[str, Any]]:
    """Decompress ``snapshot_dir/Translation-en.txt.xz`` into ``destination``; check it against its manifest.

    Returns:
        The decompressed snapshot and the manifest (``SNAPSHOT.json``: suites, date, checksums).

    Raises:
        DebianError: a file is missing, not valid xz, or its decompressed sha256 is not the manifest's.
    """
    check_pinned_snapshot(snapshot_dir)
    xz_path, manifest_path = snapshot_dir / PINNED_FILE, snapshot_dir / MANIFEST_FILE
    try:
        with manifest_path.open(encoding="utf-8") as handle:
            manifest = json.load(handle)
    except json.JSONDecodeError as error:
        raise DebianError(f"{manifest_path}: not valid JSON ({error}); restore it from git") from None
    missing = [key for key in MANIFEST_KEYS if not isinstance(manifest, dict) or key not in manifest]
    if missing:
        raise DebianError(f"{manifest_path}: missing key(s) {', '.join(missing)}; restore it from git")
    digest, num_bytes = hashlib.sha256(), 0
    try:
        with lzma.open(xz_path) as source, destination.open("wb") as output:
            while chunk := source.read(_CHUNK_BYTES):
                output.write(chunk)
                digest.update(chunk)
                num_bytes += len(chunk)
    except (lzma.LZMAError, EOFError) as error:  # EOFError: a truncated file
        raise DebianError(f"{xz_path}: not a readable xz file ({error}); restore it from git") from None
    if digest.hexdigest() != manifest["sha256"]:
        raise DebianError(
            f"{xz_path}: decompressed sha256 {digest.hexdigest()} differs from {manifest['sha256']} in "
            f"{manifest_path}: the snapshot was damaged or replaced; restore both files from git"
        )
    return Snapshot(destination, manifest["sha256"], num_bytes, tuple(manifest["apt_index_files"])), manifest


def pin_snapshot(snapshot_dir: Path, preset: int = XZ_PRESET) -> dict[str, Any]:
    """Fetch the live index and write it to ``snapshot_dir`` as ``Translation-en.txt.xz`` + ``SNAPSHOT.json``.

    ``preset`` is the xz preset: the default compresses hardest (about a minute); tests use a fast one.

    Returns:
        The manifest written.
    """
    snapshot_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="summarizer-apt-") as work_dir:
        index = fetch_index(Path(work_dir))
        fetched_at = datetime.now(UTC).isoformat(timespec="seconds")
        snapshot = write_snapshot(index.translation_files, Path(work_dir) / "Translation-en.txt")
        records, num_stanzas = read_snapshot(snapshot.path)
        compressed = Path(work_dir) / PINNED_FILE
        with snapshot.path.open("rb") as source, lzma.open(compressed, "wb", preset=preset) as output:
            shutil.copyfileobj(source, output, _CHUNK_BYTES)
        manifest = {
            "file": PINNED_FILE,
            "xz_sha256": hashlib.sha256(compressed.read_bytes()).hexdigest(),
            "sha256": snapshot.sha256,
            "bytes": snapshot.num_bytes,
            "records": num_stanzas,
            "packages": len(records),
            "fetched_at": fetched_at,
            "suites": [suite_of(name) for name in snapshot.index_files],
            "apt_index_files": list(snapshot.index_files),
            "apt_releases": index.release_dates,
        }
        shutil.move(compressed, snapshot_dir / PINNED_FILE)
    (snapshot_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def package_stem(package: str) -> str:
    """The part of a package name shared by its split-out siblings: libfoo1, foo-dev, python3-foo -> foo.

    Returns "" when nothing distinctive is left (e.g. a name that is all digits).
    """
    stem = package.lower()
    for prefix in _NAME_PREFIXES:
        remainder = stem[len(prefix) :]
        if stem.startswith(prefix) and len(remainder) >= 2 and f"-{remainder}" not in _NAME_SUFFIXES:
            stem = remainder
            break
    previous = None
    while stem != previous:
        previous = stem
        for suffix in _NAME_SUFFIXES:
            if stem.endswith(suffix) and len(stem) > len(suffix) + 1:
                stem = stem[: -len(suffix)]
        without_version = _TRAILING_VERSION.sub("", stem)
        if len(without_version) >= 2:
            stem = without_version
    return stem if len(stem) >= 2 and not stem.isdigit() else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m summarizer.debian",
        description="Refresh the pinned Debian snapshot: fetch the live Translation-en index with apt and "
        "write DIR/Translation-en.txt.xz and DIR/SNAPSHOT.json (suites, date, checksums). Commit both, and "
        "update the README's figures: every data output of the default run changes with them.",
    )
    parser.add_argument("command", choices=["pin"], help="pin: fetch and write the snapshot")
    parser.add_argument("directory", type=Path, help="where the snapshot goes, e.g. corpora/debian")
    arguments = parser.parse_args(argv)
    try:
        manifest = pin_snapshot(arguments.directory)
    except DebianError as error:
        print(f"debian: error: {error}", file=sys.stderr)
        return 1
    print(
        f"pinned {manifest['packages']} packages ({manifest['records']} records) from "
        f"{', '.join(manifest['suites'])} fetched at {manifest['fetched_at']}: sha256 {manifest['sha256']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
