"""The default corpus: Debian package descriptions (synopsis = summary, long description = text).

The ordinary apt client fetches the ``Translation-en`` index into a private directory (no root needed);
``apt-helper cat-file`` decompresses it. The record parser is our own, so nothing depends on python-apt.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

APT_HELPER = Path("/usr/lib/apt/apt-helper")
TRANSLATION_GLOB = "*_i18n_Translation-en*"
APT_TIMEOUT_SECONDS = 900

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
            "the default corpus (ingest.source: debian) needs the apt client (apt-get and "
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
