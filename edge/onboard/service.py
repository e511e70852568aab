"""What `cmd/onboard` and `linewatch-edge onboard` share: config -> policy, request -> images -> new version.

Why here and not in the runtime: the CLI runs it without a runtime (the running edge then picks the
new version up by watching the store), the runtime runs it and swaps the model itself; the request's
rules (folders only under `[onboard] image_root`, base64 images, remove) are written once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from linewatch.edge.config import EdgeConfig
from linewatch.edge.onboard.builder import Onboarded, Policy, onboard, remove
from linewatch.edge.onboard.support import OnboardError, decode_jpegs, images_in, read_files


def policy_from(cfg: EdgeConfig, sign_key: Path | None = None) -> Policy:
    return Policy(
        release_key=cfg.reload.key,
        box_keys=list(cfg.reload.box_keys),
        require_signature=cfg.reload.require_signature,
        sign_key=sign_key or cfg.onboard.key,
        threads=cfg.backend.threads,
    )


def folder_images(folder: Path) -> list[Any]:
    return read_files(images_in(folder))


def run_request(store: Path, cfg: EdgeConfig, request: dict[str, Any]) -> Onboarded:
    """Execute a validated `cmd/onboard` request against `store` (does not swap the model)."""
    policy = policy_from(cfg)
    task = str(request["task"])
    if request.get("remove"):
        return remove(store, task, policy)
    if "folder" in request:
        root = cfg.onboard.image_root
        if root is None:
            raise OnboardError("folders are refused: set [onboard] image_root to the folder the box may read")
        folder = (Path(root) / request["folder"]).resolve()
        if not folder.is_relative_to(Path(root).resolve()):
            raise OnboardError(f"folder {request['folder']!r} is outside [onboard] image_root")
        images = folder_images(folder)
    else:
        images = decode_jpegs(request["images"], cfg.onboard.max_image_bytes)
    return onboard(store, task, images, policy, cfg.onboard.seed)
