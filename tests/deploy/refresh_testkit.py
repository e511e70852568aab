"""Helpers shared by the deploy tests: real bundles on disk, a real broker, a stand-in edge.

Imported by the test modules (pytest puts this folder on sys.path; there is no
tests/__init__.py on purpose).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_bundle(
    path: Path,
    version: int,
    *,
    name: str = "linewatch",
    tasks: Iterable[str] = ("brick",),
    sizes: Iterable[int] = (200_000, 50_000, 3_000),
    extra: dict[str, Any] | None = None,
) -> Path:
    """A fake but real bundle directory: files with random bytes and their sha256 in manifest.json."""
    path.mkdir(parents=True)
    files = {}
    for i, size in enumerate(sizes):
        rel = f"data/bank{i}.bin" if i else "model.onnx"
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(os.urandom(size))
        files[rel] = sha256(path / rel)
    manifest = {
        "schema_version": 1,
        "model": {"name": name, "version": version},
        "tasks": list(tasks),
        "method": "patchcore",
        "metrics": {"image_auroc": 0.99},
        "files": files,
        **(extra or {}),
    }
    (path / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return path


def check_bundle(path: Path) -> str | None:
    """None when every file the manifest lists is there with its hash; else what is wrong."""
    try:
        manifest = json.loads((Path(path) / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return f"manifest: {exc}"
    for rel, digest in manifest.get("files", {}).items():
        try:
            if sha256(Path(path) / rel) != digest:
                return f"{rel}: hash mismatch"
        except OSError as exc:
            return f"{rel}: {exc}"
    return None


def mqtt_client(port: int, *, user: str | None = None, password: str | None = None) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{os.urandom(4).hex()}")
    if user:
        client.username_pw_set(user, password)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def publish_status(
    port: int, root: str, version: int | None, *, state: str = "online", name: str = "linewatch"
) -> None:
    """Publish a retained edge status message, as the edge does, and wait until it is sent."""
    client = mqtt_client(port)
    payload: dict[str, Any] = {"state": state, "backend": "onnxruntime-cpu"}
    if version is not None:
        payload["model"] = {"name": name, "version": version}
    info = client.publish(f"{root}/status", json.dumps(payload), qos=1, retain=True)
    info.wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


class FakeEdge:
    """Stands in for `linewatch-edge run` on the bundle-store side of the contract.

    Watches `<store>/current`; when its target changes, reads the bundle's manifest
    and publishes a retained `status` with that version, unless the version is in
    `refuse` (then it keeps reporting the version it had, as the real edge does with
    a bundle that fails its checks).
    """

    def __init__(self, store: Path, port: int, roots: list[str], refuse: Iterable[int] = ()) -> None:
        self.store, self.port, self.roots = Path(store), port, roots
        self.refuse = set(refuse)
        self.serving: int | None = None
        self.loaded: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._client = mqtt_client(port)

    def __enter__(self) -> FakeEdge:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._client.disconnect()
        self._client.loop_stop()

    def _loop(self) -> None:
        seen: str | None = None
        while not self._stop.is_set():
            link = self.store / "current"
            target = os.readlink(link) if link.is_symlink() else None
            if target and target != seen:
                seen = target
                try:
                    version = json.loads((self.store / target / "manifest.json").read_text())["model"][
                        "version"
                    ]
                except (OSError, ValueError, KeyError):
                    version = None
                if (
                    version is not None
                    and version not in self.refuse
                    and check_bundle(self.store / target) is None
                ):
                    self.serving = version
                    self.loaded.append(version)
                for root in self.roots:
                    payload = {"state": "online", "backend": "fake"}
                    if self.serving is not None:
                        payload["model"] = {"name": "linewatch", "version": self.serving}
                    self._client.publish(f"{root}/status", json.dumps(payload), qos=1, retain=True)
            time.sleep(0.05)


def _toml_value(value: Any) -> str:
    return json.dumps(str(value) if isinstance(value, Path) else value)


def write_config(
    root: Path, *, tasks: Iterable[str] = ("brick",), method: str = "patchcore", **sections: Any
) -> Path:
    """A complete refresh setup under `root` (run dir, dataset, drop, keys, store) and its TOML.

    Keyword arguments override top-level keys (`python=...`) or whole sections
    (`mqtt={...}`, `gate={...}`); a section given as a dict is merged into the default.
    """
    run = root / "run"
    run.mkdir(parents=True)
    tasks = list(tasks)
    (run / "metrics.json").write_text(
        json.dumps(
            {
                "method": method,
                "tasks": tasks,
                "matrix": {"image_auroc": [[0.99] * len(tasks)]},
                "final": {"image_auroc": 0.99},
            }
        )
    )
    (run / "state.json").write_text(json.dumps({"updates": 0}))
    for task in tasks:
        for sub in ("train/good", "test/good", "test/crack"):
            (root / "dataset" / task / sub).mkdir(parents=True)
            (root / "dataset" / task / sub / "000.png").write_bytes(b"\x89PNG fake " + task.encode())
    (root / "drop").mkdir()
    (root / "keys").mkdir()
    (root / "keys" / "linewatch.key").write_text("secret")
    (root / "keys" / "linewatch.pub").write_text("public")
    (root / "bundles").mkdir()
    top: dict[str, Any] = {
        "run_dir": run,
        "data": f"mvtec:{root / 'dataset'}",
        "drop_dir": root / "drop",
        "sign_key": root / "keys" / "linewatch.key",
        "log_path": root / "log" / "refresh.jsonl",
        "lock_path": root / "refresh.lock",
    }
    tables: dict[str, dict[str, Any]] = {
        "store": {"dir": root / "bundles", "keep": 5},
        "steps": {"drop_settle_s": 0},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            tables[key] = {**tables.get(key, {}), **value}
        else:
            top[key] = value
    lines = [f"{k} = {_toml_value(v)}" for k, v in top.items()]
    for table, values in tables.items():
        lines.append(f"\n[{table}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    path = root / "refresh.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


FAKE_SSH = """#!/bin/sh
# Stand-in for `ssh DEST COMMAND`: runs COMMAND with the local shell, as sshd would.
shift
exec sh -c "$*"
"""

FAKE_RSYNC = """#!/bin/sh
# Stand-in for `rsync -a --delete -e SSH SRC/ HOST:DST/`: copies locally.
for last; do :; done
src=""
for arg; do [ "$arg" = "$last" ] && break; src="$arg"; done
dst="${last#*:}"
mkdir -p "$dst" && cp -a "$src". "$dst"
"""


def fake_ssh_bin(bindir: Path) -> Path:
    """`ssh` and `rsync` stand-ins that act on this machine, for RemoteStore tests."""
    bindir.mkdir(parents=True)
    for name, text in (("ssh", FAKE_SSH), ("rsync", FAKE_RSYNC)):
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)
    return bindir
