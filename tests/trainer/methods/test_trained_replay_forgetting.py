"""DRAEM and FastFlow on the generated 3-task sequence (brick, moon, cell at 64 px): replay forgets at
most half as much as naive fine-tuning. The runs come from `trained_methods_kit` (its
`METHOD_SETTINGS`) and are shared with the export and edge tests.

The comparison only means something when naive fine-tuning measurably forgets, so that is asserted
first: a failure there says the test sizes no longer show forgetting, not that replay works.
STFPM and EfficientAD make the same comparison in `test_replay_training.py`, CFA (plus its bank) and
Reverse Distillation (on the student's loss) in `test_cfa_rd_continual.py`.
"""

from __future__ import annotations

import pytest
from replay_forgetting import check_replay_halves_forgetting
from trained_methods_kit import get_kit

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("method", ["draem", "fastflow"])
def test_replay_forgets_at_most_half_of_naive(method: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    kit = get_kit(tmp_path_factory)
    check_replay_halves_forgetting(method, kit.run(method, "naive")[1], kit.run(method, "replay")[1])
