"""A minimal bundle folder written through contract.manifest (a stand-in graph file, real arrays)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from linewatch.contract import manifest as mf


def write_tiny_bundle(root: Path, name: str = "tiny", version: int = 1, **extra: Any) -> dict[str, Any]:
    """model.onnx (placeholder bytes), one data input, golden samples, manifest.json; the manifest."""
    root.mkdir(parents=True, exist_ok=True)
    (root / mf.MODEL_NAME).write_bytes(b"not a real graph: the manifest does not look inside")
    data = mf.write_data_inputs(root, {"bank": np.arange(12, dtype=np.float32).reshape(3, 4)})
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    outputs = (np.zeros((2, 8, 8), np.float32), np.array([0.1, 0.9], np.float32), np.zeros(2, np.int64))
    golden = mf.write_golden(root, frames, outputs, atol_score=1e-3, atol_map=1e-2)
    manifest = mf.new_manifest(
        name=name,
        version=version,
        method="tiny",
        tasks=["a"],
        input_hw=(8, 8),
        max_batch=2,
        data_inputs=data,
        golden=golden,
        **extra,
    )
    return mf.write_manifest(root, manifest)
