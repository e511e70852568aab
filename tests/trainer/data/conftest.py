"""Small synthetic datasets shared by the dataset-layer tests (generated once per session)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from linewatch.trainer.data.generate import generate_dataset

TASKS = ["brick", "coffee"]
N_TRAIN, N_TEST_GOOD, N_TEST_DEFECT, SIZE = 4, 2, 6, 128


@dataclass(frozen=True)
class SyntheticInfo:
    """What ``synthetic_root`` holds, so tests need not import this conftest."""

    tasks: tuple[str, ...] = tuple(TASKS)
    n_train: int = N_TRAIN
    n_test_good: int = N_TEST_GOOD
    n_test_defect: int = N_TEST_DEFECT
    size: int = SIZE


@pytest.fixture(scope="session")
def synthetic_info() -> SyntheticInfo:
    return SyntheticInfo()


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Read-only MVTec-layout dataset: 2 tasks, 128x128, every defect type once per task."""
    root = tmp_path_factory.mktemp("synthetic")
    return generate_dataset(root, TASKS, N_TRAIN, N_TEST_GOOD, N_TEST_DEFECT, size=SIZE, seed=0)


@pytest.fixture
def dataset_copy(synthetic_root: Path, tmp_path: Path) -> Path:
    """A private copy a test may break."""
    return Path(shutil.copytree(synthetic_root, tmp_path / "data"))
