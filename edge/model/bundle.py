"""Reading and verifying a model bundle on the box (the export/edge contract).

A bundle is refused before anything in it is used: every check below raises
`BundleError` naming the check, so the runtime can log it and keep serving the old
model. Checks run in this order, cheapest and most basic first:

1. `manifest`: `manifest.json` is present and is a JSON object.
2. `schema`: `schema_version` is one this edge knows (a newer one asks to upgrade the edge).
3. `keys`: the required manifest keys are present.
4. `files`: every listed file exists inside the bundle and its sha256 matches.
5. `unlisted`: no `.npy`, `.onnx` or `.plan` file is present that the manifest does not list.
6. `signature`: when a key is given (or a signature is required): present, valid under the
   release key, or under an allowed box key for a bank-only bundle on a release-signed base.
7. `data_inputs`: every data array loads without pickles and has the manifest's shape and dtype.
8. `golden`: the golden arrays load and agree with the input contract.
9. `bank_only`: a bank-only refresh names a base bundle whose graph it was proven against.

**Bank-only refresh bundles** carry only the data arrays (memory bank, Gaussians,
normalisation), golden samples and a manifest with `bank_only = {base_version,
graph_sha256}`. They reuse the base bundle's `model.onnx` and its TensorRT engines, so
no engine rebuild is needed. `open_bundle` resolves the base (given explicitly, or found
beside the refresh bundle by name, version and graph hash), verifies it with the same
key policy, and returns a `Bundle` whose `onnx_path` and `engines` are the base's and
whose data inputs and golden samples are the refresh's (computed by torch at export, or by
onnxruntime on a box that onboarded a part), checked again on the backend before going live.

Checks 2-5 are the export/edge contract in `contract/manifest.py` (tars: `contract/bundle_tar.py`);
this module adds the signature, the arrays, the base of a refresh and `check_golden` (a backend).
No pickles (`np.load(..., allow_pickle=False)`); never torch or onnx.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from linewatch.contract.bundle_tar import extract_tar
from linewatch.contract.errors import BundleError
from linewatch.contract.geometry import Geometry
from linewatch.contract.manifest import (
    GOLDEN_DIR,
    MANIFEST_NAME,
    MODEL_NAME,
    SCHEMA_VERSION,
    SIGNATURE_NAME,
    check_files,
    check_keys,
    check_schema,
    check_unlisted,
    load_npy,
    read_manifest,
    sha256_file,
)
from linewatch.contract.store import bundles_in
from linewatch.edge.model import signing

# Re-exported: the exporter, the CLI and the tests import these names from here.
__all__ = [
    "GOLDEN_DIR",
    "MANIFEST_NAME",
    "MODEL_NAME",
    "SCHEMA_VERSION",
    "SIGNATURE_NAME",
    "Bundle",
    "BundleError",
    "GoldenReport",
    "GoldenSet",
    "check_golden",
    "open_bundle",
    "read_manifest",
    "sha256_file",
]


@dataclass
class GoldenSet:
    """Frames with the outputs the graph must give (computed by the torch model at export)."""

    inputs: np.ndarray  # (G, H, W, 3) uint8
    scores: np.ndarray  # (G,) float32
    maps: np.ndarray  # (G, H, W) float32
    tasks: np.ndarray  # (G,) int64
    atol_score: float
    atol_map: float


@dataclass
class GoldenReport:
    """How far a backend's outputs are from the golden ones."""

    n: int
    max_score_error: float
    max_map_error: float
    task_mismatches: int
    atol_score: float
    atol_map: float

    @property
    def ok(self) -> bool:
        return self.max_score_error <= self.atol_score and self.max_map_error <= self.atol_map

    def as_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "max_score_error": self.max_score_error,
            "max_map_error": self.max_map_error,
            "task_mismatches": self.task_mismatches,
            "atol_score": self.atol_score,
            "atol_map": self.atol_map,
            "ok": self.ok,
        }


@dataclass
class Bundle:
    """A verified bundle, ready for a backend.

    For a bank-only refresh, `onnx_path` and `engines` come from `base`; `root`,
    `manifest`, `data_inputs` and `golden` are the refresh's own.
    """

    root: Path
    manifest: dict[str, Any]
    onnx_path: Path
    data_inputs: dict[str, np.ndarray]  # graph order
    golden: GoldenSet
    signature_verified: bool = False
    key_id: str | None = None
    signer: str | None = None  # "release" or "box" (see open_bundle's trust model); None if unsigned
    base: Bundle | None = None
    source: Path | None = None  # the directory or .tar that was opened
    _engine_root: Path | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return str(self.manifest["model"]["name"])

    @property
    def version(self) -> int:
        return int(self.manifest["model"]["version"])

    @property
    def input_hw(self) -> tuple[int, int]:
        inp = self.manifest["input"]
        return int(inp["height"]), int(inp["width"])

    @property
    def max_batch(self) -> int:
        return int(self.manifest["input"]["max_batch"])

    @property
    def tasks(self) -> list[str]:
        return list(self.manifest["tasks"])

    @property
    def geometry(self) -> dict[str, Any]:
        """How frames become model inputs (manifest `geometry`, see contract/geometry.py).

        A bundle without the key was exported before geometries existed: it resizes.
        """
        return Geometry.from_dict(self.manifest.get("geometry"), self.input_hw).as_dict()

    @property
    def threshold(self) -> float:
        return float(self.manifest["threshold"])

    @property
    def is_bank_only(self) -> bool:
        return bool(self.manifest.get("bank_only"))

    @property
    def graph_sha256(self) -> str:
        """sha256 of the ONNX graph this bundle runs (the base's for a bank-only refresh)."""
        if self.base is not None:
            return self.base.graph_sha256
        return str(self.manifest["files"][MODEL_NAME])

    @property
    def structure_sha256(self) -> str | None:
        """Hash of the graph without its weight values (None for bundles older than refit)."""
        if self.base is not None:
            return self.base.structure_sha256
        refit = self.manifest.get("refit") or {}
        return str(refit["structure_sha256"]) if refit.get("structure_sha256") else None

    @property
    def refittable(self) -> bool:
        """Whether engines for this graph are built refittable (its weights change on refresh)."""
        if self.base is not None:
            return self.base.refittable
        return bool((self.manifest.get("refit") or {}).get("refittable", False))

    @property
    def engines(self) -> list[dict[str, Any]]:
        """Engine entries (a bank-only refresh uses its base's), each with an absolute `path`."""
        if self.base is not None:
            return self.base.engines
        root = self._engine_root or self.root
        return [{**e, "path": str(root / e["file"])} for e in self.manifest.get("engines", [])]


# --------------------------------------------------------------------------- checks


def _check_signature(
    manifest_bytes: bytes,
    root: Path,
    key: Path | None,
    require: bool,
    path: Path,
    box_keys: Sequence[Path] = (),
) -> tuple[bool, str | None, str | None]:
    """(verified, key id, signer role): the role is "release" for `key`, "box" for an allowed box key."""
    sig_path = root / SIGNATURE_NAME
    if key is None:
        if box_keys:
            raise BundleError("signature", "box keys are allowed only beside a release key", path)
        if require:
            raise BundleError("signature", "a signature is required but no key was given to verify it", path)
        return False, None, None
    if not sig_path.is_file():
        raise BundleError(
            "signature", f"bundle is unsigned ({SIGNATURE_NAME} missing) and a key was given", path
        )
    try:
        doc = signing.parse_signature(sig_path.read_bytes())
        role = signing.verify_with_policy(manifest_bytes, doc, key, box_keys)
    except signing.SignatureError as e:
        raise BundleError("signature", str(e), path) from e
    return True, doc["key_id"], role


def _load_data_inputs(manifest: dict[str, Any], root: Path, path: Path) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for entry in manifest["data_inputs"]:
        try:
            name, rel, shape, dtype = entry["name"], entry["file"], entry["shape"], entry["dtype"]
        except (KeyError, TypeError) as e:
            raise BundleError("data_inputs", f"entry {entry!r} lacks name/file/shape/dtype", path) from e
        if rel not in manifest["files"]:
            raise BundleError("data_inputs", f"{name}: file {rel} is not hashed in files", path)
        arr = load_npy(root / rel, "data_inputs", path)
        if list(arr.shape) != [int(s) for s in shape] or str(arr.dtype) != str(dtype):
            raise BundleError(
                "data_inputs",
                f"{name}: array is {arr.dtype}{list(arr.shape)}, manifest says {dtype}{list(shape)}",
                path,
            )
        if name in arrays:
            raise BundleError("data_inputs", f"duplicate data input {name}", path)
        arrays[name] = arr
    return arrays


def _load_golden(manifest: dict[str, Any], root: Path, path: Path) -> GoldenSet:
    g = manifest["golden"]
    arrays = {}
    for k in ("inputs", "scores", "maps", "tasks"):
        rel = g[k]
        if rel not in manifest["files"]:
            raise BundleError("golden", f"{k}: file {rel} is not hashed in files", path)
        arrays[k] = load_npy(root / rel, "golden", path)
    h, w = int(manifest["input"]["height"]), int(manifest["input"]["width"])
    inputs, scores, maps, tasks = arrays["inputs"], arrays["scores"], arrays["maps"], arrays["tasks"]
    n = inputs.shape[0] if inputs.ndim == 4 else -1
    if inputs.dtype != np.uint8 or inputs.shape[1:] != (h, w, 3) or n < 1:
        raise BundleError(
            "golden", f"inputs must be uint8 (G,{h},{w},3), got {inputs.dtype}{inputs.shape}", path
        )
    if scores.shape != (n,) or maps.shape != (n, h, w) or tasks.shape != (n,):
        raise BundleError(
            "golden",
            f"outputs do not match {n} inputs: scores{scores.shape} maps{maps.shape} tasks{tasks.shape}",
            path,
        )
    return GoldenSet(
        inputs=inputs,
        scores=scores.astype(np.float32, copy=False),
        maps=maps.astype(np.float32, copy=False),
        tasks=tasks.astype(np.int64, copy=False),
        atol_score=float(g["atol_score"]),
        atol_map=float(g["atol_map"]),
    )


def _find_base(refresh_root: Path, search_dirs: list[Path], manifest: dict[str, Any]) -> Path | None:
    """Locate a bank-only refresh's base among sibling bundles: same name, version and graph hash."""
    info = manifest["bank_only"]
    name = manifest["model"]["name"]
    candidates: list[Path] = []
    for d in search_dirs:
        for p, m in bundles_in(d):
            if p.resolve() == refresh_root.resolve():
                continue
            if (
                m.get("model", {}).get("name") == name
                and m.get("model", {}).get("version") == info.get("base_version")
                and not m.get("bank_only")
                and m.get("files", {}).get(MODEL_NAME) == info.get("graph_sha256")
            ):
                candidates.append(p)
    # Prefer an unpacked directory over a tar of the same bundle.
    candidates.sort(key=lambda p: (not p.is_dir(), p.name))
    return candidates[0] if candidates else None


def _resolve_base(
    manifest: dict[str, Any],
    root: Path,
    source: Path,
    base: Bundle | str | os.PathLike[str] | None,
    key: Path | None,
    require_signature: bool,
    box_signed: bool = False,
) -> Bundle:
    info = manifest.get("bank_only")
    if not isinstance(info, dict) or "graph_sha256" not in info or "base_version" not in info:
        raise BundleError("bank_only", "bank_only must be {base_version, graph_sha256}", source)
    if base is None:
        found = _find_base(root, [source.parent, root.parent], manifest)
        if found is None:
            raise BundleError(
                "bank_only",
                f"refresh needs base bundle {manifest['model']['name']} v{info['base_version']} "
                f"(graph sha256 {info['graph_sha256'][:16]}...); none found beside it; pass base=",
                source,
            )
        base = found
    # Never with box keys: the base of a refresh is always signed by the release key.
    base_bundle = (
        base if isinstance(base, Bundle) else open_bundle(base, key=key, require_signature=require_signature)
    )
    release_id = signing.load_key(key).key_id if box_signed and key is not None else None
    if box_signed and (base_bundle.signer != "release" or base_bundle.key_id != release_id):
        raise BundleError(
            "signature", "a box-signed bundle must sit on a base signed by the release key", source
        )
    if base_bundle.is_bank_only:
        raise BundleError("bank_only", "the base of a refresh must be a full bundle", source)
    if base_bundle.graph_sha256 != info["graph_sha256"]:
        raise BundleError(
            "bank_only",
            f"base graph sha256 {base_bundle.graph_sha256[:16]}... is not the one this refresh was "
            f"proven against ({info['graph_sha256'][:16]}...)",
            source,
        )
    if base_bundle.name != manifest["model"]["name"]:
        raise BundleError("bank_only", f"base is model {base_bundle.name!r}, refresh is for another", source)
    # The engine takes the arrays as inputs with static shapes: they must not change.
    base_sig = [
        (e["name"], [int(s) for s in e["shape"]], str(e["dtype"]))
        for e in base_bundle.manifest["data_inputs"]
    ]
    new_sig = [(e["name"], [int(s) for s in e["shape"]], str(e["dtype"])) for e in manifest["data_inputs"]]
    if base_sig != new_sig:
        raise BundleError(
            "bank_only",
            f"data inputs {new_sig} differ from the base graph's {base_sig}: a full re-export is needed",
            source,
        )
    if base_bundle.input_hw != (int(manifest["input"]["height"]), int(manifest["input"]["width"])):
        raise BundleError("bank_only", "input size differs from the base graph", source)
    return base_bundle


# --------------------------------------------------------------------------- public API


def open_bundle(
    path: str | os.PathLike[str],
    key: str | os.PathLike[str] | None = None,
    require_signature: bool = False,
    base: Bundle | str | os.PathLike[str] | None = None,
    box_keys: Sequence[str | os.PathLike[str]] = (),
) -> Bundle:
    """Open and verify a bundle directory or `.tar`; raise BundleError on the first failed check.

    `key` is a public Ed25519 key (or the shared HMAC secret). With a key, an unsigned or
    mismatching bundle is refused; with `require_signature=True` a key is mandatory.
    `base` is only used for bank-only refresh bundles (see the module docstring).

    Trust model: `key` is the release key. `box_keys` are keys of boxes allowed to sign what they
    onboard themselves (`linewatch-edge onboard`); each must be listed explicitly, only beside a
    release key. A bundle signed by a box key is accepted only if it is bank-only and its base
    (the graphs, hence what runs) verifies under the release key alone: a box can change which
    good patches a task is compared with, never the code or weights that run.
    """
    source = Path(path)
    key_path = Path(key) if key is not None else None
    if source.is_file():
        if not tarfile.is_tarfile(source):
            raise BundleError("manifest", "not a bundle directory or a .tar", source)
        root = extract_tar(source)
    elif source.is_dir():
        root = source
    else:
        raise BundleError("manifest", "no such bundle directory or .tar", source)

    manifest_path = root / MANIFEST_NAME
    try:
        manifest_bytes = manifest_path.read_bytes()
    except OSError as e:
        raise BundleError("manifest", f"{MANIFEST_NAME} missing or unreadable: {e}", source) from e
    try:
        manifest = json.loads(manifest_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError("manifest", f"{MANIFEST_NAME} is not valid JSON: {e}", source) from e
    if not isinstance(manifest, dict):
        raise BundleError("manifest", f"{MANIFEST_NAME} must hold a JSON object", source)

    check_schema(manifest, source)
    check_keys(manifest, source)
    check_files(manifest, root, source)
    check_unlisted(manifest, root, source)
    box_paths = [Path(b) for b in box_keys]
    verified, key_id, signer = _check_signature(
        manifest_bytes, root, key_path, require_signature, source, box_paths
    )
    if signer == "box" and not manifest.get("bank_only"):
        raise BundleError("signature", f"box key {key_id} may sign bank-only bundles only", source)
    data_inputs = _load_data_inputs(manifest, root, source)
    golden = _load_golden(manifest, root, source)

    base_bundle: Bundle | None = None
    if manifest.get("bank_only"):
        base_bundle = _resolve_base(
            manifest, root, source, base, key_path, require_signature, box_signed=signer == "box"
        )
        onnx_path = base_bundle.onnx_path
    else:
        onnx_path = root / MODEL_NAME
        if manifest["input"].get("max_batch") is None:
            raise BundleError("keys", "input.max_batch missing", source)
    return Bundle(
        root=root,
        manifest=manifest,
        onnx_path=onnx_path,
        data_inputs=data_inputs,
        golden=golden,
        signature_verified=verified,
        key_id=key_id,
        signer=signer,
        base=base_bundle,
        source=source,
    )


InferFn = Callable[[np.ndarray], tuple[np.ndarray, ...]]


def check_golden(bundle: Bundle, infer: InferFn, batch_size: int | None = None) -> GoldenReport:
    """Run the golden frames through `infer` and compare with the recorded outputs.

    `infer(frames_uint8_nhwc)` returns `(maps, scores)` or `(maps, scores, tasks)` for a
    batch of at most `batch_size` (default: the bundle's max_batch) frames. Raises
    BundleError("golden") when any map or score differs beyond the manifest's tolerance
    or is not finite; returns the report (max errors) otherwise.
    """
    g = bundle.golden
    bs = max(1, int(batch_size or bundle.max_batch))
    maps_out, scores_out, tasks_out = [], [], []
    for i in range(0, len(g.inputs), bs):
        out = infer(np.ascontiguousarray(g.inputs[i : i + bs]))
        if not isinstance(out, (tuple, list)) or len(out) < 2:
            raise BundleError("golden", "infer must return (maps, scores[, tasks])", bundle.source)
        maps_out.append(np.asarray(out[0], dtype=np.float32))
        scores_out.append(np.asarray(out[1], dtype=np.float32).reshape(-1))
        if len(out) > 2 and out[2] is not None:
            tasks_out.append(np.asarray(out[2]).reshape(-1).astype(np.int64))
    maps = np.concatenate(maps_out)
    scores = np.concatenate(scores_out)
    if maps.shape != g.maps.shape or scores.shape != g.scores.shape:
        raise BundleError(
            "golden",
            f"backend returned maps{maps.shape} scores{scores.shape}, expected {g.maps.shape} {g.scores.shape}",
            bundle.source,
        )
    score_err = float(np.max(np.abs(scores - g.scores))) if np.all(np.isfinite(scores)) else float("inf")
    map_err = float(np.max(np.abs(maps - g.maps))) if np.all(np.isfinite(maps)) else float("inf")
    mismatches = 0
    if tasks_out:
        tasks = np.concatenate(tasks_out)
        mismatches = int(np.sum(tasks != g.tasks)) if tasks.shape == g.tasks.shape else len(g.tasks)
    report = GoldenReport(len(g.inputs), score_err, map_err, mismatches, g.atol_score, g.atol_map)
    if not report.ok:
        raise BundleError(
            "golden",
            f"outputs differ from the golden samples: max score error {score_err:.3g} "
            f"(tolerance {g.atol_score}), max map error {map_err:.3g} (tolerance {g.atol_map}), "
            f"{mismatches} task mismatches",
            bundle.source,
        )
    return report
