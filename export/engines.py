"""TensorRT plans for a bundle: one per precision, each checked on the golden frames before it ships.

Split from ``bundle_writer.py`` (which decides what a bundle holds); this module only builds and
proves engines, on a machine with TensorRT and a GPU. Trained methods' engines are built
refittable (``refit``), so a box can refit new weights into a cached engine instead of rebuilding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from linewatch.contract.manifest import MODEL_NAME
from linewatch.export.onnx_export import ExportError
from linewatch.export.parity import compare
from linewatch.trainer.methods.base import ScoringGraph


def build_engines(
    tmp: Path,
    graph: ScoringGraph,
    golden: np.ndarray,
    reference: tuple[np.ndarray, np.ndarray, np.ndarray],
    max_batch: int,
    precisions: tuple[str, ...],
    workspace_bytes: int,
    cache_dir: Path,
    refit: dict[str, Any],
    atol: tuple[float, float],
) -> list[dict[str, Any]]:
    """Build one plan per precision, check each on the golden frames, return manifest entries."""
    from linewatch.edge.model import trt_build

    ok, reason = trt_build.tensorrt_available()
    if not ok:
        raise ExportError(f"--tensorrt: {reason}")
    info = trt_build.runtime_info()
    entries = []
    for precision in precisions:
        plan = tmp / trt_build.plan_filename(precision, info)
        entry = trt_build.build_engine(
            tmp / MODEL_NAME,
            plan,
            max_batch=max_batch,
            precision=precision,
            workspace_bytes=workspace_bytes,
            refittable=refit["refittable"],
            structure_sha256=refit["structure_sha256"],
            timing_cache=cache_dir / f".{trt_build.timing_cache_name(info)}",
        )
        from linewatch.export.trt_verify import engine_infer

        outs = engine_infer(plan, dict(graph.data_inputs), golden, max_batch)
        # FP16 engines get the same tolerance: the edge applies it too, so fail early here.
        parity = compare(reference, outs, *atol)
        if not parity.ok:
            raise ExportError(
                f"{precision} TensorRT engine disagrees with torch on the golden frames: {parity}"
            )
        entry["golden_parity"] = parity.as_dict()
        entries.append(entry)
    return entries
