"""A bundle as one ``.tar``: written reproducibly by the exporter, unpacked safely by every reader.

A tar travels better than a folder (one file to copy, sign off, archive), but unpacking one is
where path traversal and links sneak in. Every member is checked before anything is extracted;
links, devices and paths that leave the bundle are refused with ``BundleError("tar")``.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

from linewatch.contract.errors import BundleError
from linewatch.contract.manifest import MANIFEST_NAME, safe_relpath, sha256_file


def write_tar(bundle_dir: Path, tar_path: Path, mtime: float | None = None) -> Path:
    """A reproducible .tar of a bundle directory (files at the tar root), written atomically."""
    fd, tmp = tempfile.mkstemp(prefix=f".{tar_path.name}.", dir=tar_path.parent)
    os.close(fd)
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
            for p in sorted(bundle_dir.rglob("*")):
                if not p.is_file():
                    continue
                info = tarfile.TarInfo(p.relative_to(bundle_dir).as_posix())
                info.size = p.stat().st_size
                info.mode = 0o644
                info.mtime = int(mtime if mtime is not None else time.time())
                with open(p, "rb") as f:
                    tf.addfile(info, f)
        os.replace(tmp, tar_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tar_path


def _check_member(member: tarfile.TarInfo, tar_path: Path) -> None:
    name = member.name
    if member.issym() or member.islnk():
        raise BundleError("tar", f"member {name!r} is a link; refused", tar_path)
    if not (member.isfile() or member.isdir()):
        raise BundleError("tar", f"member {name!r} is not a regular file or directory; refused", tar_path)
    stripped = name[2:] if name.startswith("./") else name
    if stripped in ("", "."):
        return
    if not safe_relpath(stripped.rstrip("/")):
        raise BundleError("tar", f"member {name!r} escapes the bundle (path traversal); refused", tar_path)


def extract_tar(tar_path: Path) -> Path:
    """Extract a bundle .tar into a cache directory beside it; return the bundle root.

    The cache is keyed by the tar's sha256, filled through a temp dir and a rename, so
    a half-extracted bundle is never seen and a re-opened tar reuses its extraction
    (its hashes are verified again all the same).
    """
    digest = sha256_file(tar_path)[:16]
    cache_parent = tar_path.parent / f".{tar_path.name}.extracted"
    dest = cache_parent / digest
    if not dest.is_dir():
        cache_parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{digest}.tmp-", dir=cache_parent))
        try:
            with tarfile.open(tar_path, "r:*") as tf:
                members = tf.getmembers()
                for m in members:
                    _check_member(m, tar_path)
                try:
                    tf.extractall(tmp, members=members, filter="data")
                except TypeError:  # Python < 3.10.12 has no filters; members were checked above
                    tf.extractall(tmp, members=members)
            try:
                os.replace(tmp, dest)
            except OSError:
                if not dest.is_dir():  # a concurrent opener may have won the race
                    raise
        except tarfile.TarError as e:
            raise BundleError("tar", f"cannot extract: {e}", tar_path) from e
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    if (dest / MANIFEST_NAME).is_file():
        return dest
    subdirs = [d for d in dest.iterdir() if d.is_dir()]
    if len(subdirs) == 1 and (subdirs[0] / MANIFEST_NAME).is_file():
        return subdirs[0]
    raise BundleError("manifest", f"{MANIFEST_NAME} not found at the top of the tar", tar_path)
