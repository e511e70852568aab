"""Write a model bundle: ONNX graph, data arrays, golden samples, manifest, signature, engines.

Why this shape (see DESIGN.md "The model bundle" and `edge/model/bundle.py`):

- Atomic: everything is written into a temp directory beside the target, verified
  with the edge's own `open_bundle`, and only then renamed into place. A box or a
  refresh job never sees half a bundle.
- Proven before written: golden frames are scored by the torch module and by the
  ONNX graph in onnxruntime; the bundle is refused if they disagree beyond tolerance.
- Versions only increase: the version is one more than the highest found for the same
  model name in the target's folder, in the bundle store (`contract/store.py`), in the
  bundle being replaced, and in the base of a refresh. An explicit version must also be higher.
- One manifest writer: arrays, golden samples, the manifest's fixed parts and its hashes
  are written by `contract/manifest.py`, which the edge's reader checks against.

Bank-only refresh (`bank_only=True`): the bundle holds only the data arrays, golden
samples and the manifest, with `bank_only = {base_version, graph_sha256}`. It applies
to a base full bundle whose `model.onnx` has that sha256 (so its TensorRT engines are
reused: no rebuild). The writer proves it: the new run's graph is exported and must
be byte-identical to the base graph (same backbone weights, same code, same shapes;
only the data inputs differ), and the golden frames are scored by the new torch
module and by the *base* ONNX graph fed the new arrays. Hence a refresh scores exactly
like a full re-export of the same run.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from linewatch.contract.bundle_tar import write_tar
from linewatch.contract.errors import BundleError
from linewatch.contract.geometry import Geometry
from linewatch.contract.manifest import (
    MODEL_NAME,
    new_manifest,
    read_manifest,
    sha256_file,
    write_data_inputs,
    write_golden,
    write_manifest,
)
from linewatch.contract.store import bundles_in, versions_of
from linewatch.edge.model import signing
from linewatch.edge.model.bundle import Bundle, open_bundle
from linewatch.export import quantize
from linewatch.export.checks import CheckLimits, StaticReport, run_static_checks
from linewatch.export.engines import build_engines
from linewatch.export.graph_structure import structure_sha256
from linewatch.export.onnx_export import ExportError, OnnxExport, export_onnx
from linewatch.export.parity import ParityReport, compare, ort_infer, ort_session, torch_infer
from linewatch.trainer.methods.base import ScoringGraph

log = logging.getLogger(__name__)

ATOL_SCORE = 1e-3
ATOL_MAP = 1e-2
MAX_GOLDEN = 8


@dataclass
class BundleInfo:
    """What the manifest says about the model beyond the graph itself."""

    name: str
    method: str
    tasks: list[str]
    strategy: str | None = None
    backbone: str | None = None
    calibration: dict[str, Any] = field(default_factory=dict)
    # What the method records about itself (teacher, replay buffer, training): not calibration.
    method_metadata: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None
    golden_source: str = "caller"
    # How frames become model inputs (contract/geometry.py): None = resize, the original behaviour.
    geometry: dict[str, Any] | None = None
    # (H, W) of the tasks' camera frames where known: sizes the batch when frames keep their own size.
    frame_sizes: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class WrittenBundle:
    """Where the bundle went and what it cost."""

    path: Path
    manifest: dict[str, Any]
    seconds: float
    size_bytes: int
    parity: ParityReport
    tar_path: Path | None = None
    static: StaticReport | None = None
    onnx: OnnxExport | None = None

    @property
    def version(self) -> int:
        return int(self.manifest["model"]["version"])


# --------------------------------------------------------------------------- versions


def resolve_version(
    out: Path,
    name: str,
    explicit: int | None = None,
    base_version: int | None = None,
    store: Path | None = None,
) -> int:
    """The next version: above every known version of `name` beside `out`, in the store, in `out`, and the base."""
    known = versions_of(out.parent, name)
    if store is not None:
        known += versions_of(store, name)
    current = read_manifest(out) if out.exists() else None
    if current and isinstance((current.get("model") or {}).get("version"), int):
        known.append(int(current["model"]["version"]))
    if base_version is not None:
        known.append(int(base_version))
    floor = max(known, default=0)
    if explicit is not None:
        if explicit <= floor:
            raise ExportError(
                f"version {explicit} must be greater than {floor}, the highest existing for {name!r}"
            )
        return int(explicit)
    return floor + 1


# --------------------------------------------------------------------------- helpers


def _git_commit() -> dict[str, Any] | None:
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(dirty)}


def _dir_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished temp dir onto `out`; an existing bundle is moved aside, then removed."""
    if out.exists() or out.is_symlink():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(out, old)
        try:
            os.rename(tmp, out)
        except OSError:
            os.rename(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)


def _check_golden_inputs(frames: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
    frames = np.asarray(frames)
    h, w = input_hw
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (h, w, 3):
        raise ExportError(f"golden inputs must be uint8 (G,{h},{w},3), got {frames.dtype}{frames.shape}")
    if not 1 <= len(frames) <= MAX_GOLDEN:
        raise ExportError(f"give 1..{MAX_GOLDEN} golden frames (2-4 is plenty), got {len(frames)}")
    return np.ascontiguousarray(frames)


def _data_signature(arrays: dict[str, np.ndarray]) -> list[tuple[str, list[int], str]]:
    return [(k, [int(s) for s in v.shape], str(v.dtype)) for k, v in arrays.items()]


def _resolve_base(
    out: Path, base: Bundle | Path | str | None, key: Path | None, name: str, store: Path | None
) -> Bundle:
    """The full bundle a refresh applies to: given, or the newest full bundle of `name` in the store / beside `out`."""
    if isinstance(base, Bundle):
        return base
    if base is None:
        candidates = []
        for folder in {out.parent, *([store] if store else [])}:
            for p, m in bundles_in(folder):
                full = (m.get("model") or {}).get("name") == name and not m.get("bank_only")
                if full and p.resolve() != out.resolve():
                    candidates.append((int(m["model"]["version"]), p.is_dir(), str(p)))
        if not candidates:
            raise ExportError(
                f"bank-only refresh needs a base bundle of {name!r}: none beside {out} or in the store; pass --base"
            )
        base = max(candidates)[2]
    try:
        return open_bundle(base, key=key)
    except BundleError as e:
        raise ExportError(f"base bundle refused: {e}") from e


# --------------------------------------------------------------------------- writer


def _tiles_per_frame(info: BundleInfo, input_hw: tuple[int, int]) -> int:
    """Model inputs per frame of the known size (1 for resize/letterbox): one frame is one batch."""
    try:
        geometry = Geometry.from_dict(info.geometry, tuple(input_hw))
        tiles = max([geometry.tiles_per_frame(hw) or 1 for hw in info.frame_sizes], default=0)
        tiles = max(tiles, geometry.tiles_per_frame() or 1)
    except ValueError as e:
        raise ExportError(f"bad geometry {info.geometry}: {e}") from e
    if geometry.tile_hw != tuple(input_hw):
        raise ExportError(f"geometry tile {geometry.tile_hw} is not the graph's input size {tuple(input_hw)}")
    return tiles or 1


def write_bundle(
    graph: ScoringGraph,
    out: str | os.PathLike[str],
    *,
    info: BundleInfo,
    golden_inputs: np.ndarray,
    max_batch: int = 8,
    version: int | None = None,
    sign_key: str | os.PathLike[str] | None = None,
    tar: bool = False,
    bank_only: bool = False,
    base: Bundle | str | os.PathLike[str] | None = None,
    tensorrt: bool = False,
    precisions: tuple[str, ...] = ("fp32",),
    workspace_bytes: int = 1 << 30,
    opset: int = 17,
    exporter: str = "auto",
    limits: CheckLimits | None = None,
    store: str | os.PathLike[str] | None = None,
    int8_calibration: np.ndarray | None = None,
) -> WrittenBundle:
    """Export, check, prove and write a bundle at `out` (a directory); return what was written.

    `store` is the bundle store the bundle will be published into: versions count from it and a
    bank-only refresh finds its base there. `int8_calibration` (training frames) makes the
    model an INT8 graph (`export/quantize.py`); a bank-only refresh follows its base's precision.
    """
    t0 = time.perf_counter()
    out = Path(out).resolve()
    store_dir = Path(store).resolve() if store else None
    out.parent.mkdir(parents=True, exist_ok=True)
    if max_batch < 1:
        raise ExportError("max_batch must be >= 1")
    tiles = _tiles_per_frame(info, graph.input_hw)
    if tiles > max_batch:  # the exporter sets the batch from the geometry
        log.info("max_batch raised from %d to %d: every tile of a frame in one batch", max_batch, tiles)
        max_batch = tiles
    golden = _check_golden_inputs(golden_inputs, graph.input_hw)
    key_path = Path(sign_key) if sign_key else None
    key = signing.load_key(key_path) if key_path else None
    if key is not None and not key.can_sign:
        raise ExportError(f"{key_path} is a public key; signing needs the private key")

    base_bundle: Bundle | None = None
    if bank_only:
        base_bundle = _resolve_base(out, base, key_path, info.name, store_dir)
        if base_bundle.root.resolve() == out:
            raise ExportError("a bank-only refresh must not overwrite its own base bundle")
        if base_bundle.input_hw != tuple(graph.input_hw):
            raise ExportError(f"input size {graph.input_hw} differs from the base's {base_bundle.input_hw}")
        if base_bundle.max_batch < tiles:
            raise ExportError(
                f"a frame has {tiles} tiles; the base graph takes batches of {base_bundle.max_batch}"
            )
        if _data_signature(base_bundle.data_inputs) != _data_signature(graph.data_inputs):
            raise ExportError(
                "data inputs changed shape or dtype since the base bundle "
                f"({_data_signature(base_bundle.data_inputs)} -> {_data_signature(graph.data_inputs)}): "
                "the engine's input shapes are fixed, so a full export is needed"
            )
        if tensorrt:
            log.info("bank-only refresh reuses the base bundle's engines; --tensorrt ignored")
            tensorrt = False
    if tensorrt:  # fail before minutes of export, not after
        from linewatch.edge.model import trt_build

        ok, reason = trt_build.tensorrt_available()
        if not ok:
            raise ExportError(f"--tensorrt: {reason}")
    ver = resolve_version(out, info.name, version, base_bundle.version if base_bundle else None, store_dir)

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        manifest, parity, static, onnx_info = _build(
            graph,
            tmp,
            info=info,
            golden=golden,
            max_batch=max_batch if base_bundle is None else base_bundle.max_batch,
            version=ver,
            base_bundle=base_bundle,
            tensorrt=tensorrt,
            precisions=precisions,
            workspace_bytes=workspace_bytes,
            opset=opset,
            exporter=exporter,
            limits=limits,
            cache_dir=out.parent,
            int8_calibration=int8_calibration,
        )
        manifest = write_manifest(tmp, manifest, signing.signer(key) if key is not None else None)
        # The edge's own reader is the final judge of what we wrote.
        try:
            open_bundle(tmp, key=key_path, base=base_bundle)
        except BundleError as e:
            raise ExportError(f"the written bundle does not pass the edge's checks: {e}") from e
        size = _dir_size(tmp)
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tar_path = write_tar(out, out.parent / f"{out.name}.tar", mtime=time.time()) if tar else None
    seconds = time.perf_counter() - t0
    log.info("bundle %s v%d written in %.1fs (%.2f MB)", out, ver, seconds, size / 1e6)
    return WrittenBundle(out, manifest, seconds, size, parity, tar_path, static, onnx_info)


def _build(
    graph: ScoringGraph,
    tmp: Path,
    *,
    info: BundleInfo,
    golden: np.ndarray,
    max_batch: int,
    version: int,
    base_bundle: Bundle | None,
    tensorrt: bool,
    precisions: tuple[str, ...],
    workspace_bytes: int,
    opset: int,
    exporter: str,
    limits: CheckLimits | None,
    cache_dir: Path,
    int8_calibration: np.ndarray | None = None,
) -> tuple[dict[str, Any], ParityReport, StaticReport | None, OnnxExport | None]:
    """Fill `tmp` with every file but the manifest; return the manifest (files not yet hashed) and the proofs."""
    h, w = graph.input_hw
    static: StaticReport | None = None
    onnx_info: OnnxExport | None = None
    quant: dict[str, Any] | None = None
    if base_bundle is None:
        onnx_info = export_onnx(graph, tmp / MODEL_NAME, max_batch=max_batch, opset=opset, exporter=exporter)
        if int8_calibration is not None:
            quant = quantize.replace_with_int8(tmp / MODEL_NAME, graph.data_inputs, int8_calibration)
        static = run_static_checks(tmp / MODEL_NAME, max_batch, limits)
        try:
            static.raise_for_failures()
        except Exception as e:
            notes = "".join(f"\n  note: {n}" for n in onnx_info.notes)
            raise ExportError(f"{e}{notes}") from e
        graph_path = tmp / MODEL_NAME
    else:
        # Prove the new run's graph is the base graph: same bytes once exported.
        with tempfile.TemporaryDirectory(dir=tmp.parent) as scratch:
            probe = Path(scratch) / MODEL_NAME
            onnx_info = export_onnx(
                graph, probe, max_batch=base_bundle.max_batch, opset=opset, exporter=exporter
            )
            quant = base_bundle.manifest.get("quantization")
            if sha256_file(probe) != quantize.fp32_graph_sha256(
                base_bundle.manifest, base_bundle.graph_sha256
            ):
                raise ExportError(
                    "this run's scoring graph differs from the base bundle's model.onnx (weights, code "
                    "or export settings changed): a bank-only refresh is not possible, do a full export"
                )
        graph_path = base_bundle.onnx_path

    data_entries = write_data_inputs(tmp, graph.data_inputs)
    extra = _method_manifest(graph, tmp, golden, opset, base_bundle)

    # Golden samples: torch is the reference; the ONNX graph (fed these arrays) must agree.
    reference = torch_infer(graph, golden, batch_size=max_batch)
    session = ort_session(graph_path)
    onnx_out = ort_infer(session, dict(graph.data_inputs), golden, batch_size=max_batch)
    # INT8: the graph's own outputs are golden (own tolerances); its drift from FP32 is bounded.
    tol, golden_out = (quantize.GOLDEN_ATOL, onnx_out) if quant else ((ATOL_SCORE, ATOL_MAP), reference)
    parity = compare(reference, onnx_out, *(quantize.FP32_DRIFT if quant else tol))
    if not parity.ok:
        raise ExportError(f"ONNX graph disagrees with torch on the golden frames, bundle refused: {parity}")
    quant = {**quant, "fp32_parity": parity.as_dict()} if quant else None
    golden_entry = write_golden(
        tmp, golden, golden_out, atol_score=tol[0], atol_map=tol[1], source=info.golden_source
    )

    # Trained methods retrain their weights on every refresh: their engines are built
    # refittable, and the structure hash tells a box which cached engine can take new weights.
    refit = {
        "refittable": bool(graph.meta.get("refittable", False)),
        "structure_sha256": structure_sha256(graph_path),
    }
    engines: list[dict[str, Any]] = []
    if tensorrt:
        if quant is not None:
            raise ExportError("--int8 with --tensorrt: build INT8 engines from the QDQ graph on the box")
        engines = build_engines(
            tmp,
            graph,
            golden,
            reference,
            max_batch,
            precisions,
            workspace_bytes,
            cache_dir,
            refit,
            (ATOL_SCORE, ATOL_MAP),
        )

    provenance = dict(info.provenance)
    provenance.setdefault("code", _git_commit())
    manifest = new_manifest(
        name=info.name,
        version=version,
        method=info.method,
        tasks=extra.pop("slot_tasks", info.tasks),
        input_hw=(h, w),
        max_batch=max_batch,
        data_inputs=data_entries,
        golden=golden_entry,
        geometry=info.geometry,
        engines=engines,
        strategy=info.strategy,
        backbone=info.backbone,
        calibration=info.calibration,
        method_metadata=info.method_metadata,
        provenance=provenance,
        metrics=info.metrics,
        refit=refit,
        **({"quantization": quant} if quant else {}),
        bank_only=(
            {"base_version": base_bundle.version, "graph_sha256": base_bundle.graph_sha256}
            if base_bundle
            else None
        ),
        export={
            **(onnx_info.as_manifest() if onnx_info else {}),
            "golden_parity": parity.as_dict(),
            "static_checks": static.as_manifest() if static else None,
        },
        **extra,
    )
    return manifest, parity, static, onnx_info


def _method_manifest(
    graph: ScoringGraph, tmp: Path, golden: np.ndarray, opset: int, base_bundle: Bundle | None
) -> dict[str, Any]:
    """Manifest sections a method adds (`graph.meta["manifest"]`), and its embedding graph.

    A few-shot graph carries `graph.embedding` (frames -> patch features): a full bundle gets it
    as `embed.onnx`; a bank-only refresh uses its base's, which the base's hash already covers.
    """
    extra = dict(graph.meta.get("manifest") or {})
    embedding = graph.embedding
    if embedding is not None and base_bundle is None:
        from linewatch.contract.fewshot import EMBED_NAME
        from linewatch.export.embedding import export_embedding

        err = export_embedding(embedding, tmp / EMBED_NAME, golden, opset)
        if "fewshot" in extra:
            extra["fewshot"] = {**extra["fewshot"], "embedding_parity": err}
    return extra
