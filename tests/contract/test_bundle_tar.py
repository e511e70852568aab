"""A bundle as a .tar: written reproducibly, unpacked with every member checked first."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from bundle_kit import write_tiny_bundle

from linewatch.contract import manifest as mf
from linewatch.contract.bundle_tar import extract_tar, write_tar
from linewatch.contract.errors import BundleError


def test_round_trip_is_reproducible_and_reuses_its_extraction(tmp_path: Path) -> None:
    doc = write_tiny_bundle(tmp_path / "b")
    a = write_tar(tmp_path / "b", tmp_path / "a.tar", mtime=1_700_000_000)
    b = write_tar(tmp_path / "b", tmp_path / "b.tar", mtime=1_700_000_000)
    assert a.read_bytes() == b.read_bytes()
    assert mf.read_manifest(a) == doc  # scanned without extracting
    root = extract_tar(a)
    assert root.parent == tmp_path / ".a.tar.extracted"  # hidden: store scans skip it
    mf.check_files(doc, root)
    assert extract_tar(a) == root


def _tar_with(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tf:
        tf.addfile(member, io.BytesIO(data) if data else None)
    return path


def test_traversal_and_links_are_refused(tmp_path: Path) -> None:
    escape = tarfile.TarInfo("../outside.npy")
    escape.size = 1
    with pytest.raises(BundleError, match=r"tar check failed: .*escapes the bundle"):
        extract_tar(_tar_with(tmp_path, escape, b"x"))
    link = tarfile.TarInfo("model.onnx")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    with pytest.raises(BundleError, match="is a link"):
        extract_tar(_tar_with(tmp_path, link))
    assert not (tmp_path / "outside.npy").exists()
