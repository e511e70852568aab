"""Shared by the replay-trained method tests (EfficientAD, STFPM, CFA, RD, ...): data, teacher and fitted runs, made once.

tests/trainer/methods, tests/export and tests/edge all need the same small runs, and
training is the expensive part, so they are made lazily, once per pytest process,
under pytest's base temp dir, and reused by every test file that asks.

Why these sizes: the suite runs on 2 shared CPU cores. 64 px images, 30 train images
per task, a PDN at 1/8 width with 32 output channels (padded, so the 64 px map covers
the border), a teacher distilled for 300 steps on a fixed pool of 128 generic views,
and 100 (EfficientAD) or 40 (STFPM) steps per task. The published sizes are the
config defaults; these are test settings.

The three tasks are generated from scikit-image photographs where the features work
(brick, moon, cell). The EfficientAD penalty images are other photographs, so no
task's own source is penalised as "generic".
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

TASKS = ("brick", "moon", "cell")
REPLAY_SIZE = 48  # below the 3 x 26 training images, so older shares really shrink (24+24, then 16 each)
HW = (64, 64)
PENALTY_SOURCES = [
    "astronaut",
    "rocket",
    "coins",
    "chelsea",
    "clock",
    "hubble_deep_field",
    "immunohistochemistry",
]


# Test settings beside the loop's (40 steps, evaluated every 10, no early stop) for the other
# replay-trained methods; a method not named here runs with its own defaults at those steps.
METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    "stfpm": {"optimizer": "adam", "lr": 1e-3},
    "cfa": {"steps": 30, "dim": 64},
    "reverse_distillation": {"steps": 30, "blocks": 1},
    "draem": {"steps": 100, "eval_every": 20, "lr": 1e-3, "recon_width": 4, "disc_width": 8},
    "fastflow": {"lr": 1e-3},
}


def replay_trained_methods() -> tuple[str, ...]:
    """Every registered method that learns by replay (its strategies include `replay`), by name."""
    from linewatch.trainer.methods.registry import methods

    return tuple(name for name, cls in methods().items() if "replay" in cls.strategies)


def limit_threads() -> None:
    """At most 2 torch threads (the CI box has 2 cores); a lower OMP_NUM_THREADS is respected."""
    import torch

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def teacher_config():  # -> DistillConfig
    from linewatch.trainer.methods.efficientad.distill import DistillConfig

    return DistillConfig(
        size="s",
        out_channels=32,
        width=0.125,
        padding=True,
        input_hw=(48, 48),
        steps=300,
        batch_size=8,
        lr=1e-3,
        pool=128,
    )


def train_config(method: str, strategy: str, teacher: Path | None = None, **overrides: Any):  # -> TrainConfig
    """The test config of one method and strategy; `overrides` go into the method's section."""
    from linewatch.trainer.config import TrainConfig

    image_size = overrides.pop("image_size", HW)
    if method == "efficientad":
        section = {
            "width": 0.125,
            "out_channels": 32,
            "padding": True,
            "teacher": teacher,
            "steps": 100,
            "lr": 1e-3,
            "hard_quantile": 0.99,
            "eval_every": 10,
            "patience": 0,
            "penalty_sources": PENALTY_SOURCES,
        }
    else:
        section = {"steps": 40, "eval_every": 10, "patience": 0, **METHOD_SETTINGS.get(method, {})}
    section = {**section, "replay": {"size": REPLAY_SIZE}, **overrides}
    return TrainConfig(
        method=method,
        strategy=strategy,
        image_size=image_size,
        progress=False,
        report=False,
        min_val=4,
        **{method: section},
    )


@dataclass
class TrainedKit:
    base: Path
    _data: Path | None = None
    _teacher: Path | None = None
    runs: dict[tuple[str, str], tuple[Path, dict[str, Any]]] = field(default_factory=dict)
    bundles: dict[str, Path] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    _keys: tuple[Path, Path] | None = None

    def data(self) -> Path:
        if self._data is None:
            from linewatch.trainer.data.generate import generate_dataset

            root = self.base / "data"
            generate_dataset(
                root, list(TASKS), n_train=30, n_test_good=10, n_test_defect=10, size=HW[0], seed=0
            )
            self._data = root
        return self._data

    @property
    def spec(self) -> str:
        return f"mvtec:{self.data()}"

    def teacher(self) -> Path:
        if self._teacher is None:
            from linewatch.trainer.methods.efficientad.distill import cached_teacher

            t0 = time.perf_counter()
            self._teacher = cached_teacher(teacher_config(), self.base / "teachers", progress=False)
            self.seconds["distill-teacher"] = time.perf_counter() - t0
        return self._teacher

    def run(self, method: str, strategy: str) -> tuple[Path, dict[str, Any]]:
        """(run dir, metrics.json) of `method` under `strategy` on the three tasks."""
        key = (method, strategy)
        if key not in self.runs:
            from linewatch.trainer.continual import fit

            teacher = self.teacher() if method == "efficientad" else None
            out = self.base / f"run-{method}-{strategy}"
            t0 = time.perf_counter()
            metrics = fit(
                train_config(method, strategy, teacher), self.spec, list(TASKS), out, log=lambda _m: None
            )
            self.seconds[f"{method}-{strategy}"] = time.perf_counter() - t0
            assert json.loads((out / "metrics.json").read_text())["final"] == metrics["final"]
            self.runs[key] = (out, metrics)
        return self.runs[key]

    def keys(self) -> tuple[Path, Path]:
        """(private, public) Ed25519 signing keys."""
        if self._keys is None:
            from linewatch.edge.model.signing import generate_keypair

            self._keys = generate_keypair(self.base / "keys")
        return self._keys

    def bundle(self, method: str) -> Path:
        """The replay run exported by the real `linewatch-export` command, signed; once per method."""
        if method not in self.bundles:
            from linewatch.export.cli import main as export_main

            run_dir, _ = self.run(method, "replay")
            out = self.base / "store" / f"{method}-v1"
            args = ["--run", str(run_dir), "--out", str(out), "--sign-key", str(self.keys()[0])]
            t0 = time.perf_counter()
            assert export_main([*args, "--max-batch", "4"]) == 0
            self.seconds[f"{method}-export"] = time.perf_counter() - t0
            self.bundles[method] = out
        return self.bundles[method]


_KITS: dict[str, TrainedKit] = {}


def get_kit(tmp_path_factory: pytest.TempPathFactory) -> TrainedKit:
    """The process-wide kit (one per pytest base temp dir)."""
    limit_threads()
    base = tmp_path_factory.getbasetemp() / "trained-methods-kit"
    if str(base) not in _KITS:
        base.mkdir(parents=True, exist_ok=True)
        _KITS[str(base)] = TrainedKit(base)
    return _KITS[str(base)]
