"""Config: file + env (env wins) + overrides, validated at start, errors naming the key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from linewatch.edge.config import ConfigError, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(text)
    return path


def test_defaults_are_valid() -> None:
    cfg = load_config()
    assert cfg.mqtt.port == 1883 and cfg.queues.policy == "drop_oldest"
    assert cfg.backend.order == ["tensorrt", "ort-tensorrt", "ort-cuda", "ort-cpu"]
    assert cfg.topic.root("cam0") == "linewatch/site/line/station/cam0"


def test_file_then_env_then_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(
        tmp_path,
        '[mqtt]\nurl = "mqtt://10.0.0.1:1884"\nprotocol = "5"\n[queues]\nframes = 8\n[topic]\nsite = "plant1"\n',
    )
    monkeypatch.setenv("LINEWATCH_EDGE_MQTT__URL", "mqtts://broker.local")
    monkeypatch.setenv("LINEWATCH_EDGE_QUEUES__FRAMES", "16")
    cfg = load_config(path, {"queues": {"frames": 32}})
    assert cfg.mqtt.url == "mqtts://broker.local" and cfg.mqtt.use_tls and cfg.mqtt.port == 8883
    assert cfg.mqtt.protocol == "5"  # from the file, untouched by env
    assert cfg.queues.frames == 32  # explicit override beats env
    assert cfg.topic.root("c") == "linewatch/plant1/line/station/c"
    monkeypatch.delenv("LINEWATCH_EDGE_QUEUES__FRAMES")
    assert load_config(path).queues.frames == 8


@pytest.mark.parametrize(
    ("text", "env", "key"),
    [
        ('[queues]\npolicy = "sometimes"\n', {}, "queues.policy"),
        ("[queues]\nframes = 0\n", {}, "queues.frames"),
        ('[mqtt]\nurl = "http://x"\n', {}, "mqtt.url"),
        ('[mqtt]\nprotocol = "4"\n', {}, "mqtt.protocol"),
        ('[backend]\norder = ["magic"]\n', {}, "backend.order"),
        ("[bogus]\nx = 1\n", {}, "bogus"),
        ("[mqtt]\nurll = 1\n", {}, "mqtt.urll"),
        ("", {"LINEWATCH_EDGE_BATCH__SIZE": "many"}, "batch.size"),
        ('[mqtt.tls]\ncert = "/c.pem"\n', {}, "mqtt.tls"),
        ('[topic]\ntemplate = "a/{site}"\n', {}, "topic.template"),
    ],
)
def test_errors_name_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, env: dict[str, str], key: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert key in str(err.value)


def test_password_from_env_or_file_never_from_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"mqtt\.password"):
        load_config(write(tmp_path, '[mqtt]\npassword = "hunter2"\n'))
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    cfg = load_config(write(tmp_path, f'[mqtt]\nusername = "edge"\npassword_file = "{secret}"\n'))
    assert cfg.mqtt.resolved_password() == "from-file"
    monkeypatch.setenv("LINEWATCH_EDGE_MQTT__PASSWORD", "from-env")
    cfg = load_config(write(tmp_path, f'[mqtt]\nusername = "edge"\npassword_file = "{secret}"\n'))
    assert cfg.mqtt.resolved_password() == "from-env"
    assert "from-env" not in repr(cfg)  # a SecretStr never leaks into logs


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[mqtt\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_shipped_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "edge" / "edge.example.toml"
    cfg = load_config(example)
    assert cfg.topic.root("cam0") == "linewatch/plant1/line2/press3/cam0"
    assert cfg.mqtt.use_tls and cfg.reload.require_signature


# Python 3.10 (JetPack 6 boxes) has no tomllib. The subprocess blocks it with a meta-path finder and
# provides tomli: the installed package, else pip's vendored copy of the same package.
_WITHOUT_TOMLLIB = """
import importlib.abc, json, sys

class NoTomllib(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "tomllib":
            raise ModuleNotFoundError("No module named 'tomllib'", name=name)
        return None

sys.meta_path.insert(0, NoTomllib())
try:
    import tomllib
    sys.exit("the blocker did not block tomllib")
except ModuleNotFoundError:
    pass
try:
    import tomli
except ModuleNotFoundError:
    import pip._vendor.tomli as tomli
    sys.modules["tomli"] = tomli

from linewatch.contract import config_loader
from linewatch.edge.config import load_config

cfg = load_config(sys.argv[1], {"queues": {"frames": 32}})
print(json.dumps({"toml_module": config_loader.tomllib.__name__, "root": cfg.topic.root("cam0"),
                  "frames": cfg.queues.frames, "tls": cfg.mqtt.use_tls}))
"""


def test_loads_on_a_python_without_tomllib(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "edge" / "edge.example.toml"
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TOMLLIB, str(example)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["toml_module"].endswith("tomli")  # the fallback parsed the file
    assert got["root"] == "linewatch/plant1/line2/press3/cam0" and got["tls"] and got["frames"] == 32
