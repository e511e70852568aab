"""The continual-learning protocol end to end through the CLI on generated data.

These train real models (Lite0 features, coresets, Gaussians) on 2 CPU cores: minutes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from linewatch.trainer.cli import main

pytestmark = pytest.mark.slow

BUDGET = {"LINEWATCH_TRAIN_PATCHCORE__BUDGET": "6000"}


@pytest.fixture(autouse=True)
def _small_budget(monkeypatch):
    for k, v in BUDGET.items():
        monkeypatch.setenv(k, v)


def _fit(data: Path, out: Path, method: str, strategy: str, tasks: str) -> dict:
    rc = main(["fit", "--data", f"mvtec:{data}", "--tasks", tasks, "--method", method, "--strategy", strategy,
               "--out", str(out), "--no-progress"])  # fmt: skip
    assert rc == 0
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def patchcore_cl(cl_dataset, tmp_path_factory):
    os.environ.update(BUDGET)
    out = tmp_path_factory.mktemp("runs") / "pc-cl"
    return out, _fit(cl_dataset, out, "patchcore", "cl", "brick,moon,camera")


def test_patchcore_cl_keeps_every_task(patchcore_cl):
    run, m = patchcore_cl
    last = m["matrix"]["image_auroc"][-1]
    assert all(v >= 0.95 for v in last), last
    assert m["forgetting"]["image_auroc"] <= 0.02
    assert m["task_inference_accuracy"] >= 0.9
    assert m["matrix"]["image_auroc"][0][1:] == [None, None]  # j > i is null
    assert m["final"]["image_auroc"] == pytest.approx(np.mean(last))
    for key in ("pixel_auroc", "pixel_aupr", "pixel_f1", "aupro", "image_f1", "image_f1_calibrated"):
        assert key in m["final"]
    assert (run / "report.html").is_file()
    assert len(m["timings"]) == 3 and all(t["fit_s"] > 0 for t in m["timings"])


def test_naive_forgets_what_cl_keeps(cl_dataset, tmp_path, patchcore_cl):
    _, cl = patchcore_cl
    naive = _fit(cl_dataset, tmp_path / "naive", "patchcore", "naive", "brick,moon,camera")
    assert naive["forgetting"]["image_auroc"] > cl["forgetting"]["image_auroc"] + 0.1
    assert naive["final"]["image_auroc"] < cl["final"]["image_auroc"]


def test_update_equals_fitting_the_whole_sequence(cl_dataset, tmp_path, patchcore_cl):
    full_run, full = patchcore_cl
    run = tmp_path / "stepwise"
    _fit(cl_dataset, run, "patchcore", "cl", "brick,moon")
    assert main(["update", "--run", str(run), "--data", f"mvtec:{cl_dataset}", "--tasks", "camera"]) == 0
    stepped = json.loads((run / "metrics.json").read_text())
    assert stepped["tasks"] == full["tasks"]
    np.testing.assert_allclose(
        np.array(stepped["matrix"]["image_auroc"], dtype=float),
        np.array(full["matrix"]["image_auroc"], dtype=float),
    )
    a = load_file(str(run / "state" / "main.safetensors"))
    b = load_file(str(full_run / "state" / "main.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_update_relearns_a_known_task(cl_dataset, tmp_path, patchcore_cl):
    run = tmp_path / "relearn"
    shutil.copytree(patchcore_cl[0], run)
    assert main(["update", "--run", str(run), "--data", f"mvtec:{cl_dataset}", "--tasks", "moon"]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["tasks"] == ["brick", "moon", "camera"]
    assert len(m["matrix"]["image_auroc"]) == 3  # the last row was replaced, not appended
    assert m["relearned"] == [{"task": "moon", "step": 3}]


def test_eval_writes_metrics(cl_dataset, tmp_path, patchcore_cl):
    out = tmp_path / "eval.json"
    assert main(["eval", "--run", str(patchcore_cl[0]), "--data", f"mvtec:{cl_dataset}", "--tasks", "brick,camera",
                 "--out", str(out)]) == 0  # fmt: skip
    m = json.loads(out.read_text())
    assert m["tasks"] == ["brick", "camera"] and len(m["matrix"]["image_auroc"][-1]) == 2
    assert m["final"]["image_auroc"] >= 0.95


def test_padim_exact_merge_beats_running_average(cl_dataset, tmp_path):
    cl = _fit(cl_dataset, tmp_path / "padim-cl", "padim", "cl", "brick,moon,camera")
    exact = _fit(cl_dataset, tmp_path / "padim-exact", "padim", "cl-exact", "brick,moon,camera")
    # On these products both keep per-task image AUROC (~0.95); the exact merge wins where the
    # shape of the Gaussians matters: pixel metrics and verdicts at the calibrated threshold.
    for key in ("aupro", "pixel_aupr", "pixel_auroc"):
        assert exact["final"][key] > cl["final"][key], key
    assert exact["pooled"]["image_f1_calibrated"] > cl["pooled"]["image_f1_calibrated"]
    assert "task_inference_accuracy" not in exact  # one shared Gaussian map infers no task


def test_missing_dataset_folder_is_a_clear_error(tmp_path, capsys):
    rc = main(
        ["fit", "--data", f"mvtec:{tmp_path / 'nowhere'}", "--tasks", "a", "--out", str(tmp_path / "r")]
    )
    assert rc == 2
    assert "nowhere" in capsys.readouterr().err


def test_corrupt_images_are_listed_together(cl_dataset, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(cl_dataset / "brick", data / "brick")
    bad = sorted((data / "brick" / "train" / "good").glob("*.png"))[:2]
    for path in bad:
        path.write_bytes(b"not a png")
    rc = main(["fit", "--data", f"mvtec:{data}", "--tasks", "brick", "--out", str(tmp_path / "r")])
    assert rc == 2
    err = capsys.readouterr().err
    assert all(p.name in err for p in bad)


def test_unknown_strategy_is_refused(cl_dataset, tmp_path, capsys):
    rc = main(["fit", "--data", f"mvtec:{cl_dataset}", "--tasks", "brick", "--method", "padim", "--strategy", "replay",
               "--out", str(tmp_path / "r")])  # fmt: skip
    assert rc == 2
    assert "replay" in capsys.readouterr().err
