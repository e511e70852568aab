"""PatchCore and PaDiM, fitted on generated data, exported end to end.

Proves for both methods: the export works and passes the static checks; onnxruntime
agrees with torch on validation images (normalised score within 1e-3, map within
1e-2, same task); tampered bundles are refused; a bank-only refresh scores exactly
like a full re-export.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from linewatch.edge.model.bundle import SCHEMA_VERSION, BundleError, check_golden, open_bundle
from linewatch.export.bundle_writer import write_bundle
from linewatch.export.parity import compare, ort_infer, ort_session, torch_infer
from linewatch.export.run_source import load_run_for_export

pytestmark = pytest.mark.slow
METHODS = ("patchcore", "padim")
TASKS = ("brick", "gravel")  # as fitted by conftest.fitted_runs
IMAGE_HW = (64, 64)
MAX_BATCH = 4


@pytest.fixture(scope="module")
def exported(fitted_runs, signing_keys, tmp_path_factory):
    """(run export, written bundle, registry) per method, exported once."""
    cache: dict[str, tuple] = {}

    def get(method: str):
        if method not in cache:
            reg = tmp_path_factory.mktemp(f"registry-{method}")
            run = load_run_for_export(fitted_runs(method))
            written = write_bundle(
                run.graph,
                reg / f"{method}-v1",
                info=run.info,
                golden_inputs=run.golden_inputs,
                sign_key=signing_keys[0],
                max_batch=MAX_BATCH,
            )
            cache[method] = (run, written, reg)
        return cache[method]

    return get


@pytest.fixture(scope="module")
def validation_frames(generated_data: Path) -> np.ndarray:
    from linewatch.trainer.data import load_task, read_images

    paths = [s.path for t in TASKS for s in load_task(f"mvtec:{generated_data}", t).test]
    return read_images(paths, IMAGE_HW)


def _ort(bundle):
    session = ort_session(bundle.onnx_path)
    return lambda frames: ort_infer(session, bundle.data_inputs, frames, batch_size=MAX_BATCH)


@pytest.mark.parametrize("method", METHODS)
def test_export_passes_the_static_checks(exported, method: str) -> None:
    _, written, _ = exported(method)
    assert written.static is not None and written.static.ok, written.static.as_manifest()
    assert written.onnx.exporter == "dynamo" and written.onnx.opset == 17
    m = written.manifest
    assert (m["method"], m["tasks"], m["backbone"]) == (method, list(TASKS), "tf_efficientnet_lite0")
    assert m["metrics"]["final"]["image_auroc"] is not None
    assert set(m["provenance"]["image_counts"]) == set(TASKS)
    assert m["golden"]["source"].startswith("test images") and m["golden"]["n"] == 4
    assert m["calibration"]["slots"] and m["export"]["golden_parity"]["ok"]
    largest = m["export"]["static_checks"]["largest_intermediate"]
    assert 0 < largest["elements"] < 2**31


@pytest.mark.parametrize("method", METHODS)
def test_onnxruntime_matches_torch_on_validation_images(exported, validation_frames, method: str) -> None:
    run, written, _ = exported(method)
    bundle = open_bundle(written.path)
    reference = torch_infer(run.graph, validation_frames, batch_size=MAX_BATCH)
    report = compare(reference, _ort(bundle)(validation_frames), atol_score=1e-3, atol_map=1e-2)
    assert report.ok, str(report)
    assert report.n == len(validation_frames) == 16
    # The scores mean something: defects score higher than good parts on average.
    assert np.isfinite(reference[1]).all()
    assert check_golden(bundle, _ort(bundle)).ok


@pytest.mark.parametrize("method", METHODS)
def test_tampered_bundles_are_refused(exported, signing_keys, tmp_path: Path, method: str) -> None:
    _, written, _ = exported(method)
    pub = signing_keys[1]

    def copy() -> Path:
        dst = tmp_path / f"copy{len(list(tmp_path.iterdir()))}"
        shutil.copytree(written.path, dst)
        return dst

    def refused(path: Path, check: str, **kw) -> None:
        with pytest.raises(BundleError) as info:
            open_bundle(path, **kw)
        assert info.value.check == check, str(info.value)

    assert open_bundle(copy(), key=pub, require_signature=True).signature_verified

    b = copy()  # a byte flipped in model.onnx
    data = bytearray((b / "model.onnx").read_bytes())
    data[len(data) // 3] ^= 0xFF
    (b / "model.onnx").write_bytes(bytes(data))
    refused(b, "files", key=pub)

    b = copy()  # a bank swapped in: same shape, other values
    first = written.manifest["data_inputs"][0]["file"]
    arr = np.load(b / first, allow_pickle=False)
    np.save(b / first, (arr + 1).astype(arr.dtype), allow_pickle=False)
    refused(b, "files", key=pub)

    b = copy()  # manifest edited after signing
    m = json.loads((b / "manifest.json").read_text())
    m["threshold"] = 0.99
    (b / "manifest.json").write_text(json.dumps(m, indent=2))
    refused(b, "signature", key=pub)

    b = copy()  # unsigned when a key is required
    (b / "manifest.sig").unlink()
    refused(b, "signature", key=pub, require_signature=True)

    b = copy()  # a newer schema
    m = json.loads((b / "manifest.json").read_text())
    m["schema_version"] = SCHEMA_VERSION + 1
    (b / "manifest.json").write_text(json.dumps(m))
    refused(b, "schema")


def _outputs(bundle, frames):
    return _ort(bundle)(frames)


def test_patchcore_bank_only_refresh_scores_like_the_full_export(
    exported, signing_keys, validation_frames
) -> None:
    run, written, reg = exported("patchcore")
    refresh = write_bundle(
        run.graph,
        reg / "patchcore-v2",
        info=run.info,
        golden_inputs=run.golden_inputs,
        sign_key=signing_keys[0],
        bank_only=True,
    )
    assert refresh.version == 2 and not (refresh.path / "model.onnx").exists()
    applied = open_bundle(refresh.path, key=signing_keys[1])
    full = open_bundle(written.path, key=signing_keys[1])
    assert applied.graph_sha256 == full.graph_sha256 and applied.engines == full.engines
    for a, b in zip(_outputs(applied, validation_frames), _outputs(full, validation_frames), strict=True):
        assert np.array_equal(a, b)


def test_padim_refresh_from_a_new_run(
    exported, signing_keys, validation_frames, tmp_path_factory, fit_method, data_layout
) -> None:
    """A real refresh: PaDiM refitted on more images; same graph, new Gaussians."""
    from linewatch.trainer.data.generate import generate_dataset

    _, written, reg = exported("padim")
    data2 = tmp_path_factory.mktemp("padim-more-data")
    generate_dataset(data2, list(TASKS), n_train=16, n_test_good=2, n_test_defect=2, size=IMAGE_HW[0], seed=1)
    assert data_layout == (TASKS, IMAGE_HW)
    run2 = load_run_for_export(fit_method("padim", data2, tmp_path_factory.mktemp("padim-run2") / "run"))

    refresh = write_bundle(
        run2.graph,
        reg / "padim-v2",
        info=run2.info,
        golden_inputs=run2.golden_inputs,
        sign_key=signing_keys[0],
        bank_only=True,
    )
    assert refresh.manifest["bank_only"]["base_version"] == 1
    full_reg = tmp_path_factory.mktemp("padim-full")
    full = write_bundle(run2.graph, full_reg / "padim", info=run2.info, golden_inputs=run2.golden_inputs)
    applied = open_bundle(refresh.path, key=signing_keys[1])
    assert check_golden(applied, _ort(applied)).ok
    full_bundle = open_bundle(full.path)
    assert full_bundle.graph_sha256 == applied.graph_sha256
    new_out = _outputs(applied, validation_frames)
    for a, b in zip(new_out, _outputs(full_bundle, validation_frames), strict=True):
        assert np.array_equal(a, b)
    assert not np.array_equal(new_out[0], _outputs(open_bundle(written.path), validation_frames)[0])
