"""The store layout: folder names, engine caches, `current`, and scans that skip what is not a bundle."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from bundle_kit import write_tiny_bundle

from linewatch.contract import store
from linewatch.contract.errors import BundleError


def test_bundle_folder_names_sort_by_version_and_parse_back() -> None:
    assert store.bundle_dirname("brick", 7) == "brick-v000007"
    assert store.parse_dirname("brick-v000007") == store.Published(7, "brick", "brick-v000007")
    assert store.parse_dirname("brick-v2.engines") is None and store.parse_dirname(".brick-v000001") is None
    assert sorted([store.parse_dirname("a-v10"), store.parse_dirname("a-v9")])[0].version == 9


def test_engine_caches_sit_beside_the_bundles_hidden(tmp_path: Path) -> None:
    root = tmp_path / "store" / "brick-v000007"
    assert store.engine_cache_dir(root) == tmp_path / "store" / ".brick-v000007.engines"
    assert store.engine_cache_dir(root, "brick") == tmp_path / "store" / ".brick.engines"
    assert store.engine_cache_owner(store.model_cache_name("brick")) == "brick"
    assert store.engine_cache_owner(store.engine_cache_name("brick-v000007")) == "brick-v000007"
    assert store.engine_cache_owner("brick-v000007") is None and store.engine_cache_owner(".engines") is None


def test_point_current_switches_atomically_and_leaves_no_temporary(tmp_path: Path) -> None:
    s = tmp_path / "store"
    write_tiny_bundle(s / "tiny-v000001")
    write_tiny_bundle(s / "tiny-v000002", version=2)
    assert not store.is_store(s)
    store.point_current(s, "tiny-v000001")
    assert store.is_store(s) and store.store_target(s) == (s / "tiny-v000001").resolve()
    store.point_current(s, "tiny-v000002")
    assert os.readlink(s / store.CURRENT) == "tiny-v000002"  # relative: the store may be mounted elsewhere
    assert sorted(os.listdir(s)) == ["current", "tiny-v000001", "tiny-v000002"]


def test_scans_skip_hidden_entries_links_and_non_bundles(tmp_path: Path) -> None:
    s = tmp_path / "store"
    write_tiny_bundle(s / "tiny-v000001")
    write_tiny_bundle(s / "tiny-v000003", version=3)
    write_tiny_bundle(s / "other-v000009", name="other", version=9)
    write_tiny_bundle(s / ".incoming-x", version=99)
    (s / "notes").mkdir()
    store.point_current(s, "tiny-v000003")
    assert [p.name for p, _ in store.bundles_in(s)] == ["other-v000009", "tiny-v000001", "tiny-v000003"]
    assert sorted(store.versions_of(s, "tiny")) == [1, 3]
    assert store.versions_of(tmp_path / "absent", "tiny") == []


def test_read_identity_refuses_what_cannot_be_published(tmp_path: Path) -> None:
    write_tiny_bundle(tmp_path / "ok", name="brick", version=4)
    assert store.read_identity(tmp_path / "ok") == ("brick", 4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="not a bundle"):
        store.read_identity(tmp_path / "empty")
    write_tiny_bundle(tmp_path / "evil", name="../evil")
    with pytest.raises(BundleError, match=r"model\.name"):
        store.read_identity(tmp_path / "evil")
