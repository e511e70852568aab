"""The checks every registered method must pass, written once.

`test_conformance.py` runs them on every method the registry knows (so a new method
folder is checked with no test to edit), and `test_toy_method.py` on a method it
registers itself, to prove that one file with one decorator is all a method needs.

Sizes: 64 px parts generated from two scikit-image photographs (the project's
generator, in memory), 8 training and 4 held-out good images per task, and each
method's own `smoke_config` (a few steps for trained methods, a small bank or few
dimensions for memory banks), so a method takes seconds on 2 CPU cores.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

HW = (64, 64)
TASKS = ("brick", "moon")
TRAIN, HELD_OUT, TEST_GOOD, TEST_DEFECT = 0, 1, 2, 3  # generator streams


@dataclass
class TinyTask:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def tiny_tasks() -> dict[str, TinyTask]:
    """Two generated tasks at 64 px: good train and held-out images, and 2 good + 2 defect test images."""
    from linewatch.trainer.data.synth import render_part

    def images(task: str, stream: int, n: int, kind: str | None = None) -> np.ndarray:
        return np.stack([render_part(task, HW, 0, stream, i, kind)[0] for i in range(n)])

    return {
        t: TinyTask(
            images(t, TRAIN, 8),
            images(t, HELD_OUT, 4),
            np.concatenate([images(t, TEST_GOOD, 2), images(t, TEST_DEFECT, 2, "scratch")]),
        )
        for t in TASKS
    }


def tiny_values(cls: type) -> dict[str, Any]:
    """TrainConfig values of a quick run of `cls` (what a saved run.json holds, before validation)."""
    return {
        "method": cls.name,
        "image_size": HW,
        "progress": False,
        "report": False,
        cls.name: dict(getattr(cls, "smoke_config", {})),
    }


def _toml_value(value: Any) -> str | None:
    """TOML for a scalar or a list of scalars (JSON writes them the same way); None for tables."""
    if isinstance(value, (bool, int, float, str)) or (
        isinstance(value, list) and all(isinstance(v, (bool, int, float, str)) for v in value)
    ):
        return json.dumps(value)
    return None


def check_config_section(cls: type, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The method's section is in TrainConfig: defaults, TOML table, environment, run.json round trip."""
    from linewatch.trainer.config import config_from_values, load_config
    from linewatch.trainer.learner import strategies_for

    defaults = config_from_values({"method": cls.name})
    assert defaults.section(cls.name) == cls.Config()
    assert defaults.strategy == cls.strategies[0] and defaults.strategy in strategies_for(cls.name)
    assert cls.name in defaults.model_dump(mode="json")

    smoke = dict(getattr(cls, "smoke_config", {}))
    table = {k: text for k, v in smoke.items() if (text := _toml_value(v)) is not None}
    path = tmp_path / "train.toml"
    path.write_text(
        f'method = "{cls.name}"\n[{cls.name}]\n' + "".join(f"{k} = {v}\n" for k, v in table.items())
    )
    from_file = load_config(path).section(cls.name)
    assert from_file == cls.Config(**{k: smoke[k] for k in table})
    numbers = [k for k, v in smoke.items() if isinstance(v, int) and not isinstance(v, bool)]
    if numbers:
        key = numbers[0]
        monkeypatch.setenv(f"LINEWATCH_TRAIN_{cls.name.upper()}__{key.upper()}", str(smoke[key] + 1))
        assert getattr(load_config(path).section(cls.name), key) == smoke[key] + 1
        monkeypatch.delenv(f"LINEWATCH_TRAIN_{cls.name.upper()}__{key.upper()}")

    cfg = config_from_values(tiny_values(cls))
    saved = json.loads(json.dumps(cfg.model_dump(mode="json")))  # what run.json holds
    assert config_from_values(saved).section(cls.name) == cfg.section(cls.name) == cls.Config(**smoke)


def _same(a: Any, b: Any) -> None:
    assert np.array_equal(a.maps, b.maps) and np.array_equal(a.scores, b.scores)
    assert np.array_equal(a.task, b.task)


def check_method(cls: type, tasks: dict[str, TinyTask], tmp_path: Path) -> None:
    """Construct, fit two tasks, predict, export the scoring graph, and round-trip the state."""
    from linewatch.trainer.config import config_from_values
    from linewatch.trainer.methods.base import Method
    from linewatch.trainer.methods.registry import create_method

    cfg = config_from_values(tiny_values(cls))
    method = create_method(cfg)
    assert isinstance(method, Method) and method.strategy == cls.strategies[0]
    with pytest.raises(ValueError, match="strategy"):
        cls("no-such-strategy", cfg.method_settings(), cfg.section(cls.name))

    for name, task in tasks.items():
        method.fit_task(name, task.train)
    method.calibrate({name: task.val for name, task in tasks.items()})
    assert method.tasks == list(tasks)
    assert sorted(t for slot in method.slots for t in slot) == sorted(tasks)

    test = np.concatenate([task.test for task in tasks.values()])
    n = len(test)
    pred = method.predict(test)
    assert pred.maps.shape == (n, *HW) and pred.maps.dtype == np.float32 and np.isfinite(pred.maps).all()
    assert pred.scores.shape == (n,) and np.isfinite(pred.scores).all()
    assert pred.task.shape == (n,) and pred.task.dtype == np.int64
    assert ((pred.task >= 0) & (pred.task < len(method.slots))).all()

    graph = method.scoring_graph()
    assert tuple(graph.input_hw) == HW
    assert all(isinstance(a, np.ndarray) for a in graph.data_inputs.values())
    json.dumps([graph.calibration, graph.metadata, graph.meta])  # they go into the manifest
    assert graph.calibration == method.calibration_meta() and graph.metadata == method.metadata()
    inputs = [torch.from_numpy(a) for a in graph.data_inputs.values()]
    with torch.inference_mode():
        maps, scores, task_ids = graph.module(torch.from_numpy(test[:2]), *inputs)
    np.testing.assert_allclose(maps.numpy(), pred.maps[:2], atol=1e-5)
    np.testing.assert_allclose(scores.numpy(), pred.scores[:2], atol=1e-5)
    assert np.array_equal(task_ids.numpy(), pred.task[:2])

    tensors, meta = method.state()  # stored as a run directory stores it: safetensors + JSON
    save_file(tensors, str(tmp_path / "main.safetensors"))
    restored = create_method(cfg)
    restored.load_state(load_file(str(tmp_path / "main.safetensors")), json.loads(json.dumps(meta)))
    assert restored.tasks == method.tasks and restored.slots == method.slots
    _same(restored.predict(test), pred)
