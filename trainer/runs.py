"""The run directory: everything `update` needs to continue learning, without pickles.

Layout: `run.json` (config, task sources, the metric history), `state/<key>.safetensors`
plus `state/<key>.json` per method instance, `metrics.json`, `report.html`.
State is written to a temporary folder and renamed, so a crash never leaves a run
half old, half new.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from linewatch.trainer.config import TrainConfig, config_from_values
from linewatch.trainer.learner import Learner

RUN_FORMAT = 1


class RunError(RuntimeError):
    """The run directory is missing or not one this trainer wrote."""


def config_from_saved(data: dict[str, Any]) -> TrainConfig:
    """Rebuild the exact saved config; the environment must not change a saved run."""
    return config_from_values(data)


def save_run(run_dir: Path, learner: Learner, history: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / "state.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for key, method in learner.methods.items():
        tensors, meta = method.state()
        save_file(tensors, str(tmp / f"{key}.safetensors"))
        (tmp / f"{key}.json").write_text(json.dumps(meta, indent=1))
    record = {
        "format": RUN_FORMAT,
        "config": learner.cfg.model_dump(mode="json"),
        "tasks": learner.tasks,
        **history,
    }
    (tmp / "run.json").write_text(json.dumps(record, indent=1))
    old = run_dir / "state"
    if old.exists():
        trash = run_dir / "state.old"
        shutil.rmtree(trash, ignore_errors=True)
        old.rename(trash)
        tmp.rename(old)
        shutil.rmtree(trash)
    else:
        tmp.rename(old)


def load_run(run_dir: Path) -> tuple[Learner, dict[str, Any]]:
    """The learner with every method's state restored, and the saved history."""
    record_path = Path(run_dir) / "state" / "run.json"
    if not record_path.is_file():
        raise RunError(f"{run_dir} is not a linewatch run directory (no state/run.json)")
    record = json.loads(record_path.read_text())
    if record.get("format") != RUN_FORMAT:
        raise RunError(
            f"{run_dir}: run format {record.get('format')} is not supported (expected {RUN_FORMAT})"
        )
    learner = Learner(config_from_saved(record["config"]))
    for path in sorted((Path(run_dir) / "state").glob("*.safetensors")):
        method = learner.new_method()
        meta = json.loads(path.with_suffix(".json").read_text())
        method.load_state(load_file(str(path)), meta)
        learner.methods[path.stem] = method
    learner.tasks = list(record["tasks"])
    history = {k: v for k, v in record.items() if k not in ("format", "config", "tasks")}
    return learner, history
