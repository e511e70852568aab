"""A task's memory bank and threshold from its support images: OpenCV views, onnxruntime, numpy.

Why this recipe (see contract/fewshot.py for the bank layout):
- Bank: each support image gives `views` augmented views (view 0 the image itself), embedded by
  the bundle's `embed.onnx`; their patch features are subsampled to `bank_per_task` by greedy
  k-center (numpy) and padded with repeats into the task's slot.
- Threshold, by leave-one-image-out on held-out views: for each support image i, a bank is built
  the same way from the OTHER images' views only, and `holdout_views` fresh augmented views of i
  (never in any bank) are scored on it by the scoring graph itself, with every other slot empty
  so the task is forced. Those raw image scores stand for "a good part not seen before"; `center`
  is their `quantile` (0.99) and `scale` = center - median (contract/calibration.py, the
  trainer's rule). Scoring held-out views against a bank that contains their own image would
  give scores far below what a new good part gets, and false alarms on the line.
- Raw scores are read back from the graph's normalised output: with center 0 and a scale set
  from the bank's feature norms, raw = scale * logit(score), which float32 keeps exact to ~1e-4.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from linewatch.contract.calibration import fit_normalisation
from linewatch.contract.fewshot import EMPTY_FILL, FewShotSection, augment, greedy_coreset, padded_slot
from linewatch.contract.graph_io import FRAMES, OUTPUT_NAMES, SCORE


def session(path: Path, threads: int | None = None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def run_batched(
    sess: Any, output: str, frames: np.ndarray, feeds: dict[str, np.ndarray], batch: int
) -> np.ndarray:
    out = [
        sess.run([output], {FRAMES: np.ascontiguousarray(frames[i : i + batch]), **feeds})[0]
        for i in range(0, len(frames), batch)
    ]
    return np.concatenate(out)


@dataclass
class SlotBuild:
    """What one onboarding computed for its slot."""

    bank: np.ndarray  # (M, D)
    knn: np.ndarray  # (M, k)
    center: float
    scale: float
    holdout_raw: list[float]  # raw scores of the held-out views (per image, in order)
    seconds: dict[str, float]


class BankBuilder:
    """Builds one slot from support images, with the bundle's embedding and scoring graphs."""

    def __init__(
        self,
        section: FewShotSection,
        embed_path: Path,
        score_path: Path,
        data_inputs: dict[str, np.ndarray],
        max_batch: int,
        threads: int | None = None,
    ) -> None:
        self.section = section
        self.embed = session(embed_path, threads)
        self.score = session(score_path, threads)
        self.data = data_inputs
        self.batch = max(1, max_batch)

    def features(self, frames: np.ndarray) -> np.ndarray:
        """(N, P, D) patch features of uint8 model inputs."""
        return run_batched(self.embed, self.section.output, frames, {}, self.batch)

    def coreset(self, feats: np.ndarray, seed: int) -> np.ndarray:
        flat = feats.reshape(-1, feats.shape[-1])
        s = self.section
        return flat[greedy_coreset(flat, s.bank_per_task, s.proj_dim, seed)]

    def raw_scores(
        self, frames: np.ndarray, slot: int, bank: np.ndarray, knn: np.ndarray, scale: float
    ) -> np.ndarray:
        """Raw image scores of `frames` on `bank` in `slot`, every other slot empty (task forced)."""
        data = {k: v.copy() for k, v in self.data.items()}
        data["bank"][:] = EMPTY_FILL
        data["bank"][slot], data["bank_knn"][slot] = bank, knn
        data["center"][:] = 0.0
        data["scale"][:] = scale
        scores = run_batched(self.score, SCORE, frames, data, self.batch).astype(np.float64)
        p = np.clip(scores, 1e-12, 1 - 1e-7)
        return scale * np.log(p / (1 - p))

    def build(self, images: np.ndarray, slot: int, seed: int) -> SlotBuild:
        import time

        s = self.section
        t0 = time.perf_counter()
        rng = np.random.default_rng(seed)
        views = [augment(im, s.augment, s.views, rng) for im in images]
        held = [augment(im, s.augment, s.holdout_views + 1, rng)[1:] for im in images]
        t1 = time.perf_counter()
        feats = [self.features(v) for v in views]
        t2 = time.perf_counter()
        bank, knn = padded_slot(self.coreset(np.concatenate(feats), seed), s.bank_per_task, s.knn)
        # A scale that keeps raw / scale inside float32's sigmoid range: raw <= |q| + |b|.
        scale = float(np.linalg.norm(bank, axis=1).max()) / 4.0 + 1e-6
        raw: list[float] = []
        for i in range(len(images)):
            others = np.concatenate([f for j, f in enumerate(feats) if j != i])
            fold_bank, fold_knn = padded_slot(self.coreset(others, seed + 1 + i), s.bank_per_task, s.knn)
            raw.extend(self.raw_scores(held[i], slot, fold_bank, fold_knn, scale).tolist())
        t3 = time.perf_counter()
        center, norm_scale = fit_normalisation(np.asarray(raw), s.quantile)
        seconds = {"augment": t1 - t0, "embed": t2 - t1, "bank_and_calibration": t3 - t2}
        return SlotBuild(bank, knn, center, norm_scale, raw, {k: round(v, 3) for k, v in seconds.items()})


def golden_outputs(
    score_sess: Any, data: dict[str, np.ndarray], frames: np.ndarray, batch: int
) -> tuple[np.ndarray, ...]:
    """(maps, scores, tasks) of the scoring graph on `frames` with `data`: the new golden samples."""
    outs = [
        score_sess.run(list(OUTPUT_NAMES), {FRAMES: np.ascontiguousarray(frames[i : i + batch]), **data})
        for i in range(0, len(frames), batch)
    ]
    return tuple(np.concatenate([o[j] for o in outs]) for j in range(3))
