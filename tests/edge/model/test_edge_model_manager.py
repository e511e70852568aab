"""Model manager: store watching, hot swap between batches, refusal of bad bundles, rollback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from edge_testkit import edge_config, make_bundle, publish_to_store, wait_for

from linewatch.edge.model.bundle import BundleError
from linewatch.edge.model.manager import ModelManager, is_store


def manager(tmp_path: Path, source: Path, **reload: object) -> tuple[ModelManager, list, list]:
    changes: list = []
    failures: list = []
    cfg = edge_config(tmp_path, "mqtt://127.0.0.1:1", reload={"watch_interval_s": 0.05, **reload})
    return ModelManager(source, cfg, changes.append, failures.append), changes, failures


def test_store_watch_swaps_and_retires(tmp_path: Path) -> None:
    store = tmp_path / "store"
    make_bundle(store / "toy-v1", version=1)
    make_bundle(store / "toy-v2", version=2)
    publish_to_store(store, store / "toy-v1")
    assert is_store(store) and not is_store(store / "toy-v1")
    mm, changes, failures = manager(tmp_path, store)
    first = mm.load_initial()
    assert mm.current().version == 1
    mm.start_watching()
    publish_to_store(store, store / "toy-v2")
    wait_for(lambda: mm.loaded is not None and mm.loaded.version == 2, 60)
    assert [m.version for m in changes] == [2] and failures == []
    assert mm.current().version == 2  # the inference thread's call closes the retired model
    assert first.backend.session is None
    publish_to_store(store, store / "toy-v1")  # rollback to a lower version is allowed
    wait_for(lambda: mm.loaded.version == 1, 60)
    mm.stop()


def test_bad_bundle_refused_old_keeps_serving(tmp_path: Path) -> None:
    store = tmp_path / "store"
    make_bundle(store / "toy-v1", version=1)
    bad = make_bundle(store / "toy-v2", version=2)
    (bad / "model.onnx").write_bytes((bad / "model.onnx").read_bytes() + b"\0")
    publish_to_store(store, store / "toy-v1")
    mm, _changes, failures = manager(tmp_path, store)
    mm.load_initial()
    mm.start_watching()
    publish_to_store(store, bad)
    wait_for(lambda: mm.reload_failures == 1, 60)
    wait_for(lambda: len(failures) == 1, 10)
    assert "sha256" in failures[0] and mm.last_error == failures[0]
    assert mm.current().version == 1
    # not retried every tick while current stays on the bad bundle
    wait_for(lambda: True, 0.1)
    import time

    time.sleep(0.5)
    assert mm.reload_failures == 1
    with pytest.raises(BundleError):
        mm.reload(bad)
    assert mm.reload_failures == 2 and mm.current().version == 1
    mm.stop()


def test_signature_required(tmp_path: Path) -> None:
    from linewatch.edge.model.signing import generate_keypair

    priv, pub = generate_keypair(tmp_path / "keys")
    signed = make_bundle(tmp_path / "b" / "toy-v1", sign_key=priv)
    unsigned = make_bundle(tmp_path / "b" / "toy-v2", version=2)
    mm, _, failures = manager(tmp_path, signed, key=str(pub), require_signature=True)
    assert mm.load_initial().bundle.signature_verified
    with pytest.raises(BundleError, match="signature"):
        mm.reload(unsigned)
    tampered = make_bundle(tmp_path / "b" / "toy-v3", version=3, sign_key=priv)
    np.save(tampered / "reference.npy", np.ones((64, 64, 3), np.float32), allow_pickle=False)
    with pytest.raises(BundleError):
        mm.reload(tampered)
    assert mm.current().version == 1 and len(failures) == 2
    mm.stop()
