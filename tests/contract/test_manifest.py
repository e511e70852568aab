"""The manifest writer and the checks the edge runs on what it wrote."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from bundle_kit import write_tiny_bundle

from linewatch.contract import manifest as mf
from linewatch.contract.errors import BundleError


def test_written_manifest_carries_the_contract_and_passes_the_checks(tmp_path: Path) -> None:
    doc = write_tiny_bundle(tmp_path / "b", provenance={"data": "test"})
    assert mf.read_manifest(tmp_path / "b") == doc
    assert doc["schema_version"] == mf.SCHEMA_VERSION and doc["model"] == {"name": "tiny", "version": 1}
    assert doc["input"] == {
        "height": 8, "width": 8, "channels": 3, "color": "RGB", "dtype": "uint8", "layout": "NHWC", "max_batch": 2,
    }  # fmt: skip
    assert doc["outputs"]["anomaly_map"] == ["batch", 8, 8] and doc["threshold"] == 0.5
    assert doc["geometry"]["mode"] == "resize" and doc["provenance"] == {"data": "test"}
    assert doc["data_inputs"] == [{"name": "bank", "file": "bank.npy", "shape": [3, 4], "dtype": "float32"}]
    assert set(doc["files"]) == {
        "model.onnx", "bank.npy", "golden/inputs.npy", "golden/scores.npy", "golden/maps.npy", "golden/tasks.npy",
    }  # fmt: skip
    assert doc["files"]["bank.npy"] == mf.sha256_file(tmp_path / "b" / "bank.npy")
    assert doc["golden"]["n"] == 2 and doc["golden"]["atol_map"] == 0.01
    mf.check_schema(doc)
    mf.check_keys(doc)
    mf.check_files(doc, tmp_path / "b")
    mf.check_unlisted(doc, tmp_path / "b")
    assert np.load(tmp_path / "b" / "golden" / "scores.npy").tolist() == pytest.approx([0.1, 0.9])


def test_signer_gets_the_exact_manifest_bytes(tmp_path: Path) -> None:
    root = tmp_path / "b"
    write_tiny_bundle(root)
    doc = json.loads((root / mf.MANIFEST_NAME).read_bytes())
    seen: list[bytes] = []
    mf.write_manifest(root, doc, sign=lambda raw: seen.append(raw) or b"SIG")
    assert seen == [(root / mf.MANIFEST_NAME).read_bytes()]
    assert (root / mf.SIGNATURE_NAME).read_bytes() == b"SIG"
    assert mf.SIGNATURE_NAME not in json.loads(seen[0])["files"]  # the signature never hashes itself


@pytest.mark.parametrize(
    ("change", "check", "message"),
    [
        (lambda d, r: d.update(schema_version=2), mf.check_schema, "upgrade the edge"),
        (lambda d, r: d.update(schema_version="1"), mf.check_schema, "must be an integer"),
        (lambda d, r: d.pop("golden"), mf.check_keys, "lacks required keys"),
        (lambda d, r: d["input"].update(layout="NCHW"), mf.check_keys, "uint8 NHWC"),
        (lambda d, r: d.update(geometry={"mode": "tile", "frame_size": [64, 64]}), mf.check_keys, "tiles"),
        (lambda d, r: (r / "bank.npy").write_bytes(b"x"), mf.check_files, "does not match"),
        (lambda d, r: d["files"].update({"../up.npy": "0" * 64}), mf.check_files, "bad entry"),
        (lambda d, r: np.save(r / "extra.npy", np.zeros(1)), mf.check_unlisted, "extra.npy"),
    ],
)
def test_each_check_names_what_is_wrong(tmp_path: Path, change, check, message: str) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "b"
    doc = write_tiny_bundle(root)
    change(doc, root)
    args = (doc,) if check in (mf.check_schema, mf.check_keys) else (doc, root)
    with pytest.raises(BundleError, match=message):
        check(*args, root)


def test_npy_loading_refuses_pickles(tmp_path: Path) -> None:
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(BundleError, match=r"data_inputs check failed: obj\.npy: refused"):
        mf.load_npy(path, "data_inputs", tmp_path)


@pytest.mark.parametrize(
    ("rel", "ok"),
    [
        ("bank.npy", True),
        ("golden/maps.npy", True),
        ("/etc/passwd", False),
        ("a/../../b", False),
        ("a\\b", False),
    ],
)
def test_manifest_paths_stay_inside_the_bundle(rel: str, ok: bool) -> None:
    assert mf.safe_relpath(rel) is ok


def test_read_manifest_is_none_for_what_is_not_a_bundle(tmp_path: Path) -> None:
    assert mf.read_manifest(tmp_path / "absent") is None
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / mf.MANIFEST_NAME).write_text("[1, 2]")
    assert mf.read_manifest(tmp_path / "d") is None
