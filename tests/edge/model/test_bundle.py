"""The bundle contract as the edge enforces it: every check refuses what it must, and says which.

Bundles here are real (written by the exporter from the toy scoring graph: a real ONNX
graph, real golden samples), then tampered with the way an attacker or a broken copy
would.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from linewatch.edge.model.bundle import SCHEMA_VERSION, BundleError, check_golden, open_bundle, sha256_file
from linewatch.edge.model.signing import generate_hmac_key, generate_keypair

pytest.importorskip("torch", reason="writing bundles needs the exporter (torch)")
pytest.importorskip("onnxruntime", reason="golden checks run the graph in onnxruntime")

from linewatch.export.parity import ort_infer, ort_session
from linewatch.export.toy import toy_scoring_graph, write_toy_bundle


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    priv, pub = generate_keypair(d / "main")
    _other_priv, other_pub = generate_keypair(d / "other")
    return {"priv": priv, "pub": pub, "other_pub": other_pub, "hmac": generate_hmac_key(d / "shared.hmac")}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path]) -> Path:
    """A registry with a signed v1 bundle and its tar."""
    reg = tmp_path_factory.mktemp("registry")
    write_toy_bundle(reg / "toy-v1", sign_key=keys["priv"], tar=True)
    return reg


@pytest.fixture
def bundle(registry: Path, tmp_path: Path) -> Path:
    """A private copy of the signed bundle, free to tamper with."""
    dst = tmp_path / "toy-v1"
    shutil.copytree(registry / "toy-v1", dst)
    return dst


def _ort(b):
    session = ort_session(b.onnx_path)
    return lambda frames: ort_infer(session, b.data_inputs, frames)


def _expect(check: str, *args, **kwargs) -> BundleError:
    with pytest.raises(BundleError) as info:
        open_bundle(*args, **kwargs)
    assert info.value.check == check, str(info.value)
    assert f"{check} check failed" in str(info.value)
    return info.value


def _rewrite_manifest(root: Path, edit) -> None:
    m = json.loads((root / "manifest.json").read_text())
    edit(m)
    (root / "manifest.json").write_text(json.dumps(m, indent=2))


def _rehash(root: Path, rel: str) -> None:
    _rewrite_manifest(root, lambda m: m["files"].__setitem__(rel, sha256_file(root / rel)))


# --------------------------------------------------------------------------- accepted


def test_open_signed_bundle_exposes_the_contract(bundle: Path, keys: dict[str, Path]) -> None:
    b = open_bundle(bundle, key=keys["pub"], require_signature=True)
    assert b.signature_verified and b.key_id
    assert (b.name, b.version, b.input_hw, b.max_batch) == ("toy", 1, (32, 32), 8)
    assert b.tasks == ["task0", "task1"] and b.threshold == 0.5
    assert list(b.data_inputs) == ["bank", "norm"]
    assert [e["name"] for e in b.manifest["data_inputs"]] == ["bank", "norm"]
    assert b.onnx_path == bundle / "model.onnx" and not b.is_bank_only and b.engines == []
    g = b.golden
    assert g.inputs.dtype == np.uint8 and g.inputs.shape[1:] == (32, 32, 3) and 2 <= len(g.inputs) <= 4
    assert g.maps.shape == (len(g.inputs), 32, 32) and g.scores.shape == g.tasks.shape == (len(g.inputs),)
    assert (g.atol_score, g.atol_map) == (1e-3, 1e-2)
    assert b.graph_sha256 == sha256_file(bundle / "model.onnx")


def test_unsigned_open_without_key_is_allowed(bundle: Path) -> None:
    b = open_bundle(bundle)
    assert not b.signature_verified


def test_golden_samples_pass_on_onnxruntime(bundle: Path) -> None:
    b = open_bundle(bundle)
    report = check_golden(b, _ort(b))
    assert report.ok and report.max_score_error < 1e-5 and report.max_map_error < 1e-5
    assert report.task_mismatches == 0 and report.n == len(b.golden.inputs)


def test_golden_chunks_by_batch(bundle: Path) -> None:
    b = open_bundle(bundle)
    seen: list[int] = []
    infer = _ort(b)

    def spy(frames):
        seen.append(len(frames))
        return infer(frames)

    check_golden(b, spy, batch_size=2)
    assert max(seen) <= 2 and sum(seen) == len(b.golden.inputs)


@pytest.mark.parametrize(
    ("what", "delta"),
    [("map", 0.02), ("score", 2e-3), ("nan", float("nan"))],
)
def test_golden_refuses_a_backend_that_differs(bundle: Path, what: str, delta: float) -> None:
    b = open_bundle(bundle)
    infer = _ort(b)

    def off(frames):
        maps, scores, tasks = infer(frames)
        if what in ("map", "nan"):
            maps = maps + np.float32(delta)
        else:
            scores = scores + np.float32(delta)
        return maps, scores, tasks

    with pytest.raises(BundleError) as info:
        check_golden(b, off)
    assert info.value.check == "golden"


def test_open_tar(registry: Path, keys: dict[str, Path]) -> None:
    b = open_bundle(registry / "toy-v1.tar", key=keys["pub"])
    assert b.version == 1 and b.signature_verified
    assert b.root.parent.name == ".toy-v1.tar.extracted"  # cached beside the tar, not inside it
    assert open_bundle(registry / "toy-v1.tar").root == b.root  # re-opening reuses the extraction


# --------------------------------------------------------------------------- refused, in check order


def test_missing_manifest(bundle: Path) -> None:
    (bundle / "manifest.json").unlink()
    _expect("manifest", bundle)


def test_manifest_not_json(bundle: Path) -> None:
    (bundle / "manifest.json").write_text("{not json")
    _expect("manifest", bundle)


def test_newer_schema_asks_to_upgrade_the_edge(bundle: Path) -> None:
    _rewrite_manifest(bundle, lambda m: m.__setitem__("schema_version", SCHEMA_VERSION + 1))
    err = _expect("schema", bundle)
    assert "upgrade the edge" in str(err)


def test_missing_required_key(bundle: Path) -> None:
    _rewrite_manifest(bundle, lambda m: m.pop("golden"))
    err = _expect("keys", bundle)
    assert "golden" in str(err)


def test_byte_flipped_in_model_onnx(bundle: Path, keys: dict[str, Path]) -> None:
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (bundle / "model.onnx").write_bytes(bytes(data))
    err = _expect("files", bundle, key=keys["pub"])
    assert "model.onnx" in str(err)


def test_bank_swapped_in(bundle: Path, keys: dict[str, Path]) -> None:
    bank = np.load(bundle / "bank.npy")
    np.save(bundle / "bank.npy", (bank * 0.5).astype(bank.dtype), allow_pickle=False)
    _expect("files", bundle, key=keys["pub"])
    # Updating the hash as well only moves the refusal to the signature.
    _rehash(bundle, "bank.npy")
    _expect("signature", bundle, key=keys["pub"])


def test_listed_file_missing(bundle: Path) -> None:
    (bundle / "golden" / "maps.npy").unlink()
    _expect("files", bundle)


def test_manifest_path_traversal(bundle: Path) -> None:
    _rewrite_manifest(bundle, lambda m: m["files"].__setitem__("../outside.npy", "0" * 64))
    _expect("files", bundle)


def test_unlisted_array(bundle: Path) -> None:
    np.save(bundle / "extra.npy", np.zeros(3, np.float32))
    err = _expect("unlisted", bundle)
    assert "extra.npy" in str(err)


def test_unlisted_plan(bundle: Path) -> None:
    (bundle / "engine.fp16.gpu.trt10.plan").write_bytes(b"not a real plan")
    _expect("unlisted", bundle)


def test_manifest_edited_after_signing(bundle: Path, keys: dict[str, Path]) -> None:
    _rewrite_manifest(bundle, lambda m: m.__setitem__("threshold", 0.9))
    err = _expect("signature", bundle, key=keys["pub"])
    assert "changed after signing" in str(err)


def test_unsigned_bundle_refused_when_a_key_is_given(bundle: Path, keys: dict[str, Path]) -> None:
    (bundle / "manifest.sig").unlink()
    err = _expect("signature", bundle, key=keys["pub"])
    assert "unsigned" in str(err)


def test_signature_required_without_a_key(bundle: Path) -> None:
    _expect("signature", bundle, require_signature=True)


def test_signed_with_another_key(bundle: Path, keys: dict[str, Path]) -> None:
    err = _expect("signature", bundle, key=keys["other_pub"])
    assert "key id" in str(err)


def test_malformed_signature(bundle: Path, keys: dict[str, Path]) -> None:
    (bundle / "manifest.sig").write_text("{}")
    _expect("signature", bundle, key=keys["pub"])


def _pickled_npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([{"evil": 1}, None], dtype=object), allow_pickle=True)
    return buf.getvalue()


def test_pickled_data_input_refused(bundle: Path) -> None:
    (bundle / "norm.npy").write_bytes(_pickled_npy())
    _rehash(bundle, "norm.npy")
    err = _expect("data_inputs", bundle)
    assert "pickle" in str(err)


def test_pickled_golden_refused(bundle: Path) -> None:
    (bundle / "golden" / "tasks.npy").write_bytes(_pickled_npy())
    _rehash(bundle, "golden/tasks.npy")
    _expect("golden", bundle)


def test_data_input_shape_must_match_manifest(bundle: Path) -> None:
    np.save(bundle / "bank.npy", np.zeros((2, 10, 16), np.float32), allow_pickle=False)
    _rehash(bundle, "bank.npy")
    err = _expect("data_inputs", bundle)
    assert "bank" in str(err)


def test_golden_shape_must_match_input_contract(bundle: Path) -> None:
    np.save(bundle / "golden" / "inputs.npy", np.zeros((3, 16, 16, 3), np.uint8), allow_pickle=False)
    _rehash(bundle, "golden/inputs.npy")
    _expect("golden", bundle)


# --------------------------------------------------------------------------- tar safety


def _tar_with(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w") as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


@pytest.mark.parametrize("name", ["../evil.npy", "/etc/evil.npy", "a/../../evil.npy"])
def test_tar_path_traversal_refused(tmp_path: Path, name: str) -> None:
    tar = _tar_with(tmp_path / "b.tar", [_file("manifest.json", b"{}"), _file(name)])
    _expect("tar", tar)
    assert not (tmp_path / "evil.npy").exists()


def test_tar_links_refused(tmp_path: Path) -> None:
    link = tarfile.TarInfo("model.onnx")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    tar = _tar_with(tmp_path / "b.tar", [_file("manifest.json", b"{}"), (link, None)])
    _expect("tar", tar)


def test_tampered_tar_refused(registry: Path, tmp_path: Path, keys: dict[str, Path]) -> None:
    src = registry / "toy-v1.tar"
    out = tmp_path / "toy-v1.tar"
    with tarfile.open(src) as tin, tarfile.open(out, "w") as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read()
            if m.name == "norm.npy":
                data = data[:-4] + b"\x00\x00\x80\x3f"
            tout.addfile(m, io.BytesIO(data))
    _expect("files", out, key=keys["pub"])


# --------------------------------------------------------------------------- HMAC


def test_hmac_signed_bundle(tmp_path: Path, keys: dict[str, Path]) -> None:
    out = tmp_path / "reg" / "toy-v1"
    out.parent.mkdir()
    write_toy_bundle(out, sign_key=keys["hmac"])
    sig = json.loads((out / "manifest.sig").read_text())
    assert sig["alg"] == "hmac-sha256" and set(sig) == {"alg", "key_id", "signature"}
    assert open_bundle(out, key=keys["hmac"], require_signature=True).signature_verified
    err = _expect("signature", out, key=keys["pub"])  # an Ed25519 key does not verify an HMAC bundle
    assert "algorithm" in str(err)


# --------------------------------------------------------------------------- bank-only refresh


@pytest.fixture(scope="module")
def refresh(registry: Path, keys: dict[str, Path]) -> Path:
    """A bank-only refresh (new bank values, same shapes) beside the base in the registry."""
    g = toy_scoring_graph()
    rng = np.random.default_rng(3)
    g.data_inputs["bank"] = (g.data_inputs["bank"] + rng.normal(0, 0.05, g.data_inputs["bank"].shape)).astype(
        np.float32
    )
    out = registry / "toy-v2"
    written = write_toy_bundle(out, graph=g, sign_key=keys["priv"], bank_only=True)
    assert written.version == 2
    return out


def test_bank_only_refresh_finds_its_base(refresh: Path, registry: Path, keys: dict[str, Path]) -> None:
    assert not (refresh / "model.onnx").exists()
    b = open_bundle(refresh, key=keys["pub"], require_signature=True)
    assert b.is_bank_only and b.version == 2 and b.base is not None and b.base.version == 1
    assert b.onnx_path == (registry / "toy-v1" / "model.onnx")
    assert b.graph_sha256 == b.base.graph_sha256 == b.manifest["bank_only"]["graph_sha256"]
    assert not np.array_equal(b.data_inputs["bank"], b.base.data_inputs["bank"])
    assert check_golden(b, _ort(b)).ok


def test_bank_only_refresh_with_explicit_base(refresh: Path, registry: Path, tmp_path: Path) -> None:
    alone = tmp_path / "toy-v2"
    shutil.copytree(refresh, alone)
    _expect("bank_only", alone)  # nothing beside it
    base = open_bundle(registry / "toy-v1")
    b = open_bundle(alone, base=base)
    assert b.base is base and check_golden(b, _ort(b)).ok
    assert open_bundle(alone, base=registry / "toy-v1.tar").base.version == 1


def test_bank_only_refresh_refuses_another_graph(refresh: Path, tmp_path: Path) -> None:
    other = tmp_path / "reg" / "toy-v1"
    other.parent.mkdir()
    write_toy_bundle(other, graph=toy_scoring_graph(seed=1))  # different weights, same shapes
    alone = tmp_path / "reg" / "toy-v2"
    shutil.copytree(refresh, alone)
    with pytest.raises(BundleError) as info:
        open_bundle(alone, base=other)
    assert info.value.check == "bank_only" and "graph" in str(info.value)
    _expect("bank_only", alone)  # auto-discovery skips a base with another graph hash
