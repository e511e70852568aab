"""The CLI: verify's exit codes, run's graceful shutdown (SIGTERM) and Last Will (SIGKILL)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from edge_testkit import make_bundle, wait_for, write_frame, write_video

from linewatch.edge.cli import EXIT_BACKEND, EXIT_BUNDLE, EXIT_GOLDEN, EXIT_OK, EXIT_USAGE, main
from linewatch.edge.publish import payloads

REPO = Path(__file__).resolve().parents[2]
SITE = "linewatch/site/line/station"


def test_verify_ok_and_failures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from linewatch.edge.model.signing import generate_keypair

    priv, pub = generate_keypair(tmp_path / "keys")
    good = make_bundle(tmp_path / "good", sign_key=priv)
    assert main(["verify", "--bundle", str(good), "--key", str(pub)]) == EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["signature_verified"] and report["golden"]["ok"]
    assert (
        main(["verify", "--bundle", str(make_bundle(tmp_path / "unsigned")), "--key", str(pub)])
        == EXIT_BUNDLE
    )
    assert "unsigned" in capsys.readouterr().err
    tampered = make_bundle(tmp_path / "tampered")
    np.save(tampered / "reference.npy", np.zeros((64, 64, 3), np.float32), allow_pickle=False)
    assert main(["verify", "--bundle", str(tampered)]) == EXIT_BUNDLE
    assert "sha256" in capsys.readouterr().err
    assert (
        main(["verify", "--bundle", str(make_bundle(tmp_path / "golden", golden_offset=0.3))]) == EXIT_GOLDEN
    )
    assert "GOLDEN MISMATCH" in capsys.readouterr().err
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert main(["verify", "--bundle", str(good), "--backend", "ort-cuda"]) == EXIT_BACKEND
        assert "NO BACKEND" in capsys.readouterr().err


def test_verify_scores_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`verify --score`: what the refresh job asks about the operator's false alarms."""
    bundle = make_bundle(tmp_path / "toy-v1")
    write_frame(tmp_path / "img", 0, defective=False)
    write_frame(tmp_path / "img", 1, defective=True)
    (tmp_path / "img" / "junk.png").write_bytes(b"not an image")
    files = [str(tmp_path / "img" / n) for n in ("000000.png", "000001.png", "junk.png")]
    out = tmp_path / "report.json"
    assert main(["verify", "--bundle", str(bundle), "--score", *files, "--out", str(out)]) == EXIT_OK
    images = json.loads(out.read_text())["images"]
    assert [(i["file"], i.get("anomalous")) for i in images] == list(
        zip(files, [False, True, None], strict=True)
    )
    assert images[0]["score"] < 0.5 <= images[1]["score"] and images[2]["error"] == "not a readable image"


def test_config_error_names_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "edge.toml"
    cfg.write_text("[queues]\npolicy = 'whenever'\n")
    rc = main(["run", "--bundle", "x", "--source", "0", "--config", str(cfg)])
    assert rc == EXIT_USAGE and "queues.policy" in capsys.readouterr().err


def test_run_refuses_bad_bundle(tmp_path: Path, mqtt_broker: Any) -> None:
    bad = make_bundle(tmp_path / "bad", golden_offset=0.3)
    argv = ["run", "--bundle", str(bad), "--source", f"dir:{tmp_path}", "--mqtt", mqtt_broker.url,
            "--metrics-port", "0", "--outbox", str(tmp_path / "o.sqlite")]  # fmt: skip
    assert main(argv) == EXIT_GOLDEN
    assert main([*argv[:2], str(tmp_path / "missing"), *argv[3:]]) == EXIT_BUNDLE


def test_run_video_exit_at_end(tmp_path: Path, mqtt_broker: Any, mqtt_recorder: Any) -> None:
    rec = mqtt_recorder([f"{SITE}/#"])
    write_video(tmp_path / "v.avi", 12)
    rc = main(["run", "--bundle", str(make_bundle(tmp_path / "b")), "--source", str(tmp_path / "v.avi"),
               "--mqtt", mqtt_broker.url, "--exit-at-end", "--camera", "press3", "--metrics-port", "0",
               "--outbox", str(tmp_path / "o.sqlite")])  # fmt: skip
    assert rc == EXIT_OK
    wait_for(lambda: len(rec.on("press3/result")) >= 12, 60)
    assert sorted({d["frame_id"] for d in rec.json("press3/result")}) == list(range(12))


def _spawn(tmp_path: Path, broker: Any, folder: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "LINEWATCH_EDGE_METRICS__PORT": "0"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge",
            "run",
            "--bundle",
            str(make_bundle(tmp_path / "b")),
            "--source",
            f"dir:{folder}",
            "--mqtt",
            broker.url,
            "--outbox",
            str(tmp_path / "o.sqlite"),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_graceful_shutdown_on_signal(tmp_path: Path, mqtt_broker: Any, mqtt_recorder: Any, sig: int) -> None:
    rec = mqtt_recorder([f"{SITE}/#"])
    folder = tmp_path / "spool"
    for i in range(10):
        write_frame(folder, i, i == 4)
    proc = _spawn(tmp_path, mqtt_broker, folder)
    try:
        wait_for(lambda: len(rec.on("cam0/result")) >= 10, 120, what="verdicts from the subprocess")
        proc.send_signal(sig)
        assert proc.wait(120) == 0, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
    wait_for(lambda: rec.json("cam0/status")[-1]["state"] == "offline", 60)
    status = rec.json("cam0/status")[-1]
    payloads.validate("status", status)
    assert status["model"] == {"name": "toy", "version": 1}


def test_last_will_on_crash(tmp_path: Path, mqtt_broker: Any, mqtt_recorder: Any) -> None:
    rec = mqtt_recorder([f"{SITE}/#"])
    folder = tmp_path / "spool"
    write_frame(folder, 0, False)
    proc = _spawn(tmp_path, mqtt_broker, folder)
    try:
        wait_for(lambda: len(rec.on("cam0/result")) >= 1, 120)
        assert rec.json("cam0/status")[-1]["state"] == "online"
        proc.kill()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    wait_for(lambda: rec.json("cam0/status")[-1]["state"] == "offline", 90, what="the Last Will")
    payloads.validate("status", rec.json("cam0/status")[-1])
