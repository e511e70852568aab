"""Helpers for the edge tests: a real (tiny) bundle, a video with known defects, a bundle store.

The toy model is a real ONNX graph written with ``onnx.helper``: the per-pixel absolute difference
of the frame to a ``reference`` image (a data input, like a memory bank), averaged over colour and a
5x5 window, scaled so that a difference of ``diff_at_half`` grey levels maps to 0.5 (the decision
threshold), clipped to [0, 1]; score = max of the map; task = 0. Frames of ``background()`` with a
bright blob pasted in are anomalous exactly where the blob is, so verdicts can be checked exactly.

``make_bundle`` writes its manifest through the same writer as the exporter (``contract/manifest.py``)
without torch: the graph is built with ``onnx.helper``, so a toy bundle takes milliseconds.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import polling

from linewatch.contract import manifest as mf
from linewatch.contract.store import point_current
from linewatch.edge.model import signing

FRAME_WH = (160, 120)  # camera frames (w, h)
MODEL_HW = (64, 64)  # model input (h, w)
DEFECT_BGR = (30, 240, 250)


def wait_for(
    predicate: Callable[[], bool], timeout: float = 90.0, interval: float = 0.05, what: str = ""
) -> None:
    """The shared poller with a longer default: a runtime starts threads and a broker link first."""
    polling.wait_for(predicate, timeout, interval, what)


def background(wh: tuple[int, int] = FRAME_WH) -> np.ndarray:
    """A smooth BGR gradient: survives JPEG/MJPG compression with tiny error."""
    w, h = wh
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    b = 90 + 60 * x / w
    g = 110 + 40 * y / h
    r = 140 - 30 * (x + y) / (w + h)
    return np.stack([b, g, r], axis=-1).round().astype(np.uint8)


@dataclass(frozen=True)
class Truth:
    index: int
    defective: bool
    bbox: tuple[int, int, int, int] | None  # x, y, w, h in frame pixels


def defect_box(index: int, wh: tuple[int, int] = FRAME_WH) -> tuple[int, int, int, int]:
    """Where frame ``index``'s defect goes (moves around so regions are really checked)."""
    w, h = wh
    bw, bh = 22, 18
    x = 10 + (index * 37) % (w - bw - 20)
    y = 8 + (index * 23) % (h - bh - 16)
    return x, y, bw, bh


def render(index: int, defective: bool, wh: tuple[int, int] = FRAME_WH) -> np.ndarray:
    img = background(wh).copy()
    if defective:
        x, y, bw, bh = defect_box(index, wh)
        cv2.rectangle(img, (x, y), (x + bw - 1, y + bh - 1), DEFECT_BGR, thickness=-1)
    return img


def write_video(
    path: Path, n: int, defect_every: int = 4, wh: tuple[int, int] = FRAME_WH, fps: float = 25
) -> list[Truth]:
    """An MJPG .avi; frame i is defective when (i + 1) % defect_every == 0."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.avi")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"MJPG"), fps, wh)
    assert writer.isOpened(), "OpenCV cannot write MJPG here"
    truths = []
    for i in range(n):
        bad = defect_every > 0 and (i + 1) % defect_every == 0
        writer.write(render(i, bad, wh))
        truths.append(Truth(i, bad, defect_box(i, wh) if bad else None))
    writer.release()
    os.replace(tmp, path)
    return truths


def overlaps(a: list[int] | tuple[int, ...], b: tuple[int, int, int, int]) -> bool:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah


# ----------------------------------------------------------------------------- the toy bundle


def toy_graph(hw: tuple[int, int], diff_at_half: float):  # -> onnx.ModelProto
    import onnx
    from onnx import TensorProto, helper

    h, w = hw
    scale = 1.0 / (2.0 * diff_at_half)
    nodes = [
        helper.make_node("Cast", ["frames"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["f", "reference"], ["d"]),
        helper.make_node("Abs", ["d"], ["a"]),
        helper.make_node("ReduceMean", ["a"], ["m"], axes=[3], keepdims=0),
        helper.make_node("Unsqueeze", ["m", "ax1"], ["m4"]),
        helper.make_node(
            "AveragePool", ["m4"], ["p"], kernel_shape=[5, 5], pads=[2, 2, 2, 2], count_include_pad=0
        ),
        helper.make_node("Squeeze", ["p", "ax1"], ["s"]),
        helper.make_node("Mul", ["s", "scale"], ["ms"]),
        helper.make_node("Clip", ["ms", "zero", "one"], ["anomaly_map"]),
        helper.make_node("ReduceMax", ["anomaly_map"], ["score"], axes=[1, 2], keepdims=0),
        helper.make_node("Mul", ["score", "zero"], ["z"]),
        helper.make_node("Cast", ["z"], ["task"], to=TensorProto.INT64),
    ]
    inits = [
        helper.make_tensor("ax1", TensorProto.INT64, [1], [1]),
        helper.make_tensor("scale", TensorProto.FLOAT, [], [scale]),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
    ]
    graph = helper.make_graph(
        nodes,
        "toy_diff",
        [
            helper.make_tensor_value_info("frames", TensorProto.UINT8, ["batch", h, w, 3]),
            helper.make_tensor_value_info("reference", TensorProto.FLOAT, [h, w, 3]),
        ],
        [
            helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["batch", h, w]),
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("task", TensorProto.INT64, ["batch"]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def model_reference(hw: tuple[int, int] = MODEL_HW, wh: tuple[int, int] = FRAME_WH) -> np.ndarray:
    """The background as the model sees it: one cv2.resize (INTER_LINEAR), RGB, float32."""
    small = cv2.resize(background(wh), (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)
    return cv2.cvtColor(small, cv2.COLOR_BGR2RGB).astype(np.float32)


def make_bundle(
    out: Path,
    name: str = "toy",
    version: int = 1,
    hw: tuple[int, int] = MODEL_HW,
    max_batch: int = 4,
    diff_at_half: float = 40.0,
    sign_key: Path | None = None,
    reference: np.ndarray | None = None,
    golden_offset: float = 0.0,
) -> Path:
    """Write a complete bundle directory (graph, data input, golden samples, manifest[, signature]).

    ``golden_offset`` corrupts the recorded golden scores (a bundle whose graph disagrees with them).
    """
    import onnx
    import onnxruntime as ort

    out.mkdir(parents=True, exist_ok=True)
    ref = model_reference(hw) if reference is None else reference.astype(np.float32)
    onnx.save(toy_graph(hw, diff_at_half), str(out / mf.MODEL_NAME))
    data_inputs = mf.write_data_inputs(out, {"reference": ref})
    good = np.clip(ref, 0, 255).astype(np.uint8)
    bad = good.copy()
    bad[hw[0] // 4 : hw[0] // 2, hw[1] // 4 : hw[1] // 2] = (250, 240, 30)
    noise = np.random.default_rng(version).integers(0, 256, (1, *hw, 3), dtype=np.uint8)
    inputs = np.concatenate([good[None], bad[None], noise])
    sess = ort.InferenceSession(str(out / mf.MODEL_NAME), providers=["CPUExecutionProvider"])
    maps, scores, tasks = sess.run(None, {"frames": inputs, "reference": ref})
    golden = mf.write_golden(
        out, inputs, (maps, scores + golden_offset, tasks), atol_score=1e-4, atol_map=1e-4
    )
    manifest = mf.new_manifest(
        name=name,
        version=version,
        method="toy-diff",
        tasks=["toy"],
        input_hw=hw,
        max_batch=max_batch,
        data_inputs=data_inputs,
        golden=golden,
        created="2026-01-01T00:00:00Z",
        backbone=None,
        provenance={"data": "synthetic test background"},
        metrics={},
    )
    mf.write_manifest(out, manifest, signing.signer(sign_key) if sign_key is not None else None)
    return out


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = (
            _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def edge_config(tmp_path: Path, broker_url: str, **sections: dict):  # -> EdgeConfig
    """A test config: fast reconnects and polling, ephemeral metrics port, outbox in tmp_path."""
    from linewatch.edge.config import load_config

    base = {
        "mqtt": {"url": broker_url, "reconnect_min_s": 0.05, "reconnect_max_s": 0.5},
        "metrics": {"port": 0, "host": "127.0.0.1", "period_s": 0.5},
        "outbox": {"path": str(tmp_path / "outbox.sqlite"), "drain_timeout_s": 30},
        "camera": {"reopen_min_s": 0.05, "reopen_max_s": 0.5, "dir_poll_s": 0.02},
        "reload": {"watch_interval_s": 0.1},
        "publish": {"summary_period_s": 0.5},
    }
    return load_config(None, _merge(base, sections))


def write_frame(folder: Path, index: int, defective: bool) -> None:
    """Drop one frame into a dir: source atomically (write hidden, then rename), as a camera would."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{index:06d}.png"
    cv2.imwrite(str(tmp), render(index, defective))
    os.replace(tmp, folder / f"{index:06d}.png")


def exporter_available() -> bool:
    """True when the real bundle writer (export/, needs torch) is importable here."""
    try:
        import torch  # noqa: F401

        import linewatch.export.bundle_writer  # noqa: F401
    except ImportError:
        return False
    return True


def make_export_bundle(
    out: Path, name: str = "toy", version: int = 1, diff_at_half: float = 40.0, sign_key: Path | None = None
) -> Path:
    """The same toy model, but as a torch module written by the REAL exporter (export.bundle_writer).

    The exporter traces the module to ONNX, proves golden parity (torch vs onnxruntime), hashes,
    signs: this is the bundle an edge box really receives.
    """
    import torch
    import torch.nn.functional as F

    from linewatch.export.bundle_writer import BundleInfo, write_bundle
    from linewatch.trainer.methods.base import ScoringGraph

    class DiffScorer(torch.nn.Module):
        def forward(self, frames: torch.Tensor, reference: torch.Tensor):  # type: ignore[no-untyped-def]
            d = (frames.float() - reference).abs().mean(dim=3, keepdim=False).unsqueeze(1)
            m = F.avg_pool2d(d, 5, stride=1, padding=2, count_include_pad=False).squeeze(1)
            amap = (m / (2.0 * diff_at_half)).clamp(0.0, 1.0)
            score = amap.flatten(1).amax(1)
            task = torch.zeros_like(score, dtype=torch.int64)
            return amap, score, task

    ref = model_reference()
    graph = ScoringGraph(DiffScorer().eval(), {"reference": ref}, MODEL_HW, {"tasks": ["toy"]})
    good = np.clip(ref, 0, 255).astype(np.uint8)
    bad = good.copy()
    bad[16:32, 16:32] = (250, 240, 30)
    info = BundleInfo(
        name=name, method="toy-diff", tasks=["toy"], provenance={"data": "edge test background"}
    )
    written = write_bundle(
        graph,
        out,
        info=info,
        golden_inputs=np.stack([good, bad]),
        max_batch=4,
        version=version,
        sign_key=sign_key,
    )
    return written.path


def publish_to_store(store: Path, bundle_dir: Path) -> None:
    """What the refresh job does: point ``<store>/current`` at a bundle, atomically."""
    store.mkdir(parents=True, exist_ok=True)
    point_current(store, bundle_dir.name if bundle_dir.parent == store else str(bundle_dir))
