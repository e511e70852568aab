"""A real few-shot base bundle (fewshot method fitted on one generated task, exported, signed by a
release key) in a store, built once per session; each test gets its own copy of the store.

64x64 frames, Lite0, 3 slots of 200 patches: the whole onboarding path (embed.onnx, scoring graph,
numpy coreset, calibration, signing, verification) runs in about a second per onboarding.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

TASKS = ("camera", "brick")
HW = (64, 64)


@dataclass
class FewshotKit:
    store: Path
    data: Path
    release_key: Path  # private (the exporter's)
    release_pub: Path
    box_key: Path
    box_pub: Path
    other_key: Path  # a box key nobody allowed
    name: str = "fs"


@pytest.fixture(scope="session")
def _fewshot_base(tmp_path_factory: pytest.TempPathFactory) -> FewshotKit:
    pytest.importorskip("torch", reason="building the base bundle needs the trainer and exporter (torch)")
    from linewatch.contract.store import point_current
    from linewatch.edge.model.signing import generate_keypair
    from linewatch.export.bundle_writer import write_bundle
    from linewatch.export.run_source import load_run_for_export
    from linewatch.trainer.config import TrainConfig
    from linewatch.trainer.continual import fit
    from linewatch.trainer.data.generate import generate_dataset

    root = tmp_path_factory.mktemp("fewshot-base")
    keys = {n: generate_keypair(root / n) for n in ("release", "box", "other")}
    data = root / "data"
    generate_dataset(data, list(TASKS), n_train=6, n_test_good=6, n_test_defect=6, size=HW[0], seed=0)
    cfg = TrainConfig(
        method="fewshot",
        image_size=HW,
        progress=False,
        report=False,
        min_val=2,
        fewshot={"bank_per_task": 200, "views": 4, "holdout_views": 3, "slots": 3},
    )
    fit(cfg, f"mvtec:{data}", [TASKS[0]], root / "run", log=lambda _m: None)
    run = load_run_for_export(root / "run", name="fs")
    store = root / "store"
    write_bundle(
        run.graph, store / "fs-v000001", info=run.info, golden_inputs=run.golden_inputs,
        sign_key=keys["release"][0], store=store,
    )  # fmt: skip
    point_current(store, "fs-v000001")
    return FewshotKit(
        store, data, keys["release"][0], keys["release"][1], keys["box"][0], keys["box"][1], keys["other"][0]
    )


@pytest.fixture
def fewshot(_fewshot_base: FewshotKit, tmp_path: Path) -> FewshotKit:
    store = tmp_path / "store"
    shutil.copytree(_fewshot_base.store, store, symlinks=True)
    kit = FewshotKit(**{**_fewshot_base.__dict__, "store": store})
    return kit
