"""The operator page in a real headless Chromium, against a running edge (real broker, real bundle).

Checks what the issue asks: the verdict updates live as frames flow, the heatmap image is there,
a "false alarm" click writes the full-resolution unscored frame into the refresh drop folder (and the
audit log says who, which frame, which model), a "missed" click files it for review, and a page without
credentials is refused. Screenshots go to tmp_path/artifacts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from edge_testkit import edge_config, make_bundle, render, wait_for, write_frame

from linewatch.edge.config import OperatorConfig
from linewatch.edge.observability.telemetry import MetricsServer, Telemetry
from linewatch.edge.operator.app import OperatorApp
from linewatch.edge.operator.live import LiveView

pytest.importorskip("selenium", reason="selenium (dev extra) is not installed")
from selenium.webdriver.common.by import By

TOKEN = "op-token-for-the-test"


def _verdict(browser: Any) -> tuple[str, str]:
    el = browser.find_element(By.CSS_SELECTOR, 'section[data-camera="cam0"] .verdict')
    return el.text, el.get_attribute("class") or ""


def test_live_page_feedback_files_frames(
    mqtt_broker: Any, tmp_path: Path, runtime_factory: Any, chromium: Any, artifacts: Path
) -> None:
    folder, drop, review, audit = (
        tmp_path / "cam",
        tmp_path / "drop",
        tmp_path / "review",
        tmp_path / "audit.jsonl",
    )
    for i in range(3):
        write_frame(folder, i, defective=(i == 1))
    cfg = edge_config(
        tmp_path, mqtt_broker.url,
        operator={"token": TOKEN, "drop_dir": str(drop), "review_dir": str(review), "audit_log": str(audit),
                  "max_fps": 20},
    )  # fmt: skip
    rt = runtime_factory(cfg, make_bundle(tmp_path / "toy-v1"), [f"dir:{folder}"])
    wait_for(lambda: rt.by_name["cam0"].results >= 3, 60, what="3 verdicts")
    url = f"http://127.0.0.1:{rt.server.port}/operator"
    browser = chromium

    # not logged in: the login form, no camera
    browser.get(url)
    assert browser.find_elements(By.ID, "secret") and not browser.find_elements(
        By.CSS_SELECTOR, "section.camera"
    )
    browser.find_element(By.ID, "name").send_keys("alice")
    browser.find_element(By.ID, "secret").send_keys("wrong")
    browser.find_element(By.ID, "login").click()
    wait_for(lambda: "login refused" in browser.page_source, 30, what="the refused login")
    browser.find_element(By.ID, "name").send_keys("alice")
    browser.find_element(By.ID, "secret").send_keys(TOKEN)
    browser.find_element(By.ID, "login").click()
    wait_for(lambda: "frame 2" in _verdict(browser)[0], 60, what="the latest verdict (frame 2) on the page")
    assert "good" in _verdict(browser)[1]

    # the heatmap image is there, at the camera's resolution; the model history shows v1
    img = browser.find_element(By.CSS_SELECTOR, 'section[data-camera="cam0"] img.heatmap')
    wait_for(lambda: browser.execute_script("return arguments[0].naturalWidth", img) == 160, 30,
             what="the overlay image to load")  # fmt: skip
    assert "/operator/frame/cam0/2.jpg" in img.get_attribute("src")
    assert "toy v1 (live)" in browser.find_element(By.ID, "models").text
    browser.save_screenshot(str(artifacts / "operator-first.png"))

    # frames flow: a defective one arrives and the verdict turns live, without a reload
    write_frame(folder, 3, defective=True)
    wait_for(lambda: "ANOMALY (frame 3)" in _verdict(browser)[0], 60, what="the live verdict of frame 3")
    assert "anomalous" in _verdict(browser)[1]
    score = browser.find_element(By.CSS_SELECTOR, 'section[data-camera="cam0"] .score').text
    assert "threshold 0.500" in score and "region" in score
    wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#gallery figure")) == 2, 30,
             what="the two anomalies in the gallery")  # fmt: skip
    browser.save_screenshot(str(artifacts / "operator-anomaly.png"))

    # "false alarm: part is good" on the live frame 3: the unscored frame lands in the drop folder
    browser.find_element(
        By.CSS_SELECTOR, 'section[data-camera="cam0"] button[data-kind="false_alarm"]'
    ).click()
    wait_for(lambda: "filed false_alarm" in browser.find_element(By.ID, "notice").text, 30, what="the notice")
    filed = drop / "toy" / "train" / "good" / "cam0-f000000003-v1.png"
    assert filed.is_file()
    assert np.array_equal(cv2.imread(str(filed)), render(3, True))  # full resolution, no overlay
    # "missed: part is bad" on the gallery's frame 1: filed for review as a test defect
    browser.find_element(By.CSS_SELECTOR, '#gallery button[data-kind="missed"][data-frame-id="1"]').click()
    wait_for(lambda: (review / "toy" / "test" / "missed" / "cam0-f000000001-v1.png").is_file(), 30,
             what="the missed frame in the review folder")  # fmt: skip
    browser.save_screenshot(str(artifacts / "operator-feedback.png"))

    lines = [json.loads(x) for x in audit.read_text().splitlines()]
    assert [(x["user"], x["action"], x["frame_id"], x["model"], x["outcome"]) for x in lines] == [
        ("alice", "false_alarm", 3, {"name": "toy", "version": 1}, "filed"),
        ("alice", "missed", 1, {"name": "toy", "version": 1}, "filed"),
    ]
    # the page never shows where the folders are
    assert str(tmp_path) not in browser.page_source


def test_page_without_credentials_is_refused(chromium: Any, artifacts: Path) -> None:
    """No credential configured: the page and its API refuse, nothing is served."""
    cfg = OperatorConfig()
    assert not cfg.configured
    app = OperatorApp(cfg, runtime=None, live=LiveView())
    server = MetricsServer(Telemetry(), "127.0.0.1", 0, lambda: (True, {}), app.handle)
    server.start()
    try:
        chromium.get(f"http://127.0.0.1:{server.port}/operator")
        body = chromium.find_element(By.TAG_NAME, "body").text
        chromium.save_screenshot(str(artifacts / "operator-refused.png"))
        assert "operator page disabled: no credentials configured" in body
        assert not chromium.find_elements(By.ID, "secret")
        chromium.get(f"http://127.0.0.1:{server.port}/operator/api/state")
        assert "operator page disabled" in chromium.find_element(By.TAG_NAME, "body").text
    finally:
        server.stop()
