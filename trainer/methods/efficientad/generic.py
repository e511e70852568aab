"""Generic images: the offline stand-in for ImageNet in EfficientAD's teacher distillation and penalty.

The paper uses ImageNet twice: to distil the teacher, and as "pretraining" images on
which the student is penalised for imitating the teacher (so it does not generalise
to everything). Offline, the photographs that ship with scikit-image play that role,
viewed through random crops, flips and brightness jitter (`trainer.data.source_photos`).

They are few (15 photographs), which is the main trade-off against the published
teacher: see `distill.py`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from linewatch.trainer.data.source_photos import available_sources, render_view


def generic_sources(exclude: Iterable[str] = ()) -> list[str]:
    """Every source photograph except those named like a task (their images are not 'generic')."""
    skip = set(exclude)
    names = [s for s in available_sources() if s not in skip]
    if not names:
        raise ValueError("no generic source photographs left after excluding the task names")
    return names


def generic_images(
    n: int, input_hw: tuple[int, int], rng: np.random.Generator, sources: list[str]
) -> np.ndarray:
    """`n` random views (uint8 (n, H, W, 3) RGB) of the given source photographs."""
    h, w = (int(s) for s in input_hw)
    picks = rng.integers(len(sources), size=n)
    return np.stack([render_view(sources[int(i)], rng, (w, h)) for i in picks])
