"""``FORMAT:ROOT`` specs and the table of formats, so a new format is one module plus one line."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from linewatch.trainer.data import folder, mvtec, visa
from linewatch.trainer.data.errors import DatasetError
from linewatch.trainer.data.samples import TaskSplit


@dataclass(frozen=True)
class DataFormat:
    """How one on-disk format lists its tasks and loads one task's split."""

    name: str
    load_task: Callable[[Path, str], TaskSplit]
    list_tasks: Callable[[Path], list[str]]


FORMATS: dict[str, DataFormat] = {}


def register_format(fmt: DataFormat) -> None:
    """Add (or replace) a format; the name is what users type before the colon."""
    FORMATS[fmt.name] = fmt


register_format(DataFormat("mvtec", mvtec.load_task, mvtec.list_tasks))
register_format(DataFormat("folder", folder.load_task, folder.list_tasks))
register_format(DataFormat("visa", visa.load_task, visa.list_tasks))


def parse_data_spec(spec: str) -> tuple[str, Path]:
    """``"mvtec:/data/mvtec"`` -> ``("mvtec", Path("/data/mvtec"))``. Splits at the first colon only."""
    name, sep, root = spec.partition(":")
    name = name.strip().lower()
    known = ", ".join(sorted(FORMATS))
    if not sep or not root.strip():
        raise DatasetError(f"data spec {spec!r} is not FORMAT:ROOT (formats: {known})")
    if name not in FORMATS:
        raise DatasetError(f"unknown data format {name!r} in {spec!r} (formats: {known})")
    return name, Path(root.strip()).expanduser()


def load_task(spec: str, task: str) -> TaskSplit:
    """One task's train (good only) and test samples from a ``FORMAT:ROOT`` spec."""
    name, root = parse_data_spec(spec)
    return FORMATS[name].load_task(root, task)


def list_tasks(spec: str) -> list[str]:
    """The task (category) names a dataset offers, sorted."""
    name, root = parse_data_spec(spec)
    return FORMATS[name].list_tasks(root)
