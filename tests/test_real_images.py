"""Real defects on real parts, CI-sized: the default pipeline must find them, and the box must score
exactly what the trainer evaluated.

A seeded subset of two dev-set tasks (``../shared/devset``: ball-screw pitting on 1130x460 frames,
hairline cracks on about 500x1260 commutator frames) is learnt as one continual model through
``linewatch-train fit`` + ``update`` with no flags beyond ``--data`` and ``--tasks``. Then:

1. ``auto`` chose each camera's geometry (resize or tile) on that task's training images, said why,
   and recorded it in run.json, metrics.json and the manifest;
2. each task stays above a floor set from measurements on this subset (see FLOORS): a pipeline
   that squeezes these frames to 256x256 again falls below it;
3. the native-resolution test frames (their original JPEG bytes) go through a ``dir:`` camera into
   the real edge runtime and a real mosquitto; every MQTT verdict equals the trainer's ``predict``
   on the same file (score within SCORE_TOL), and the image AUROC computed from the MQTT results
   equals metrics.json's within 0.005.

Skipped, with the reason, where the dev set is absent. Slow: a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from polling import wait_for

pytest.importorskip("torch", reason="the trainer and the exporter need torch")
pytest.importorskip("onnxruntime", reason="the edge runs the graph in onnxruntime")

DEVSET = Path(os.environ.get("LINEWATCH_DEVSET", Path(__file__).resolve().parents[2] / "shared" / "devset"))
pytestmark = [
    pytest.mark.timeout(2400),  # the module fixture trains two tasks: minutes on a loaded 2-core machine
    pytest.mark.slow,
    pytest.mark.skipif(not DEVSET.is_dir(), reason=f"the real-image dev set is not at {DEVSET}"),
]

TASKS = [("bsdata", "ball_screw"), ("kolektor", "commutator")]
N_TRAIN, N_GOOD, N_DEFECT = 20, 8, 8
# Image AUROC floors on this subset, from measurements (2026-11-29, this subset, CLI defaults):
#   auto (tiles at scale 0.75): ball_screw 0.797, commutator 0.969
#   --geometry resize (squeezed to 256x256): ball_screw 0.906, commutator 0.813
# The commutator floor is what a revert to squeezing fails: hairline cracks vanish at 256 px. Pitting
# is visible at 256 px and tiling costs it (see the issue 11 note); its floor guards against collapse.
FLOORS = {"ball_screw": 0.70, "commutator": 0.90}
SCORE_TOL = 2e-3  # onnxruntime vs torch on the same tiles: float32 rounding through the kNN


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core machine, several times faster than two
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from linewatch.trainer.data.subset import link_subset

    out = tmp_path_factory.mktemp("devset-subset")
    for root, task in TASKS:
        link_subset(DEVSET / root / task, out / root / task, N_TRAIN, N_GOOD, N_DEFECT)
    return out


@pytest.fixture(scope="module")
def run(subset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    """The default pipeline, as a user types it: fit the first task, update with the second."""
    import contextlib
    import io

    from linewatch.trainer.cli import main

    run_dir = tmp_path_factory.mktemp("runs") / "default"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        (root, first), (root2, second) = TASKS
        assert main(["fit", "--data", f"mvtec:{subset / root}", "--tasks", first, "--out", str(run_dir)]) == 0
        assert (
            main(["update", "--run", str(run_dir), "--data", f"mvtec:{subset / root2}", "--tasks", second])
            == 0
        )
    return run_dir, json.loads((run_dir / "metrics.json").read_text()), printed.getvalue()


@pytest.fixture(scope="module")
def bundle(run: tuple[Path, dict, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from linewatch.export.cli import main

    out = tmp_path_factory.mktemp("store") / "default-v1"
    assert main(["--run", str(run[0]), "--out", str(out)]) == 0
    return out


def test_auto_chooses_each_cameras_geometry_on_training_images_and_says_why(
    run: tuple[Path, dict, str], bundle: Path
) -> None:
    from linewatch.contract.geometry import Geometry

    run_dir, metrics, printed = run
    saved = json.loads((run_dir / "state" / "run.json").read_text())["config"]["geometry"]
    print(f"\nauto on the CI subset: {[(e['tasks'], e['reason']) for e in saved['by_size']]}")
    assert saved["auto"] is True and saved["learn_frame_size"] is False
    assert "squeezed" in saved["reason"] and f"geometry: {saved['reason']}" in printed
    entries = {tuple(e["tasks"]): e for e in saved["by_size"]}
    assert set(entries) == {(task,) for _, task in TASKS}
    for (task,), entry in entries.items():
        # large frames: resize and tile were both fitted on training images and compared
        assert "validated on 10 held-out training frames" in entry["reason"], entry["reason"]
        assert entry["reason"].endswith(f": {entry['mode']}") and f"geometry for {task}: " in printed
    assert metrics["geometry"]["by_size"] == saved["by_size"]
    manifest = json.loads((bundle / "manifest.json").read_text())
    shipped = {tuple(e["tasks"]): (e["mode"], e["reason"]) for e in manifest["geometry"]["by_size"]}
    assert shipped == {k: (e["mode"], e["reason"]) for k, e in entries.items()}
    # the box cuts each camera exactly as the trainer evaluated it
    assert Geometry.from_dict(manifest["geometry"]) == Geometry.from_dict(metrics["geometry"])
    assert manifest["geometry"]["frame_size"] is None  # every frame cut at its own size


def test_default_pipeline_finds_real_defects(run: tuple[Path, dict, str]) -> None:
    _, metrics, _ = run
    last = dict(zip(metrics["tasks"], metrics["matrix"]["image_auroc"][-1], strict=True))
    print(f"\nreal-image subset, image AUROC after both tasks: {last}; forgetting {metrics['forgetting']}")
    for task, floor in FLOORS.items():
        assert last[task] >= floor, (task, last[task], floor)
    assert metrics["forgetting"]["image_auroc"] <= 0.02
    assert all(
        v is not None and v > 0.5 for v in metrics["matrix"]["aupro"][-1]
    )  # masks exist: AU-PRO reported


def test_the_edge_scores_native_frames_exactly_as_the_trainer(
    run: tuple[Path, dict, str],
    bundle: Path,
    subset: Path,
    mqtt_broker: Any,
    mqtt_recorder: Any,
    tmp_path: Path,
) -> None:
    from linewatch.edge.config import load_config
    from linewatch.edge.publish import payloads
    from linewatch.edge.runtime import EdgeRuntime
    from linewatch.trainer import metrics as M
    from linewatch.trainer.data import load_task, read_images
    from linewatch.trainer.runs import load_run

    run_dir, metrics, _ = run
    camera = tmp_path / "camera"
    camera.mkdir()
    truth: dict[str, tuple[str, int, Path]] = {}
    for root, task in TASKS:
        for s in load_task(f"mvtec:{subset / root}", task).test:
            name = f"{task}__{s.defect_type}__{s.path.name}"
            shutil.copyfile(s.path.resolve(), camera / name)  # the original JPEG bytes, at native size
            truth[name] = (task, s.label, s.path)
    rec = mqtt_recorder(["linewatch/#"])
    cfg = load_config(
        None,
        {
            "mqtt": {"url": mqtt_broker.url, "reconnect_min_s": 0.05, "reconnect_max_s": 0.5},
            "outbox": {"path": str(tmp_path / "outbox.sqlite"), "drain_timeout_s": 30},
            "publish": {"mode": "every_frame"},
        },
    )
    rt = EdgeRuntime(cfg, bundle, [f"dir:{camera}"])
    rt.start()

    def results() -> dict[str, dict]:
        docs = [r for r in rec.json("cam0/result") if r["schema"] == payloads.RESULT]
        return {d["source"]["file"]: d for d in docs}

    try:
        wait_for(lambda: len(results()) >= len(truth), 900, what=f"{len(truth)} verdicts over MQTT")
    finally:
        rt.shutdown()
    docs = results()
    assert set(docs) == set(truth)

    learner, _ = load_run(run_dir)
    last = dict(zip(metrics["tasks"], metrics["matrix"]["image_auroc"][-1], strict=True))
    for _, task in TASKS:
        names = sorted(n for n in truth if truth[n][0] == task)
        frames = read_images([truth[n][2] for n in names], None)  # native size, as the camera wrote them
        expected = learner.predict(task, frames).scores
        edge = np.array([docs[n]["score"] for n in names])
        worst = float(np.abs(edge - expected).max())
        print(f"\n{task}: edge vs trainer max |score difference| {worst:.2e} over {len(names)} native frames")
        assert worst <= SCORE_TOL
        verdicts = [docs[n]["anomalous"] for n in names]
        assert verdicts == [bool(s >= 0.5) for s in expected]
        labels = np.array([truth[n][1] for n in names])
        assert abs(M.auroc(labels, edge) - last[task]) <= 0.005
        for n in names:  # regions in the camera's own pixels
            doc = docs[n]
            w, h = doc["frame_size"]["width"], doc["frame_size"]["height"]
            assert all(
                r["bbox"][0] + r["bbox"][2] <= w and r["bbox"][1] + r["bbox"][3] <= h for r in doc["regions"]
            )
