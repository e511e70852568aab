"""The bundle writer: manifest contents, versions, atomic writes, golden proof, bank-only refresh."""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest

import linewatch.export.bundle_writer as bw
from linewatch.contract.geometry import Geometry
from linewatch.edge.model.bundle import check_golden, open_bundle, sha256_file
from linewatch.edge.model.signing import load_key
from linewatch.export.onnx_export import ExportError
from linewatch.export.parity import ort_infer, ort_session
from linewatch.export.toy import toy_frames, toy_scoring_graph, write_toy_bundle
from linewatch.trainer.methods.base import ScoringGraph


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, signing_keys: tuple[Path, Path]) -> Path:
    reg = tmp_path_factory.mktemp("writer-registry")
    write_toy_bundle(reg / "toy-v1", sign_key=signing_keys[0], tar=True)
    return reg


def _ort_outputs(bundle, frames):
    return ort_infer(ort_session(bundle.onnx_path), bundle.data_inputs, frames)


def _refreshed(graph: ScoringGraph, scale: float = 1.1) -> ScoringGraph:
    data = dict(graph.data_inputs)
    data["bank"] = (data["bank"] * scale).astype(np.float32)
    return ScoringGraph(graph.module, data, graph.input_hw, graph.meta)


def test_manifest_carries_the_contract(registry: Path, signing_keys: tuple[Path, Path]) -> None:
    root = registry / "toy-v1"
    m = json.loads((root / "manifest.json").read_text())
    assert m["schema_version"] == 1 and m["model"] == {"name": "toy", "version": 1}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", m["created"])
    assert (m["method"], m["strategy"], m["backbone"], m["tasks"]) == (
        "toy",
        "cl",
        "toy-conv",
        ["task0", "task1"],
    )
    assert m["input"] == {
        "height": 32,
        "width": 32,
        "channels": 3,
        "color": "RGB",
        "dtype": "uint8",
        "layout": "NHWC",
        "max_batch": 8,
    }
    assert m["outputs"] == {"anomaly_map": ["batch", 32, 32], "score": ["batch"], "task": ["batch"]}
    assert [d["name"] for d in m["data_inputs"]] == ["bank", "norm"]
    assert m["data_inputs"][0] == {
        "name": "bank",
        "file": "bank.npy",
        "shape": [2, 48, 16],
        "dtype": "float32",
    }
    assert m["threshold"] == 0.5 and m["calibration"]["kind"] == "max-good"
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert set(m["files"]) == on_disk - {"manifest.json", "manifest.sig"}
    assert all(sha256_file(root / rel) == digest for rel, digest in m["files"].items())
    assert (
        m["golden"]["atol_score"] == 1e-3 and m["golden"]["atol_map"] == 1e-2 and 2 <= m["golden"]["n"] <= 4
    )
    assert m["engines"] == [] and m["bank_only"] is None
    assert m["provenance"]["code"] is None or len(m["provenance"]["code"]["commit"]) == 40
    assert m["export"]["exporter"] == "dynamo" and m["export"]["golden_parity"]["ok"]
    assert all(c["ok"] for c in m["export"]["static_checks"].values())
    sig = json.loads((root / "manifest.sig").read_text())
    assert sig["alg"] == "ed25519" and sig["key_id"] == load_key(signing_keys[1]).key_id
    for p in root.rglob("*.npy"):
        np.load(p, allow_pickle=False)  # no pickles anywhere
    assert not [p for p in registry.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_tar_holds_the_same_bundle(registry: Path, signing_keys: tuple[Path, Path]) -> None:
    with tarfile.open(registry / "toy-v1.tar") as tf:
        names = {m.name for m in tf.getmembers()}
    assert "manifest.json" in names and "model.onnx" in names and "golden/maps.npy" in names
    assert open_bundle(registry / "toy-v1.tar", key=signing_keys[1]).version == 1


def _fake_bundle(path: Path, name: str, version: int) -> None:
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"model": {"name": name, "version": version}}))


def test_version_resolution(tmp_path: Path) -> None:
    reg = tmp_path / "reg"
    _fake_bundle(reg / "toy-v000003", "toy", 3)
    _fake_bundle(reg / "toy-v000005", "toy", 5)
    _fake_bundle(reg / "other-v000009", "other", 9)
    _fake_bundle(reg / ".incoming-x", "toy", 99)  # hidden: never counted
    assert bw.resolve_version(reg / "toy-new", "toy") == 6
    assert bw.resolve_version(reg / "other-new", "other") == 10
    assert bw.resolve_version(reg / "fresh", "fresh") == 1
    assert bw.resolve_version(tmp_path / "ws" / "b", "toy", store=reg) == 6
    assert bw.resolve_version(tmp_path / "ws" / "b", "toy", base_version=7) == 8
    _fake_bundle(tmp_path / "ws" / "b", "toy", 12)  # the bundle being replaced
    assert bw.resolve_version(tmp_path / "ws" / "b", "toy", store=reg) == 13
    assert bw.resolve_version(reg / "x", "toy", explicit=40) == 40
    with pytest.raises(ExportError, match="greater than 5"):
        bw.resolve_version(reg / "x", "toy", explicit=5)


def test_writer_numbers_versions_upwards(tmp_path: Path) -> None:
    reg = tmp_path / "reg"
    _fake_bundle(reg / "toy-v000004", "toy", 4)
    g = toy_scoring_graph()
    assert write_toy_bundle(reg / "b", graph=g).version == 5
    assert write_toy_bundle(reg / "b", graph=g).version == 6  # replacing b: above b's own version
    assert sorted(p.name for p in reg.iterdir()) == ["b", "toy-v000004"]  # the old b is gone, no temp left
    with pytest.raises(ExportError, match="greater than 6"):
        write_toy_bundle(reg / "c", graph=g, version=6)


def test_refused_export_leaves_nothing_and_keeps_the_old_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    g = toy_scoring_graph()
    out = tmp_path / "toy"
    write_toy_bundle(out, graph=g)
    before = (out / "manifest.json").read_bytes()

    real = bw.ort_infer

    def drifting(*args, **kwargs):
        maps, scores, tasks = real(*args, **kwargs)
        return maps, scores + np.float32(0.01), tasks

    monkeypatch.setattr(bw, "ort_infer", drifting)
    with pytest.raises(ExportError, match="disagrees with torch"):
        write_toy_bundle(out, graph=g)
    assert (out / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]


@pytest.mark.parametrize(
    "frames",
    [
        np.zeros((2, 16, 16, 3), np.uint8),
        np.zeros((2, 32, 32, 3), np.float32),
        np.zeros((0, 32, 32, 3), np.uint8),
    ],
)
def test_golden_inputs_are_validated(tmp_path: Path, frames: np.ndarray) -> None:
    with pytest.raises(ExportError, match="golden"):
        write_toy_bundle(tmp_path / "x", golden_inputs=frames)


def test_signing_needs_the_private_key(tmp_path: Path, signing_keys: tuple[Path, Path]) -> None:
    with pytest.raises(ExportError, match="public key"):
        write_toy_bundle(tmp_path / "x", sign_key=signing_keys[1])


def test_tensorrt_request_fails_fast_without_a_gpu(tmp_path: Path) -> None:
    from linewatch.edge.model.trt_build import tensorrt_available

    if tensorrt_available()[0]:
        pytest.skip("TensorRT is available here")
    with pytest.raises(ExportError, match=r"--tensorrt: .*TensorRT"):
        write_toy_bundle(tmp_path / "x", tensorrt=True)
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- bank-only refresh


def test_bank_only_refresh_scores_exactly_like_a_full_re_export(
    registry: Path, tmp_path: Path, signing_keys: tuple[Path, Path]
) -> None:
    new = _refreshed(toy_scoring_graph())
    refresh = write_toy_bundle(registry / "toy-v2", graph=new, sign_key=signing_keys[0], bank_only=True)
    m = refresh.manifest
    base = open_bundle(registry / "toy-v1")
    assert refresh.version == 2 and m["bank_only"] == {"base_version": 1, "graph_sha256": base.graph_sha256}
    assert set(m["files"]) == {
        "bank.npy",
        "norm.npy",
        *(f"golden/{k}.npy" for k in ("inputs", "scores", "maps", "tasks")),
    }
    assert m["engines"] == [] and m["input"] == base.manifest["input"]

    full_dir = tmp_path / "full"
    full_dir.mkdir()
    full = open_bundle(write_toy_bundle(full_dir / "toy-v1", graph=new).path)
    applied = open_bundle(registry / "toy-v2", key=signing_keys[1])
    assert full.graph_sha256 == applied.graph_sha256  # the very same graph
    frames = np.concatenate([toy_frames(5, (32, 32), seed=21), toy_frames(3, (32, 32), seed=22, defect=True)])
    for a, b in zip(_ort_outputs(applied, frames), _ort_outputs(full, frames), strict=True):
        assert np.array_equal(a, b)
    assert check_golden(applied, lambda f: _ort_outputs(applied, f)).ok
    # ...and differs from the base, which scores with the old bank.
    assert not np.array_equal(_ort_outputs(base, frames)[0], _ort_outputs(applied, frames)[0])


def test_bank_only_refused_when_shapes_change(registry: Path, tmp_path: Path) -> None:
    g = toy_scoring_graph(bank_size=40)
    with pytest.raises(ExportError, match="full export is needed"):
        write_toy_bundle(registry / "toy-bad", graph=g, bank_only=True)
    assert not (registry / "toy-bad").exists()


def test_bank_only_refused_when_the_graph_changed(registry: Path) -> None:
    g = toy_scoring_graph(seed=7)  # other conv weights, same data shapes
    with pytest.raises(ExportError, match="differs from the base"):
        write_toy_bundle(registry / "toy-bad", graph=g, bank_only=True, base=registry / "toy-v1")


def test_bank_only_needs_a_base(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="needs a base bundle"):
        write_toy_bundle(tmp_path / "toy-v2", bank_only=True)


def test_batch_holds_every_tile_of_the_largest_known_frame() -> None:
    """Under `auto` frames keep their own size, so the tasks' frame sizes size the batch (one call a frame)."""
    geometry = {"mode": "tile", "tile": [64, 64], "overlap": 8, "scale": 1.0, "margin": 4, "context": True}
    info = bw.BundleInfo(name="t", method="toy", tasks=["a", "b"], geometry=geometry)
    assert bw._tiles_per_frame(info, (64, 64)) == 1  # no frame size known: tiles are counted per frame
    info.frame_sizes = [(100, 180), (300, 120)]
    sizes = [Geometry.from_dict(geometry).tiles_per_frame(hw) for hw in info.frame_sizes]
    assert bw._tiles_per_frame(info, (64, 64)) == max(sizes) > 1
