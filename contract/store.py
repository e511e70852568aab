"""The bundle store: the one folder the exporter numbers versions in, the refresh job publishes into
and the edge watches. Its layout is a contract between the three, written here once::

    <store>/<name>-v000007/        one complete, immutable bundle per version
    <store>/current -> <name>-v000007   relative symlink, replaced atomically: the live bundle
    <store>/.<name>.engines/       TensorRT plans the box built for every version of a model,
                                   one sub-folder per graph (sha256[:16]), so version N+1 finds N's plan
    <store>/.<name>-v000007.engines/   per-bundle engine caches (onnxruntime's TensorRT provider)
    <store>/.*                     anything hidden (temporaries, rejected bundles, extracted tars)
                                   is not a bundle: every scan skips dot-names

Earlier code called this folder "registry" in places (the exporter's ``--registry`` flag); it is
one folder with one name: the store.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from linewatch.contract.errors import BundleError
from linewatch.contract.manifest import MANIFEST_NAME, check_schema, read_manifest

CURRENT = "current"
CURRENT_TMP_PREFIX = f"{CURRENT}.tmp-"  # a new `current` is made under this name, then renamed
ENGINES_SUFFIX = ".engines"
DIR_RE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)-v(?P<version>\d+)$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True, order=True)
class Published:
    """A bundle folder of the store, ordered by version."""

    version: int
    name: str
    dirname: str


def bundle_dirname(name: str, version: int) -> str:
    """`linewatch-v000007`: zero-padded so a plain `ls` sorts by version."""
    return f"{name}-v{version:06d}"


def parse_dirname(dirname: str) -> Published | None:
    """The name and version a bundle folder's name says, or None for anything else."""
    match = DIR_RE.match(dirname)
    return Published(int(match["version"]), match["name"], dirname) if match else None


def is_hidden(name: str) -> bool:
    return name.startswith(".")


def engine_cache_name(dirname: str) -> str:
    """The per-bundle engine cache (onnxruntime's TensorRT provider) of bundle folder `dirname`."""
    return f".{dirname}{ENGINES_SUFFIX}"


def model_cache_name(model: str) -> str:
    """The TensorRT plan cache shared by every version of `model`, one sub-folder per graph."""
    return f".{model}{ENGINES_SUFFIX}"


def engine_cache_owner(name: str) -> str | None:
    """What an engine cache folder belongs to (a bundle folder or a model name), else None."""
    if is_hidden(name) and name.endswith(ENGINES_SUFFIX) and len(name) > 1 + len(ENGINES_SUFFIX):
        return name[1 : -len(ENGINES_SUFFIX)]
    return None


def engine_cache_dir(bundle_root: str | os.PathLike[str], model_name: str | None = None) -> Path:
    """Where a box caches engines it built for a bundle: beside it in the store, never inside it.

    With `model_name`, the model's shared plan cache; without, the bundle folder's own.
    """
    root = Path(bundle_root)
    return root.parent / (model_cache_name(model_name) if model_name else engine_cache_name(root.name))


def is_store(path: Path) -> bool:
    """A store is a folder with a ``current`` entry (symlink to the live bundle)."""
    return path.is_dir() and os.path.lexists(path / CURRENT)


def store_target(store: Path) -> Path:
    """The bundle ``current`` points at, resolved (raises OSError when dangling)."""
    return (store / CURRENT).resolve(strict=True)


def point_current(store: Path, target: str) -> None:
    """Make ``current`` point at ``target`` (a bundle folder name, or a path) in one rename.

    A reader that resolves ``current`` at any moment gets the old bundle or the new one, never
    a missing link; the directory is flushed so the switch survives a power cut.
    """
    tmp = store / f"{CURRENT_TMP_PREFIX}{secrets.token_hex(6)}"
    os.symlink(target, tmp)
    try:
        os.replace(tmp, store / CURRENT)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fd = os.open(store, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def bundles_in(folder: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every bundle (folder or .tar) in ``folder`` with its unverified manifest, sorted by name.

    Hidden entries and symlinks (``current``) are skipped: each bundle is seen once, under its name.
    """
    if not folder.is_dir():
        return
    for path in sorted(folder.iterdir()):
        if is_hidden(path.name) or path.is_symlink():
            continue
        manifest = read_manifest(path)
        if manifest is not None:
            yield path, manifest


def versions_of(folder: Path, name: str) -> list[int]:
    """Versions of model `name` among the bundles in `folder`."""
    found = []
    for _path, manifest in bundles_in(folder):
        model = manifest.get("model") or {}
        if model.get("name") == name and isinstance(model.get("version"), int):
            found.append(int(model["version"]))
    return found


def read_identity(bundle: Path) -> tuple[str, int]:
    """(model name, version) from a bundle folder's manifest, checked to be usable as its store name."""
    manifest = Path(bundle) / MANIFEST_NAME
    if not manifest.is_file():
        raise BundleError("manifest", f"no {MANIFEST_NAME}; not a bundle", bundle)
    doc = read_manifest(bundle)
    if doc is None:
        raise BundleError("manifest", f"{MANIFEST_NAME} is not a valid JSON object", bundle)
    check_schema(doc, bundle)
    model = doc.get("model") or {}
    name, version = model.get("name"), model.get("version")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise BundleError(
            "keys", f"model.name {name!r} is not a usable name (letters, digits, _ . -)", bundle
        )
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise BundleError("keys", f"model.version {version!r} is not a non-negative integer", bundle)
    return name, version
