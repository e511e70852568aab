"""How a raw anomaly score is normalised so that 0.5 is the threshold: one rule for trainer and box.

Why here: the trainer calibrates every method on held-out good images, and the box calibrates a
part it onboards on held-out augmented views; both must turn raw scores into `center` and `scale`
the same way, since the graph outputs sigmoid((raw - center) / scale).
"""

from __future__ import annotations

import numpy as np


def fit_normalisation(raw_scores: np.ndarray, quantile: float) -> tuple[float, float]:
    """Threshold and scale from good images only, which is all a line has at install time.

    The threshold is the stated quantile of held-out good image scores; the scale is the
    distance from the median good score to it, so a typical good part lands near 0.27.
    """
    raw_scores = np.asarray(raw_scores, dtype=np.float64)
    center = float(np.quantile(raw_scores, quantile))
    scale = max(center - float(np.median(raw_scores)), 0.05 * abs(center), 1e-6)
    return center, scale
