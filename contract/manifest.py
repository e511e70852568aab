"""The bundle manifest: its schema, its file names, and the one reader and writer of it.

A bundle is a folder (or a ``.tar`` of one) holding ``model.onnx``, one ``<name>.npy`` per data
input, golden samples under ``golden/``, ``manifest.json`` and, when signed, ``manifest.sig``.
The exporter writes it, the edge verifies it, the refresh job publishes it and the tests make toy
ones: all through this module, so that what is written is exactly what is checked.

- Writing: :func:`write_data_inputs` and :func:`write_golden` save the arrays (``.npy``, never
  pickles) and return their manifest entries; :func:`new_manifest` fills in the schema's fixed
  parts (input contract, output names and shapes, threshold 0.5, geometry); :func:`write_manifest`
  hashes every file, writes ``manifest.json`` and, given a signer, ``manifest.sig``.
- Reading: :func:`read_manifest` (no checks; for scanning a store), and the checks a bundle must
  pass before anything in it is used (:func:`check_schema`, :func:`check_keys`,
  :func:`check_files`, :func:`check_unlisted`, :func:`load_npy`), each raising ``BundleError``
  naming the check. ``edge.model.bundle.open_bundle`` runs them in order and adds signature, data and
  golden-sample checks.

numpy only (no torch, no onnx).
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from linewatch.contract.errors import BundleError
from linewatch.contract.geometry import Geometry
from linewatch.contract.graph_io import OUTPUT_DTYPES, output_shapes

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
MODEL_NAME = "model.onnx"
GOLDEN_DIR = "golden"
GOLDEN_ARRAYS = ("inputs", "scores", "maps", "tasks")
GUARDED_SUFFIXES = (".npy", ".onnx", ".plan")  # every such file in a bundle must be listed
THRESHOLD = 0.5  # the graph's map and score are normalised so that this is the decision threshold
REQUIRED_KEYS = (
    "schema_version",
    "model",
    "created",
    "method",
    "tasks",
    "input",
    "outputs",
    "data_inputs",
    "threshold",
    "files",
    "golden",
    "engines",
)
INPUT_KEYS = ("height", "width", "channels", "dtype", "layout", "max_batch")
GOLDEN_KEYS = (*GOLDEN_ARRAYS, "atol_score", "atol_map")
_CHUNK = 1 << 20

Signer = Callable[[bytes], bytes]  # manifest.json bytes -> manifest.sig bytes (edge.model.signing.signer)


# --------------------------------------------------------------------------- files and hashes


def sha256_file(path: Path | str) -> str:
    """Streamed sha256 (bundles carry arrays of hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def safe_relpath(rel: str) -> bool:
    """A manifest path must stay inside the bundle: relative, POSIX, no '..'."""
    if not rel or "\\" in rel or "\x00" in rel:
        return False
    p = PurePosixPath(rel)
    return not p.is_absolute() and ".." not in p.parts and p.parts[0] not in ("", ".")


def hash_files(root: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file in the bundle but the manifest and its signature."""
    return {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).as_posix() not in (MANIFEST_NAME, SIGNATURE_NAME)
    }


def save_npy(path: Path, array: np.ndarray) -> None:
    """An array as ``.npy`` without pickles, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def load_npy(path: Path, check: str, bundle_path: Path) -> np.ndarray:
    """An array of the bundle; pickled or malformed files are refused as a failed ``check``."""
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        # numpy raises ValueError for object arrays when pickles are refused.
        raise BundleError(check, f"{path.name}: refused (pickled or malformed .npy): {e}", bundle_path) from e
    except OSError as e:
        raise BundleError(check, f"{path.name}: unreadable: {e}", bundle_path) from e


# --------------------------------------------------------------------------- writing


def write_data_inputs(root: Path, arrays: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """Save each data input as ``<name>.npy``; their manifest entries, in graph order."""
    entries = []
    for name, array in arrays.items():
        rel = f"{name}.npy"
        save_npy(root / rel, array)
        entries.append(
            {"name": name, "file": rel, "shape": [int(s) for s in array.shape], "dtype": str(array.dtype)}
        )
    return entries


def write_golden(
    root: Path,
    inputs: np.ndarray,
    outputs: tuple[np.ndarray, np.ndarray, np.ndarray],
    *,
    atol_score: float,
    atol_map: float,
    **extra: Any,
) -> dict[str, Any]:
    """Save golden frames (G, H, W, 3) uint8 and the (maps, scores, tasks) they must give; the entry."""
    maps, scores, tasks = outputs
    arrays = {
        "inputs": np.asarray(inputs, np.uint8),
        "scores": np.asarray(scores, np.float32),
        "maps": np.asarray(maps, np.float32),
        "tasks": np.asarray(tasks, np.int64),
    }
    entry: dict[str, Any] = {}
    for key, array in arrays.items():
        entry[key] = f"{GOLDEN_DIR}/{key}.npy"
        save_npy(root / entry[key], array)
    return {**entry, "atol_score": float(atol_score), "atol_map": float(atol_map), "n": len(inputs), **extra}


def utc_now() -> str:
    """The manifest's ``created``: UTC, ISO-8601, seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def new_manifest(
    *,
    name: str,
    version: int,
    method: str,
    tasks: Sequence[str],
    input_hw: tuple[int, int],
    max_batch: int,
    data_inputs: list[dict[str, Any]],
    golden: dict[str, Any],
    geometry: Mapping[str, Any] | None = None,
    engines: Sequence[Mapping[str, Any]] = (),
    created: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A manifest with the schema's fixed parts filled in; ``extra`` keys (method-specific) are kept.

    ``files`` is left to :func:`write_manifest`, which hashes what is in the folder at that moment.
    """
    h, w = int(input_hw[0]), int(input_hw[1])
    return {
        "schema_version": SCHEMA_VERSION,
        "model": {"name": name, "version": int(version)},
        "created": created or utc_now(),
        "method": method,
        "tasks": list(tasks),
        "input": {
            "height": h,
            "width": w,
            "channels": 3,
            "color": "RGB",
            "dtype": "uint8",
            "layout": "NHWC",
            "max_batch": int(max_batch),
        },
        "outputs": output_shapes((h, w)),
        "output_dtypes": dict(OUTPUT_DTYPES),
        "geometry": Geometry.from_dict(dict(geometry) if geometry else None, (h, w)).as_dict(),
        "data_inputs": data_inputs,
        "threshold": THRESHOLD,
        "golden": golden,
        "engines": [dict(e) for e in engines],
        **extra,
    }


def write_manifest(root: Path, manifest: Mapping[str, Any], sign: Signer | None = None) -> dict[str, Any]:
    """Hash every file under ``root`` into ``files``, write ``manifest.json`` (and ``manifest.sig``).

    Returns the manifest as written. ``sign`` turns the exact manifest bytes into the signature
    file's bytes (``edge.model.signing.signer(key)``); without it the bundle is unsigned.
    """
    doc = {**manifest, "files": hash_files(root)}
    raw = (json.dumps(doc, indent=2) + "\n").encode("utf-8")
    (root / MANIFEST_NAME).write_bytes(raw)
    if sign is not None:
        (root / SIGNATURE_NAME).write_bytes(sign(raw))
    return doc


# --------------------------------------------------------------------------- reading


def _manifest_from_tar(path: Path) -> dict[str, Any] | None:
    try:
        with tarfile.open(path, "r:*") as tf:
            for member in tf.getmembers():
                parts = PurePosixPath(member.name).parts
                if member.isfile() and parts and parts[-1] == MANIFEST_NAME and len(parts) <= 2:
                    f = tf.extractfile(member)
                    data = json.loads(f.read()) if f is not None else None
                    return data if isinstance(data, dict) else None
    except (OSError, tarfile.TarError, ValueError):
        return None
    return None


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The manifest of a bundle directory or .tar without verifying anything (None if unreadable).

    For scanning a store for versions and bases; never to trust a bundle.
    """
    p = Path(path)
    if p.is_dir():
        try:
            data = json.loads((p / MANIFEST_NAME).read_bytes())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None
    if p.is_file() and tarfile.is_tarfile(p):
        return _manifest_from_tar(p)
    return None


# --------------------------------------------------------------------------- checks


def check_schema(manifest: Mapping[str, Any], path: Path | str | None = None) -> None:
    """``schema_version`` is one this code knows; a newer one asks to upgrade first."""
    version = manifest.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise BundleError("schema", f"schema_version must be an integer, got {version!r}", path)
    if version > SCHEMA_VERSION:
        raise BundleError(
            "schema",
            f"bundle schema_version {version} is newer than this edge supports ({SCHEMA_VERSION}): "
            "upgrade the edge software (pip install -U linewatch) before deploying this bundle",
            path,
        )
    if version < 1:
        raise BundleError("schema", f"unknown schema_version {version}", path)


def check_keys(manifest: Mapping[str, Any], path: Path | str | None = None) -> None:
    """The required keys, the input contract, the golden entry and the geometry."""
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BundleError("keys", f"manifest lacks required keys {missing}", path)
    model = manifest["model"]
    if not isinstance(model, dict) or "name" not in model or not isinstance(model.get("version"), int):
        raise BundleError("keys", "model must be {name, version (int)}", path)
    inp = manifest["input"]
    if not isinstance(inp, dict) or any(k not in inp for k in INPUT_KEYS):
        raise BundleError("keys", f"input must carry {list(INPUT_KEYS)}", path)
    if inp["dtype"] != "uint8" or inp["layout"] != "NHWC" or int(inp["channels"]) != 3:
        raise BundleError("keys", f"input contract must be uint8 NHWC with 3 channels, got {inp}", path)
    if not isinstance(manifest["files"], dict):
        raise BundleError("keys", "files must map relative paths to sha256", path)
    if not isinstance(manifest["data_inputs"], list):
        raise BundleError("keys", "data_inputs must be a list", path)
    golden = manifest["golden"]
    if not isinstance(golden, dict) or any(k not in golden for k in GOLDEN_KEYS):
        raise BundleError("keys", f"golden must carry {list(GOLDEN_KEYS)}", path)
    if not manifest.get("bank_only") and MODEL_NAME not in manifest["files"]:
        raise BundleError("keys", f"a full bundle must list {MODEL_NAME} in files", path)
    _check_geometry(manifest, path)


def _check_geometry(manifest: Mapping[str, Any], path: Path | str | None) -> None:
    """Optional `geometry`: a known mode, tiles of the input size, a batch that holds a frame's tiles."""
    doc = manifest.get("geometry")
    if doc is None:
        return
    hw = (int(manifest["input"]["height"]), int(manifest["input"]["width"]))
    try:
        if not isinstance(doc, dict):
            raise ValueError("must be an object")
        geometry = Geometry.from_dict(doc, hw)
        tiles = geometry.tiles_per_frame()
    except (TypeError, ValueError) as e:
        raise BundleError("keys", f"geometry {doc!r}: {e}", path) from e
    if geometry.tile_hw != hw:
        raise BundleError("keys", f"geometry tile {geometry.tile_hw} is not the input size {hw}", path)
    if tiles is not None and tiles > int(manifest["input"]["max_batch"]):
        raise BundleError(
            "keys", f"a frame has {tiles} tiles but input.max_batch is {manifest['input']['max_batch']}", path
        )


def check_files(manifest: Mapping[str, Any], root: Path, path: Path | str | None = None) -> None:
    """Every listed file is inside the bundle, a regular file, and has the listed sha256."""
    for rel, digest in manifest["files"].items():
        if rel in (MANIFEST_NAME, SIGNATURE_NAME):
            raise BundleError("files", f"{rel} must not list itself", path)
        if not safe_relpath(rel) or not isinstance(digest, str):
            raise BundleError("files", f"bad entry {rel!r}: {digest!r}", path)
        fp = root / rel
        if fp.is_symlink():
            raise BundleError("files", f"{rel} is a symlink; refused", path)
        if not fp.is_file():
            raise BundleError("files", f"{rel} is listed but missing", path)
        actual = sha256_file(fp)
        if actual != digest.lower():
            raise BundleError("files", f"{rel}: sha256 {actual} does not match the manifest ({digest})", path)


def check_unlisted(manifest: Mapping[str, Any], root: Path, path: Path | str | None = None) -> None:
    """No ``.npy``, ``.onnx`` or ``.plan`` file is present that the manifest does not list."""
    listed = set(manifest["files"])
    extra = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.suffix.lower() in GUARDED_SUFFIXES and p.relative_to(root).as_posix() not in listed
    )
    if extra:
        raise BundleError("unlisted", f"files not in the manifest: {extra}", path)
