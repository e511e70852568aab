"""Onboarding on the box: a new task learnt from support images, replaced, removed; bad input refused."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from edge_testkit import make_bundle
from sklearn.metrics import roc_auc_score

from linewatch.contract.store import point_current, store_target
from linewatch.edge.model.bundle import open_bundle
from linewatch.edge.onboard.bank import golden_outputs, session
from linewatch.edge.onboard.builder import Policy, onboard, remove
from linewatch.edge.onboard.service import folder_images
from linewatch.edge.onboard.support import OnboardError, read_files

os.environ.setdefault("OMP_NUM_THREADS", "1")


def _policy(kit, sign_key=None, box_pubs=None) -> Policy:
    return Policy(
        release_key=kit.release_pub,
        box_keys=[kit.box_pub] if box_pubs is None else box_pubs,
        require_signature=True,
        sign_key=kit.box_key if sign_key is None else sign_key,
    )


def _test_images(kit, task: str) -> tuple[np.ndarray, np.ndarray]:
    paths = sorted((kit.data / task / "test").rglob("*.png"))
    frames = np.stack([cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths])
    labels = np.array([p.parent.name != "good" for p in paths], int)
    return frames, labels


def _support(kit, task: str, k: int) -> list[np.ndarray]:
    return read_files(sorted((kit.data / task / "train" / "good").glob("*.png"))[:k])


def _scores(bundle, frames):
    return golden_outputs(session(bundle.onnx_path), bundle.data_inputs, frames, 8)


def test_onboard_replace_remove(fewshot) -> None:
    policy = _policy(fewshot)
    base = open_bundle(store_target(fewshot.store), key=fewshot.release_pub)
    done = onboard(fewshot.store, "brick", _support(fewshot, "brick", 4), policy)
    assert (done.version, done.slot, done.tasks) == (2, 1, ["camera", "brick", ""])
    new = policy.open(store_target(fewshot.store))
    assert new.version == 2 and new.is_bank_only and new.base.version == 1
    assert new.signer == "box" and new.base.signer == "release"
    assert new.manifest["provenance"]["onboard"]["images"] == 4
    # Earlier task: the same scores on the base's golden frames (its slot is untouched).
    _, old_scores, old_tasks = _scores(base, base.golden.inputs)
    _, new_scores, new_tasks = _scores(new, base.golden.inputs)
    np.testing.assert_allclose(new_scores, old_scores, atol=1e-5)
    assert list(new_tasks) == list(old_tasks) == [0] * len(old_tasks)
    # The new task: inferred as its slot, defects scored above good parts.
    frames, labels = _test_images(fewshot, "brick")
    _, scores, tasks = _scores(new, frames)
    assert (tasks == 1).all()
    assert roc_auc_score(labels, scores) >= 0.75
    # Same name again: its slot is rebuilt from the new images, nothing else moves.
    again = onboard(fewshot.store, "brick", _support(fewshot, "brick", 2), policy)
    assert (again.version, again.slot, again.tasks, again.details["replaced"]) == (3, 1, done.tasks, True)
    v3 = policy.open(store_target(fewshot.store))
    assert not np.array_equal(v3.data_inputs["bank"][1], new.data_inputs["bank"][1])
    np.testing.assert_array_equal(v3.data_inputs["bank"][0], base.data_inputs["bank"][0])
    gone = remove(fewshot.store, "brick", policy)
    assert gone.tasks == ["camera", "", ""] and gone.version == 4
    v4 = policy.open(store_target(fewshot.store))
    np.testing.assert_array_equal(v4.data_inputs["bank"], base.data_inputs["bank"])
    with pytest.raises(OnboardError, match="no task 'brick'"):
        remove(fewshot.store, "brick", policy)


def _unchanged(kit, before: Path) -> None:
    assert store_target(kit.store) == before
    assert not list(kit.store.glob("fs-v*2")) and not list(kit.store.glob(".fs-*"))  # no new version


@pytest.mark.parametrize(
    "case, message",
    [
        ("one image", "2 to 8 good images"),
        ("nine images", "2 to 8 good images"),
        ("unreadable", "unreadable images: broken.png"),
        ("wrong size", "another shape"),
        ("too small", "smaller than half the model input"),
        ("key not allowed", "is not allowed by reload.box_keys"),
        ("public key", "is a public key"),
        ("no key", "set \\[onboard\\] key"),
        ("not a store", "not a bundle store"),
        ("not few-shot", "not a few-shot bundle"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(fewshot, tmp_path: Path, case: str, message: str) -> None:
    before = store_target(fewshot.store)
    good = sorted((fewshot.data / "brick" / "train" / "good").glob("*.png"))
    folder = tmp_path / "imgs"
    folder.mkdir()
    policy, store = _policy(fewshot), fewshot.store
    picks = {"one image": good[:1], "nine images": (good * 2)[:9]}.get(case, good[:3])
    for p in picks:
        (folder / f"{len(list(folder.iterdir())):02d}.png").write_bytes(p.read_bytes())
    if case == "unreadable":
        (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    elif case == "wrong size":
        cv2.imwrite(str(folder / "99.png"), np.zeros((64, 160, 3), np.uint8))
    elif case == "too small":
        cv2.imwrite(str(folder / "99.png"), np.zeros((16, 16, 3), np.uint8))
    elif case == "key not allowed":
        policy = _policy(fewshot, sign_key=fewshot.other_key)
    elif case == "public key":
        policy = _policy(fewshot, sign_key=fewshot.box_pub)
    elif case == "no key":
        policy = Policy(release_key=fewshot.release_pub, box_keys=[fewshot.box_pub])
    elif case == "not a store":
        store = tmp_path / "nowhere"
    elif case == "not few-shot":  # a release-signed bundle of another method is current
        make_bundle(fewshot.store / "toy-v000001", sign_key=fewshot.release_key)
        point_current(fewshot.store, "toy-v000001")
        before = store_target(fewshot.store)
    with pytest.raises(OnboardError, match=message):
        onboard(store, "brick", folder_images(folder), policy)
    _unchanged(fewshot, before)


def test_full_slots_are_refused(fewshot) -> None:
    policy = _policy(fewshot)
    images = _support(fewshot, "brick", 2)
    onboard(fewshot.store, "a", images, policy)
    onboard(fewshot.store, "b", images, policy)
    with pytest.raises(OnboardError, match="all 3 task slots are taken"):
        onboard(fewshot.store, "c", images, policy)
