"""Fixtures for the exporter tests: a toy graph (seconds) and real fitted runs (session-scoped).

The real runs fit PatchCore and PaDiM on a small generated dataset at 64x64, so the
whole export path (EfficientNet-Lite0 backbone, coreset bank, Gaussians, calibration)
is exercised in well under a minute per method on 2 CPU cores.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from linewatch.edge.model.signing import generate_keypair
from linewatch.export.toy import toy_scoring_graph

TASKS = ("brick", "gravel")
IMAGE_HW = (64, 64)


@pytest.fixture(scope="session")
def toy_graph():
    return toy_scoring_graph()


@pytest.fixture(scope="session")
def signing_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_keypair(tmp_path_factory.mktemp("export-keys"))


@pytest.fixture(scope="session")
def generated_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from linewatch.trainer.data.generate import generate_dataset

    root = tmp_path_factory.mktemp("export-data")
    generate_dataset(root, list(TASKS), n_train=12, n_test_good=4, n_test_defect=4, size=IMAGE_HW[0], seed=0)
    return root


def _fit(method: str, data: Path, out: Path) -> Path:
    from linewatch.trainer.config import TrainConfig
    from linewatch.trainer.continual import fit

    cfg = TrainConfig(
        method=method,
        image_size=IMAGE_HW,
        progress=False,
        report=False,
        min_val=2,
        patchcore={"budget": 400},
        padim={"dims": 32},
    )
    fit(cfg, f"mvtec:{data}", list(TASKS), out, log=lambda _msg: None)
    return out


@pytest.fixture(scope="session")
def fit_method():
    """`fit(method, data_root, out_dir) -> run_dir` with the small test config."""
    return _fit


@pytest.fixture(scope="session")
def data_layout() -> tuple[tuple[str, ...], tuple[int, int]]:
    """(tasks, image size) of the generated data the runs are fitted on."""
    return TASKS, IMAGE_HW


@pytest.fixture(scope="session")
def fitted_runs(tmp_path_factory: pytest.TempPathFactory, generated_data: Path):
    """Run directories keyed by method, fitted lazily (only the methods a test asks for)."""
    cache: dict[str, Path] = {}
    base = tmp_path_factory.mktemp("export-runs")

    def get(method: str) -> Path:
        if method not in cache:
            cache[method] = _fit(method, generated_data, base / method)
        return cache[method]

    return get
