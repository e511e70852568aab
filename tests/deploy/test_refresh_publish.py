"""Publishing into the bundle store: atomic for readers, monotonic in version, local and over ssh."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from refresh_testkit import check_bundle, fake_ssh_bin, write_bundle

from linewatch.deploy.refresh import fsutil
from linewatch.deploy.refresh.publish import BundleError, LocalStore, RemoteStore, StoreError, bundle_dirname

READER = Path(__file__).with_name("refresh_race_reader.py")


def test_publish_installs_under_versioned_name_with_relative_current(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.root.mkdir()
    result = store.publish(write_bundle(tmp_path / "b7", 7))
    assert result.dirname == bundle_dirname("linewatch", 7) == "linewatch-v000007"
    assert result.previous is None
    assert (
        os.readlink(store.root / "current") == "linewatch-v000007"
    )  # relative: store may be mounted elsewhere
    assert check_bundle(store.root / "current") is None
    assert sorted(os.listdir(store.root)) == ["current", "linewatch-v000007"]  # no temporaries left
    second = store.publish(write_bundle(tmp_path / "b8", 8))
    assert second.previous == "linewatch-v000007"
    assert store.current() == "linewatch-v000008"
    assert [p.version for p in store.published()] == [7, 8]


def test_publish_refuses_non_increasing_versions_and_non_bundles(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.root.mkdir()
    store.publish(write_bundle(tmp_path / "b5", 5))
    for version in (5, 4):
        with pytest.raises(StoreError, match="versions only increase"):
            store.publish(write_bundle(tmp_path / f"again{version}", version))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match=r"no manifest\.json"):
        store.publish(tmp_path / "empty")
    bad = write_bundle(tmp_path / "bad", 9, extra={"schema_version": 2})
    with pytest.raises(BundleError, match="schema_version"):
        store.publish(bad)
    weird = write_bundle(tmp_path / "weird", 9, name="../evil")
    with pytest.raises(BundleError, match=r"model\.name"):
        store.publish(weird)
    assert store.current() == "linewatch-v000005"


def test_a_publish_that_crashes_midway_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path / "store")
    store.root.mkdir()
    store.publish(write_bundle(tmp_path / "b1", 1))
    calls = {"n": 0}
    real_copy = fsutil.shutil.copy2

    def flaky_copy(src: str, dst: str) -> object:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real_copy(src, dst)

    monkeypatch.setattr(fsutil.shutil, "copy2", flaky_copy)
    with pytest.raises(OSError, match="No space"):
        store.publish(write_bundle(tmp_path / "b2", 2))
    assert store.current() == "linewatch-v000001"
    assert sorted(os.listdir(store.root)) == ["current", "linewatch-v000001"]


def test_readers_never_see_a_partial_bundle(tmp_path: Path) -> None:
    """A separate process resolves `current` in a tight loop while 40 bundles are published."""
    store = LocalStore(tmp_path / "store")
    store.root.mkdir()
    sources = [
        write_bundle(tmp_path / "src" / str(v), v, sizes=(300_000, 120_000, *([4_000] * 8)))
        for v in range(1, 41)
    ]
    stop = tmp_path / "stop"
    reader = subprocess.Popen(
        [sys.executable, str(READER), str(store.root), str(stop)], stdout=subprocess.PIPE, text=True
    )
    try:
        time.sleep(0.3)
        for src in sources:
            store.publish(src)
            if src.name in ("10", "20", "30"):
                store.prune(keep=5)  # deletion of old versions happens during the race too
        time.sleep(0.2)
    finally:
        stop.touch()
        out, _ = reader.communicate(timeout=60)
    summary = json.loads(out)
    assert summary["n_partial"] == 0, summary["partial"]
    assert summary["missing_link"] == 0
    assert summary["observations"] > 100
    assert summary["versions"] >= 5  # the reader really saw the target change under it
    assert store.current() == "linewatch-v000040"


def test_prune_keeps_current_and_its_rollback_target(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.root.mkdir()
    for v in range(1, 8):
        store.publish(write_bundle(tmp_path / f"b{v}", v, sizes=(10,)))
    store.point_current("linewatch-v000002")  # rolled far back
    (store.root / ".linewatch-v000003.engines").mkdir()  # what the edge caches beside a bundle
    (store.root / ".linewatch-v000002.engines").mkdir()
    (store.root / ".linewatch-v000099.engines").mkdir()  # orphan: its bundle was refused
    for i in range(5):
        (store.root / f".rejected-linewatch-v00000{i}-2026").mkdir()
    removed = store.prune(keep=3)
    left = [p.version for p in store.published()]
    assert left == [1, 2, 5, 6, 7]  # the newest 3, current (2) and its rollback target (1)
    assert removed[:2] == ["linewatch-v000003", "linewatch-v000004"]
    assert store.current() == "linewatch-v000002"
    hidden = sorted(n for n in os.listdir(store.root) if n.startswith("."))
    assert ".linewatch-v000003.engines" not in hidden and ".linewatch-v000002.engines" in hidden
    assert ".linewatch-v000099.engines" not in hidden
    assert len([n for n in hidden if n.startswith(".rejected-")]) == 3


def test_prune_keeps_the_base_of_bank_only_bundles(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.root.mkdir()
    store.publish(write_bundle(tmp_path / "b1", 1, sizes=(10,)))
    store.publish(write_bundle(tmp_path / "b2", 2, sizes=(10,)))  # full: the base of 3..6
    for v in range(3, 7):
        store.publish(
            write_bundle(tmp_path / f"b{v}", v, sizes=(10,), extra={"bank_only": {"base_version": 2}})
        )
    store.prune(keep=2)
    assert [p.version for p in store.published()] == [2, 5, 6]


def test_next_version_counts_refused_bundles(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.root.mkdir()
    assert store.next_version() is None
    store.publish(write_bundle(tmp_path / "b3", 3, sizes=(10,)))
    store.publish(write_bundle(tmp_path / "b4", 4, sizes=(10,)))
    assert store.next_version() == 5
    store.point_current("linewatch-v000003")
    store.set_aside("linewatch-v000004")
    assert store.next_version() == 5


def test_a_bundle_exported_into_the_store_is_renamed_not_copied(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.root.mkdir()
    store.publish(write_bundle(tmp_path / "b1", 1, sizes=(10,)))
    staged = write_bundle(store.export_dir("run42"), 2, sizes=(10,))
    inode = os.stat(staged / "model.onnx").st_ino
    assert [p.version for p in store.published()] == [1]  # hidden until published
    store.publish(staged)
    assert os.stat(store.root / "current" / "model.onnx").st_ino == inode
    assert not staged.exists()


@pytest.fixture
def remote_store(tmp_path: Path) -> RemoteStore:
    bindir = fake_ssh_bin(tmp_path / "bin")
    return RemoteStore(
        "edge@box", str(tmp_path / "remote store"), ssh=[str(bindir / "ssh")], rsync=[str(bindir / "rsync")]
    )


def test_remote_publish_runs_the_same_renames_over_ssh(tmp_path: Path, remote_store: RemoteStore) -> None:
    root = Path(remote_store.path)
    first = remote_store.publish(write_bundle(tmp_path / "b3", 3))
    assert first.dirname == "linewatch-v000003" and first.previous is None
    second = remote_store.publish(write_bundle(tmp_path / "b4", 4))
    assert second.previous == "linewatch-v000003"
    assert os.readlink(root / "current") == "linewatch-v000004"
    assert check_bundle(root / "current") is None
    assert sorted(os.listdir(root)) == ["current", "linewatch-v000003", "linewatch-v000004"]
    assert remote_store.current() == "linewatch-v000004"
    assert [p.version for p in remote_store.published()] == [3, 4]
    with pytest.raises(StoreError, match="versions only increase"):
        remote_store.publish(write_bundle(tmp_path / "b2", 2))
    remote_store.point_current("linewatch-v000003")
    assert os.readlink(root / "current") == "linewatch-v000003"
    hidden = remote_store.set_aside("linewatch-v000004")
    assert hidden.startswith(".rejected-linewatch-v000004-") and (root / hidden).is_dir()
    assert [p.version for p in remote_store.published()] == [3]


def test_remote_failure_is_reported_with_stderr(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "ssh").write_text(
        "#!/bin/sh\necho 'ssh: connect to host box port 22: No route to host' >&2\nexit 255\n"
    )
    (bindir / "ssh").chmod(0o755)
    store = RemoteStore("box", "/srv/bundles", ssh=[str(bindir / "ssh")])
    with pytest.raises(StoreError, match="No route to host"):
        store.publish(write_bundle(tmp_path / "b1", 1))


def _plan_cache(root: Path, graphs: list[str]) -> Path:
    """The edge's shared plan cache of model `linewatch`: one folder per graph, plus a timing cache."""
    cache = root / ".linewatch.engines"
    for g in graphs:
        (cache / g).mkdir(parents=True)
        (cache / g / "engine.fp16.orin.trt10.3.0.plan").write_bytes(b"plan")
    (cache / "timing.orin.trt10.3.0.cache").write_bytes(b"timing")
    return cache


def _graph(store_root: Path, dirname: str) -> str:
    return json.loads((store_root / dirname / "manifest.json").read_text())["files"]["model.onnx"][:16]


@pytest.mark.parametrize("kind", ["local", "remote"])
def test_prune_keeps_the_model_plan_cache_and_only_the_graphs_still_in_use(
    tmp_path: Path, remote_store: RemoteStore, kind: str
) -> None:
    """The shared cache is what a retrained model refits from: pruning must not delete it whole."""
    store = remote_store if kind == "remote" else LocalStore(tmp_path / "store")
    root = Path(store.path) if kind == "remote" else store.root
    root.mkdir(parents=True, exist_ok=True)
    for v in range(1, 5):
        store.publish(write_bundle(tmp_path / f"b{v}", v, sizes=(10,)))
    store.publish(write_bundle(tmp_path / "b5", 5, sizes=(10,), extra={"bank_only": {"base_version": 1}}))
    graphs = {d: _graph(root, d) for d in (f"linewatch-v00000{v}" for v in range(1, 5))}
    cache = _plan_cache(root, [*graphs.values(), "f" * 16])
    removed = store.prune(keep=2)
    assert [p.version for p in store.published()] == [1, 4, 5]  # 1 is the base of bank-only 5
    left = sorted(p.name for p in cache.iterdir())
    kept = sorted([graphs["linewatch-v000001"], graphs["linewatch-v000004"]])
    assert left == sorted([*kept, "timing.orin.trt10.3.0.cache"])
    assert f".linewatch.engines/{graphs['linewatch-v000002']}" in removed
    assert (cache / kept[0] / "engine.fp16.orin.trt10.3.0.plan").read_bytes() == b"plan"


def test_prune_leaves_a_plan_cache_whole_when_a_graph_cannot_be_read(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.root.mkdir()
    for v in (1, 2):
        store.publish(write_bundle(tmp_path / f"b{v}", v, sizes=(10,)))
    (store.root / "linewatch-v000002" / "manifest.json").write_text("{not json")
    cache = _plan_cache(store.root, ["a" * 16, "b" * 16])
    store.prune(keep=2)
    assert sorted(p.name for p in cache.iterdir() if p.is_dir()) == ["a" * 16, "b" * 16]
