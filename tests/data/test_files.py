"""Checksums, verified downloads (file:// URLs, no network), memoised digests, official-vs-local notes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from oodml.data.files import (RemoteFile, download_file, fetch_official, file_digests, files_digest,
                              note_unofficial)
from oodml.errors import OodmlError


def _remote(src: Path, md5: str | None = None, sha256: str | None = None, name: str = "thing.bin") -> RemoteFile:
    return RemoteFile(name, src.as_uri(), md5=md5 or hashlib.md5(src.read_bytes()).hexdigest(), sha256=sha256)


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    p = tmp_path / "src" / "payload.bin"
    p.parent.mkdir()
    p.write_bytes(b"official bytes" * 1000)
    return p


def test_file_digests_match_hashlib_and_are_memoised(payload: Path) -> None:
    d = file_digests(payload)
    assert d == {"md5": hashlib.md5(payload.read_bytes()).hexdigest(),
                 "sha256": hashlib.sha256(payload.read_bytes()).hexdigest()}
    payload.write_bytes(b"changed")  # new size/mtime -> recomputed, not served from the memo
    assert file_digests(payload)["md5"] == hashlib.md5(b"changed").hexdigest()


def test_download_verifies_checksums(payload: Path, tmp_path: Path) -> None:
    sha = hashlib.sha256(payload.read_bytes()).hexdigest()
    got = download_file(_remote(payload, sha256=sha), tmp_path / "root")
    assert got.read_bytes() == payload.read_bytes() and got.name == "thing.bin"


@pytest.mark.parametrize("bad", ["md5", "sha256"])
def test_download_with_wrong_checksum_is_rejected_and_removed(payload: Path, tmp_path: Path, bad: str) -> None:
    remote = _remote(payload, md5="0" * 32) if bad == "md5" else _remote(payload, sha256="0" * 64)
    with pytest.raises(OodmlError, match="retry later|expected"):
        download_file(remote, tmp_path / "root")
    assert list((tmp_path / "root").iterdir()) == []


def test_download_of_missing_url_is_a_clean_error(tmp_path: Path) -> None:
    remote = RemoteFile("x.bin", (tmp_path / "absent.bin").as_uri(), md5="0" * 32)
    with pytest.raises(OodmlError, match="download of .* failed"):
        download_file(remote, tmp_path / "root")


def test_fetch_official_downloads_into_an_empty_root(payload: Path, tmp_path: Path) -> None:
    root = tmp_path / "data" / "ds"
    fetch_official("ds", [_remote(payload)], root, "thing.bin")
    assert (root / "thing.bin").read_bytes() == payload.read_bytes()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "junk.txt").write_text("x")
    with pytest.raises(OodmlError, match="dataset ds not found in .*other"):  # non-empty root: never overwritten
        fetch_official("ds", [_remote(payload)], tmp_path / "other", "thing.bin")


def test_note_unofficial_one_line_only_for_odd_files(payload: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    official = _remote(payload, name="payload.bin")
    note_unofficial("ds", [payload], [official])
    assert capsys.readouterr().err == ""
    odd = tmp_path / "payload_copy.bin"
    odd.write_bytes(b"rebuilt")
    note_unofficial("ds", [payload, odd], [official])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "payload_copy.bin" in err and "payload.bin," not in err


def test_files_digest_depends_on_bytes(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"1")
    (tmp_path / "b").write_bytes(b"2")
    h = files_digest(tmp_path, ["a", "b"])
    assert h != files_digest(tmp_path, ["a"])
    (tmp_path / "b").write_bytes(b"3")
    assert files_digest(tmp_path, ["a", "b"]) != h


def test_note_unofficial_once_per_process(payload: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a grid loads the dataset once per cell: the note about the same archives is logged once, not per cell
    official = _remote(payload, name="payload.bin")
    odd = tmp_path / "rebuilt.bin"
    odd.write_bytes(b"rebuilt")
    for _ in range(3):
        note_unofficial("ds", [odd], [official])
    assert capsys.readouterr().err.count("checksum differs") == 1
