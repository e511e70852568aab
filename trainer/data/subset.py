"""A seeded subset of an MVTec-layout task, as symbolic links to the original files.

Why links: benchmarks and tests on real data need smaller copies of a task (CI minutes, a quick
look) without duplicating images, and the original JPEG bytes must stay byte-identical so that what
the trainer reads is what a camera would write. Masks of the picked defect images come along.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def link_subset(src: Path, out: Path, n_train: int, n_good: int, n_defect: int, seed: int = 11) -> Path:
    """Link ``n_train`` train images and, per test folder, ``n_good`` (good) or ``n_defect`` images of
    task folder ``src`` into ``out`` (same layout). Returns ``out``."""
    rng = np.random.default_rng(seed)

    def pick(files: list[Path], n: int) -> list[Path]:
        return [files[i] for i in sorted(rng.choice(len(files), min(n, len(files)), replace=False))]

    def link(paths: list[Path]) -> None:
        for p in paths:
            target = out / p.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(p.resolve())

    link(pick(sorted((src / "train" / "good").iterdir()), n_train))
    for kind in sorted(p.name for p in (src / "test").iterdir() if p.is_dir()):
        picked = pick(sorted((src / "test" / kind).iterdir()), n_good if kind == "good" else n_defect)
        link(picked)
        link([m for m in (src / "ground_truth" / kind / f"{p.stem}_mask.png" for p in picked) if m.is_file()])
    return out
