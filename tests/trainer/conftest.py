"""Generated datasets shared by the trainer tests (the one generator, real photographs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from linewatch.trainer.data.generate import generate_dataset

# Sources where the default backbone separates the generated defects well; grass and gravel
# are harder (image AUROC ~0.87 for PatchCore on them), see ARCHITECTURE.md.
CL_TASKS = ("brick", "moon", "camera")


@pytest.fixture(scope="session")
def cl_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cl-data")
    generate_dataset(root, list(CL_TASKS), n_train=40, n_test_good=10, n_test_defect=12, size=256, seed=7)
    return root
