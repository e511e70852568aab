"""The names, shapes and types of the scoring graph's inputs and outputs (``model.onnx``).

The exporter names the graph's tensors, the static checks and TensorRT build look them up, the
edge's backends bind them and the manifest records them: they must agree to the letter, so they
are written here once.

- Input ``frames``: a uint8 NHWC RGB batch at model resolution; the batch is the only dynamic
  dimension (named ``batch``).
- Then one input per data array (memory bank, Gaussians, calibration), in the order of the
  manifest's ``data_inputs``, each with a static shape; a data array may not take a reserved name.
- Outputs, in this order: ``anomaly_map`` (B, H, W) float32, ``score`` (B,) float32 and ``task``
  (B,) int64 (TensorRT 8.6 gives int32), normalised so that 0.5 is the decision threshold.
"""

from __future__ import annotations

FRAMES = "frames"
ANOMALY_MAP = "anomaly_map"
SCORE = "score"
TASK = "task"
OUTPUT_NAMES = (ANOMALY_MAP, SCORE, TASK)
OUTPUT_DTYPES = {ANOMALY_MAP: "float32", SCORE: "float32", TASK: "int64"}
BATCH_DIM = "batch"
RESERVED_NAMES = frozenset((FRAMES, *OUTPUT_NAMES))


def output_shapes(input_hw: tuple[int, int]) -> dict[str, list[str | int]]:
    """The outputs' shapes for a graph of input size (H, W), the batch named ``batch``."""
    h, w = int(input_hw[0]), int(input_hw[1])
    return {ANOMALY_MAP: [BATCH_DIM, h, w], SCORE: [BATCH_DIM], TASK: [BATCH_DIM]}
