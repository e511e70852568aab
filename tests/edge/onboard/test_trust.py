"""The trust model of box-signed bundles: a box key signs bank-only bundles on a release-signed base only.

Each case forges what a compromised or misconfigured box could produce and checks that the same
`open_bundle` policy the model manager uses refuses it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from linewatch.contract.errors import BundleError
from linewatch.contract.manifest import MANIFEST_NAME, SIGNATURE_NAME, read_manifest, save_npy, write_manifest
from linewatch.contract.store import store_target
from linewatch.edge.model import signing
from linewatch.edge.model.bundle import open_bundle
from linewatch.edge.onboard.builder import Policy, onboard
from linewatch.edge.onboard.service import folder_images


@pytest.fixture
def onboarded(fewshot) -> tuple[object, Path, Policy]:
    policy = Policy(
        release_key=fewshot.release_pub,
        box_keys=[fewshot.box_pub],
        require_signature=True,
        sign_key=fewshot.box_key,
    )
    onboard(fewshot.store, "brick", folder_images(fewshot.data / "brick" / "train" / "good")[:2], policy)
    return fewshot, store_target(fewshot.store), policy


def _resign(bundle: Path, key: Path, **changes: object) -> None:
    manifest = {**read_manifest(bundle), **changes}
    manifest.pop("files")
    write_manifest(bundle, manifest, signing.signer(key))


def test_the_onboarded_bundle_verifies_only_with_the_box_key_allowed(onboarded) -> None:
    kit, path, policy = onboarded
    assert policy.open(path).signer == "box"
    with pytest.raises(BundleError, match="neither the release key nor an allowed box key"):
        open_bundle(path, key=kit.release_pub, box_keys=[kit.other_key])
    with pytest.raises(BundleError, match="signed with key id"):
        open_bundle(path, key=kit.release_pub)  # no box key allowed: box signatures are refused
    with pytest.raises(BundleError, match="only beside a release key"):
        open_bundle(path, box_keys=[kit.box_pub])


def test_tampered_bank_is_refused(onboarded) -> None:
    _kit, path, policy = onboarded
    bank = np.load(path / "bank.npy")
    bank[1, 0, 0] += 1.0
    save_npy(path / "bank.npy", bank)
    with pytest.raises(BundleError, match="sha256"):
        policy.open(path)


def test_tampered_manifest_is_refused(onboarded) -> None:
    _kit, path, policy = onboarded
    doc = json.loads((path / MANIFEST_NAME).read_text())
    doc["tasks"][1] = "renamed"
    (path / MANIFEST_NAME).write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="does not verify"):
        policy.open(path)


def test_a_box_key_cannot_sign_a_full_bundle(onboarded, tmp_path: Path) -> None:
    kit, _path, policy = onboarded
    full = tmp_path / "fs-v000009"
    shutil.copytree(kit.store / "fs-v000001", full)
    _resign(full, kit.box_key)
    with pytest.raises(BundleError, match="bank-only bundles only"):
        policy.open(full)


def test_a_box_signed_bundle_needs_a_release_signed_base(onboarded) -> None:
    kit, path, policy = onboarded
    base = kit.store / "fs-v000001"
    (base / SIGNATURE_NAME).unlink()
    _resign(base, kit.box_key)  # the base's graphs re-signed by the box: refused as base
    with pytest.raises(BundleError, match="signed with key id"):
        policy.open(path)  # the base is opened under the release key alone
    with pytest.raises(BundleError, match="base signed by the release key"):
        policy.open(path, base=open_bundle(base, key=kit.box_pub))
