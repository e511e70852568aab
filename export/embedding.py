"""The embedding graph of a few-shot bundle: uint8 frames in, patch features out (``embed.onnx``).

Why a second graph: the box builds a new task's memory bank itself (`linewatch-edge onboard`),
so it needs the scoring graph's patch features without the bank. It is exported from the very
module the scoring graph embeds with, checked against torch on the golden frames, and only ever
run by onnxruntime on the box (no TensorRT constraints: the legacy exporter is enough).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from linewatch.contract.fewshot import EMBED_OUTPUT
from linewatch.contract.graph_io import BATCH_DIM, FRAMES
from linewatch.export.onnx_export import ExportError
from linewatch.export.parity import ort_session

ATOL_FEATURES = 1e-3


def export_embedding(module: torch.nn.Module, path: Path, golden: np.ndarray, opset: int = 17) -> float:
    """Export `module` (frames -> (B, P, D)) to `path`; the largest |torch - onnxruntime| on `golden`."""
    frames = torch.from_numpy(np.ascontiguousarray(golden[: max(2, min(len(golden), 2))]))
    if frames.shape[0] < 2:
        frames = torch.cat([frames, frames])
    module = module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module,
                (frames,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[FRAMES],
                output_names=[EMBED_OUTPUT],
                dynamic_axes={FRAMES: {0: BATCH_DIM}, EMBED_OUTPUT: {0: BATCH_DIM}},
                do_constant_folding=True,
            )
        except Exception as e:
            raise ExportError(f"embedding graph export failed: {e}") from e
    with torch.inference_mode():
        reference = module(torch.from_numpy(np.ascontiguousarray(golden))).numpy()
    got = ort_session(path).run([EMBED_OUTPUT], {FRAMES: np.ascontiguousarray(golden)})[0]
    err = float(np.max(np.abs(got - reference))) if got.shape == reference.shape else float("inf")
    scale = max(1.0, float(np.max(np.abs(reference))))
    if not err <= ATOL_FEATURES * scale:
        raise ExportError(f"embedding graph disagrees with torch on the golden frames (max error {err:.3g})")
    return err
