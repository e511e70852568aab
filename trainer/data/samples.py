"""What a loader returns: plain records of file paths and labels, no pixels.

Keeping pixels out lets every format share one reader (``images.py``) and lets the trainer decide
the resolution.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

GOOD = "good"
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})


@dataclass(frozen=True)
class Sample:
    """One image. ``label`` 0 is good, 1 is a defect; ``mask_path`` is None when there is no mask."""

    path: Path
    label: int
    defect_type: str
    mask_path: Path | None = None


@dataclass
class TaskSplit:
    """A task's train set (good images only) and test set (good and defective)."""

    task: str
    train: list[Sample] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)

    @property
    def n_test_defects_without_mask(self) -> int:
        """Defects left out of pixel metrics; ``metrics.json`` reports this count."""
        return sum(1 for s in self.test if s.label == 1 and s.mask_path is None)


def is_image(path: Path) -> bool:
    """Image files by extension; hidden files (``.DS_Store``, editor swap files) are skipped."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: Path) -> list[Path]:
    """The images directly in ``folder``, sorted by name so every run sees the same order."""
    return sorted((p for p in folder.iterdir() if is_image(p)), key=lambda p: p.name)
