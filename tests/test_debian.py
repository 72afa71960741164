"""Debian Translation-en parser, package stems, apt checks and the pinned snapshot (a slow test fetches)."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from summarizer import debian
from summarizer.debian import DebianError, DebianRecord, package_stem, parse_translations, read_snapshot
from tests.conftest import REPO_ROOT
from tests.helpers import write_pinned

TRANSLATION = """\
Package: 0xffff
Description-md5: 183c49f6505eb3432d1b069800f1f5b6
Description-en: Open Free Fiasco Firmware Flasher
 The Open Free Fiasco Firmware Flasher implements a free userspace
 handler for the NOLO bootloader.
 .
 Supported operations include:
  * generating FIASCO images
  *   editing Maemo   packages
 .
 Supported are the Nokia 770 and N800.

Package: foo-doc
Description-md5: 0123456789abcdef0123456789abcdef
Description-en: documentation for foo
 Foo frobnicates widgets.
 .cabal files are not paragraph breaks.

Package: foo-doc
Description-md5: ffffffffffffffffffffffffffffffff
Description-en: an older description that must not win
 Older text.
Package: bar
Description-en: bar without a long description
"""


def test_parser_joins_lines_splits_paragraphs_and_keeps_verbatim_lines() -> None:
    records = list(parse_translations(TRANSLATION.splitlines(keepends=True)))

    assert [record.package for record in records] == ["0xffff", "foo-doc", "foo-doc", "bar"]
    assert records[0] == DebianRecord(
        package="0xffff",
        description_md5="183c49f6505eb3432d1b069800f1f5b6",
        summary="Open Free Fiasco Firmware Flasher",
        text="The Open Free Fiasco Firmware Flasher implements a free userspace handler for the NOLO "
        "bootloader.\n"
        "Supported operations include:  * generating FIASCO images  *   editing Maemo   packages\n"
        "Supported are the Nokia 770 and N800.",
    )
    assert records[1].text == "Foo frobnicates widgets. .cabal files are not paragraph breaks."
    assert records[3] == DebianRecord("bar", "", "bar without a long description", "")


def test_read_snapshot_keeps_first_record_per_package_and_counts_stanzas(tmp_path: Path) -> None:
    snapshot = tmp_path / "Translation-en.txt"
    snapshot.write_text(TRANSLATION, encoding="utf-8")

    records, num_stanzas = read_snapshot(snapshot)

    assert num_stanzas == 4
    assert [record.package for record in records] == ["0xffff", "foo-doc", "bar"]
    assert records[1].summary == "documentation for foo"


def test_parser_rejects_a_continuation_line_outside_a_description_naming_the_line() -> None:
    lines = ["Package: foo\n", "Description-md5: abc\n", " stray continuation\n"]
    with pytest.raises(
        DebianError, match=r"snapshot\.txt: line 3: continuation line outside a Description-en"
    ):
        list(parse_translations(lines, "snapshot.txt"))


def test_parser_rejects_a_stanza_without_description_naming_its_first_line() -> None:
    lines = ["Package: foo\n", "Description-en: fine\n", "\n", "Package: bar\n", "Description-md5: abc\n"]
    with pytest.raises(DebianError, match=r"t\.txt: line 4: record has no Description-en field"):
        list(parse_translations(lines, "t.txt"))


@pytest.mark.parametrize(
    ("package", "stem"),
    [
        ("foo", "foo"),
        ("foo-dev", "foo"),
        ("foo-doc", "foo"),
        ("libfoo1", "foo"),
        ("libfoo-dev", "foo"),
        ("libfoo-perl", "foo"),
        ("libfoo-java", "foo"),
        ("python3-foo", "foo"),
        ("foo-data-common", "foo"),
        ("foo-utils", "foo"),
        ("libgtk2.0-0", "gtk"),
        ("libgtk-3-dev", "gtk"),
        ("libx11-6", "x11"),
        ("0ad-data", "0ad"),
        ("2048", ""),
        ("python3-dev", "python"),
    ],
)
def test_package_stem_strips_prefixes_suffixes_and_versions(package: str, stem: str) -> None:
    assert package_stem(package) == stem


def test_missing_apt_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no apt-get on PATH

    with pytest.raises(DebianError, match="lacks") as caught:
        debian.check_apt_available()

    assert "ingest.source: file" in str(caught.value) and "data/external/" in str(caught.value)


@pytest.mark.skipif(not debian.APT_HELPER.is_file(), reason="apt-helper is part of apt; CI images have it")
def test_write_snapshot_decompresses_and_concatenates_in_order(tmp_path: Path) -> None:
    first, second = "Package: a\nDescription-en: a\n\n", "Package: b\nDescription-en: b\n"
    plain = tmp_path / "x_i18n_Translation-en"
    plain.write_text(first, encoding="utf-8")
    compressed = tmp_path / "y_i18n_Translation-en.gz"
    compressed.write_bytes(gzip.compress(second.encode()))

    snapshot = debian.write_snapshot([plain, compressed], tmp_path / "snapshot.txt")

    expected = (first + second).encode()
    assert snapshot.path.read_bytes() == expected
    assert snapshot.sha256 == hashlib.sha256(expected).hexdigest() and snapshot.num_bytes == len(expected)
    assert snapshot.index_files == (plain.name, compressed.name)


@pytest.mark.skipif(not debian.APT_HELPER.is_file(), reason="apt-helper is part of apt; CI images have it")
def test_write_snapshot_reports_an_unreadable_index_file(tmp_path: Path) -> None:
    with pytest.raises(DebianError, match=r"missing_Translation-en: apt-helper cat-file failed"):
        debian.write_snapshot([tmp_path / "missing_Translation-en"], tmp_path / "snapshot.txt")


# The pinned snapshot ---------------------------------------------------------------------------------------


def test_read_pinned_snapshot_decompresses_and_checks_the_checksum(tmp_path: Path) -> None:
    pinned = write_pinned(tmp_path / "pinned", TRANSLATION)

    snapshot, manifest = debian.read_pinned_snapshot(pinned, tmp_path / "Translation-en.txt")

    assert snapshot.path.read_text(encoding="utf-8") == TRANSLATION
    assert snapshot.sha256 == hashlib.sha256(TRANSLATION.encode()).hexdigest() == manifest["sha256"]
    assert snapshot.num_bytes == len(TRANSLATION.encode())
    assert snapshot.index_files == ("deb.debian.org_debian_dists_bookworm_main_i18n_Translation-en.lz4",)


def test_a_damaged_pinned_snapshot_is_refused_naming_the_fix(tmp_path: Path) -> None:
    replaced = write_pinned(tmp_path / "replaced", TRANSLATION.replace("Flasher", "Flusher"))
    manifest = json.loads((replaced / debian.MANIFEST_FILE).read_text())
    manifest["sha256"] = hashlib.sha256(TRANSLATION.encode()).hexdigest()
    (replaced / debian.MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(DebianError, match=r"Translation-en\.txt\.xz: decompressed sha256 \w+ differs from"):
        debian.read_pinned_snapshot(replaced, tmp_path / "out.txt")

    truncated = write_pinned(tmp_path / "truncated", TRANSLATION)
    xz_path = truncated / debian.PINNED_FILE
    xz_path.write_bytes(xz_path.read_bytes()[:40])
    with pytest.raises(DebianError, match=r"not a readable xz file .*restore it from git"):
        debian.read_pinned_snapshot(truncated, tmp_path / "out.txt")

    no_keys = write_pinned(tmp_path / "no-keys", TRANSLATION)
    (no_keys / debian.MANIFEST_FILE).write_text('{"sha256": "0"}')
    with pytest.raises(DebianError, match=r"SNAPSHOT\.json: missing key\(s\) xz_sha256, fetched_at"):
        debian.read_pinned_snapshot(no_keys, tmp_path / "out.txt")

    (tmp_path / "empty").mkdir()
    with pytest.raises(DebianError, match=r"snapshot is missing; restore it .*ingest\.source: debian-live"):
        debian.check_pinned_snapshot(tmp_path / "empty")


@pytest.mark.parametrize(
    ("index_file", "suite"),
    [
        ("deb.debian.org_debian_dists_bookworm_main_i18n_Translation-en.lz4", "bookworm"),
        ("deb.debian.org_debian_dists_bookworm-updates_main_i18n_Translation-en.lz4", "bookworm-updates"),
        (
            "deb.debian.org_debian-security_dists_bookworm-security_main_i18n_Translation-en",
            "bookworm-security",
        ),
        ("mirror_dists_trixie_non-free-firmware_i18n_Translation-en.gz", "trixie"),
        ("unrelated.txt", ""),
    ],
)
def test_suite_of_reads_the_suite_from_the_apt_list_name(index_file: str, suite: str) -> None:
    assert debian.suite_of(index_file) == suite


def test_the_shipped_snapshot_matches_its_manifest(tmp_path: Path) -> None:
    """What every clone reads: the committed xz file decompresses to the bytes its manifest names."""
    pinned = REPO_ROOT / "corpora" / "debian"
    manifest = json.loads((pinned / debian.MANIFEST_FILE).read_text(encoding="utf-8"))

    snapshot, _ = debian.read_pinned_snapshot(pinned, tmp_path / "Translation-en.txt")
    records, num_stanzas = read_snapshot(snapshot.path)

    assert hashlib.sha256((pinned / debian.PINNED_FILE).read_bytes()).hexdigest() == manifest["xz_sha256"]
    assert (snapshot.num_bytes, num_stanzas, len(records)) == (
        manifest["bytes"],
        manifest["records"],
        manifest["packages"],
    )
    assert manifest["suites"] == [debian.suite_of(name) for name in manifest["apt_index_files"]]
    assert len(manifest["apt_releases"]) == len(manifest["suites"])


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs the apt client and the Debian archive")
def test_pin_snapshot_fetches_the_live_index_and_reads_back(tmp_path: Path) -> None:
    manifest = debian.pin_snapshot(tmp_path / "pinned", preset=0)  # a fast preset: same bytes, larger file

    snapshot, read_manifest = debian.read_pinned_snapshot(tmp_path / "pinned", tmp_path / "out.txt")

    assert read_manifest == manifest and snapshot.sha256 == manifest["sha256"]
    assert manifest["packages"] > 10_000 and manifest["records"] >= manifest["packages"]
    assert all(manifest["suites"]) and manifest["fetched_at"].endswith("+00:00")
