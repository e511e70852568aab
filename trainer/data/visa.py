"""VisA: one split csv for all objects, ``ROOT/split_csv/1cls.csv``.

Columns ``object,split,label,image,mask``; ``label`` is ``normal`` or ``anomaly``; ``image`` and
``mask`` are relative to ROOT (``candle/Data/Images/Normal/0000.JPG``); ``mask`` is empty for normal
images. Masks hold class indices rather than 255, which ``read_masks`` handles by binarising at > 0.

``visa:ROOT`` may also name a csv file directly (``visa:ROOT/split_csv/2cls_highshot.csv``). Anomalous
rows of the train split (present in the 2cls splits) are skipped: the trainer learns from good images.
"""

from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

from linewatch.trainer.data.errors import DatasetError, bad_files_error
from linewatch.trainer.data.mvtec import check_root, check_task_name
from linewatch.trainer.data.samples import GOOD, Sample, TaskSplit

DEFAULT_CSV = Path("split_csv") / "1cls.csv"
COLUMNS = ("object", "split", "label", "image", "mask")
ANOMALY_TYPE = "anomaly"
_LABELS = {"normal": 0, "anomaly": 1}


def resolve_csv(root: Path) -> tuple[Path, Path]:
    """(csv file, base folder the csv's paths are relative to)."""
    if root.is_file():
        base = root.parent.parent if root.parent.name == "split_csv" else root.parent
        return root, base
    check_root(root)
    csv_path = root / DEFAULT_CSV
    if not csv_path.is_file():
        raise DatasetError(f"VisA split csv not found: {csv_path}", [csv_path])
    return csv_path, root


@lru_cache(maxsize=8)
def _read_rows(csv_path: Path, mtime_ns: int) -> tuple[dict[str, str], ...]:
    """Parse once per file version; ``load_task`` is called once per task on the same csv."""
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip() for f in (reader.fieldnames or [])]
        missing = [c for c in COLUMNS if c not in fields]
        if missing:
            raise DatasetError(
                f"{csv_path}: missing column(s) {', '.join(missing)}; expected {','.join(COLUMNS)}",
                [csv_path],
            )
        rows = []
        for line_no, row in enumerate(reader, start=2):
            clean = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
            clean["_line"] = str(line_no)
            rows.append(clean)
    return tuple(rows)


def read_rows(csv_path: Path) -> tuple[dict[str, str], ...]:
    return _read_rows(csv_path, csv_path.stat().st_mtime_ns)


def list_tasks(root: Path) -> list[str]:
    csv_path, _ = resolve_csv(root)
    return sorted({row["object"] for row in read_rows(csv_path) if row["object"]})


def _sample(
    row: dict[str, str], base: Path, csv_path: Path, problems: list[tuple[Path, str]]
) -> Sample | None:
    where = f"{csv_path}:{row['_line']}"
    label = _LABELS.get(row["label"].lower())
    if label is None:
        problems.append((base / row["image"], f"{where}: label {row['label']!r} is not normal/anomaly"))
        return None
    image = base / row["image"]
    if not image.is_file():
        problems.append((image, f"image listed in {where} does not exist"))
    mask = base / row["mask"] if row["mask"] and label == 1 else None
    if mask is not None and not mask.is_file():
        problems.append((mask, f"mask listed in {where} does not exist"))
    return Sample(path=image, label=label, defect_type=ANOMALY_TYPE if label else GOOD, mask_path=mask)


def load_task(root: Path, task: str) -> TaskSplit:
    check_task_name(task)
    csv_path, base = resolve_csv(root)
    rows = [row for row in read_rows(csv_path) if row["object"] == task]
    if not rows:
        known = ", ".join(list_tasks(root)) or "none"
        raise DatasetError(f"task {task!r} not found in {csv_path} (objects: {known})", [csv_path])
    problems: list[tuple[Path, str]] = []
    split = TaskSplit(task=task)
    for row in rows:
        which = row["split"].lower()
        if which not in {"train", "test"}:
            problems.append((csv_path, f"line {row['_line']}: split {row['split']!r} is not train/test"))
            continue
        sample = _sample(row, base, csv_path, problems)
        if sample is None or (which == "train" and sample.label == 1):
            continue
        (split.train if which == "train" else split.test).append(sample)
    if problems:
        raise bad_files_error(f"problem(s) in VisA task {task!r}", problems)
    if not split.train:
        raise DatasetError(f"task {task!r} has no normal train images in {csv_path}", [csv_path])
    return split
