"""The structure hash that lets a box refit new weights into a TensorRT engine instead of rebuilding.

It must be equal for two exports that differ only in weight values (a retrained model),
and different whenever the layers, shapes or weight names differ, because refit would
then fail or, worse, load weights into the wrong place.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from linewatch.edge.model.bundle import open_bundle, sha256_file
from linewatch.export.graph_structure import structure_sha256
from linewatch.export.onnx_export import export_onnx
from linewatch.export.toy import toy_scoring_graph, write_toy_bundle


def _export(graph, path: Path) -> Path:
    export_onnx(graph, path, max_batch=2)
    return path


def test_new_weights_keep_the_structure_new_layers_change_it(tmp_path: Path) -> None:
    a = _export(toy_scoring_graph(seed=0), tmp_path / "a.onnx")
    b = _export(toy_scoring_graph(seed=1), tmp_path / "b.onnx")
    wider = _export(toy_scoring_graph(seed=0, channels=8), tmp_path / "c.onnx")
    assert sha256_file(a) != sha256_file(b)  # the weights differ...
    assert structure_sha256(a) == structure_sha256(b)  # ...the engine's layers do not
    assert structure_sha256(a) != structure_sha256(wider)
    assert structure_sha256(a) == structure_sha256(a)  # deterministic


def test_manifest_records_structure_and_whether_engines_are_refittable(tmp_path: Path) -> None:
    written = write_toy_bundle(tmp_path / "toy-v1")
    bundle = open_bundle(written.path)
    assert bundle.manifest["refit"] == {
        "refittable": False,  # the toy is a memory-bank model: its weights never change
        "structure_sha256": structure_sha256(bundle.onnx_path),
    }
    assert bundle.structure_sha256 == structure_sha256(bundle.onnx_path)
    assert bundle.refittable is False

    graph = toy_scoring_graph(seed=3)
    graph.meta["refittable"] = True
    refittable = open_bundle(write_toy_bundle(tmp_path / "toy-v2", graph=graph).path)
    assert refittable.refittable is True
    assert refittable.structure_sha256 == bundle.structure_sha256
    assert refittable.graph_sha256 != bundle.graph_sha256


def test_bundles_from_before_refit_have_no_structure(tmp_path: Path) -> None:
    import json

    written = write_toy_bundle(tmp_path / "toy-v1")
    manifest = json.loads((written.path / "manifest.json").read_text())
    del manifest["refit"]
    bundle = open_bundle(written.path)
    bundle.manifest = manifest
    assert bundle.structure_sha256 is None and bundle.refittable is False


@pytest.mark.slow
def test_retraining_stfpm_keeps_its_structure(tmp_path: Path) -> None:
    """The real case: a trained method's refresh changes every student weight, not one layer."""
    from linewatch.trainer.methods.registry import build_method

    method = build_method(
        "stfpm", "replay", image_size=(64, 64), progress=False, steps=2, optimizer="adam", lr=1e-3
    )
    method.fit_task("noise", np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8))
    before = method.scoring_graph()
    assert before.meta["refittable"] is True
    first = _export(before, tmp_path / "v1.onnx")
    method.fit_task("more", np.random.default_rng(1).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8))
    second = _export(method.scoring_graph(), tmp_path / "v2.onnx")
    assert sha256_file(first) != sha256_file(second)
    assert structure_sha256(first) == structure_sha256(second)
