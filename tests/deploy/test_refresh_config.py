"""Configuration: TOML + env overrides, and error messages that name the key to fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from refresh_testkit import write_config

from linewatch.deploy.refresh.config import ConfigError, load_config, preflight
from linewatch.deploy.refresh.publish import LocalStore, RemoteStore, open_store


def test_loads_defaults_and_resolves_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "refresh.toml"
    path.write_text(
        'run_dir = "../run"\ndata = "mvtec:../dataset"\ndrop_dir = "/srv/drop"\nsign_key = "k/linewatch.key"\n'
        '[store]\ndir = "bundles"\n'
    )
    cfg = load_config(path)
    assert cfg.run_dir == tmp_path / "conf" / ".." / "run"
    assert cfg.data_root == tmp_path / "conf" / ".." / "dataset" and cfg.data_format == "mvtec"
    assert cfg.public_key == tmp_path / "conf" / "k" / "linewatch.pub"
    assert cfg.gate.max_drop == 0.02 and cfg.gate.new_task_floor == 0.90 and cfg.gate.metric == "image_auroc"
    assert cfg.mqtt.url is None
    assert isinstance(open_store(cfg), LocalStore)


def test_env_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(
        tmp_path, gate={"max_drop": 0.05}, mqtt={"url": "mqtt://127.0.0.1:1883", "topic_root": "a/b/c/d/e"}
    )
    monkeypatch.setenv("LINEWATCH_REFRESH_GATE__MAX_DROP", "0.01")
    monkeypatch.setenv("LINEWATCH_REFRESH_MQTT__PASSWORD", "s3cret")
    monkeypatch.setenv("LINEWATCH_REFRESH_MQTT__TOPIC_ROOT", "r/1/a/b/c, r/1/a/b/d")
    cfg = load_config(path)
    assert cfg.gate.max_drop == 0.01
    assert cfg.mqtt.topic_root == ["r/1/a/b/c", "r/1/a/b/d"]
    assert cfg.mqtt.endpoint() == ("127.0.0.1", 1883, False, None, "s3cret")
    assert "s3cret" not in repr(cfg)  # secrets are not printed
    monkeypatch.setenv("LINEWATCH_REFRESH_STORE__REMOTE", "linewatch@jetson-01:/var/lib/linewatch/bundles")
    monkeypatch.setenv("LINEWATCH_REFRESH_STORE__DIR", "")
    with pytest.raises(ConfigError, match="store"):
        load_config(path)  # an empty dir is still a dir: both set


def test_remote_store(tmp_path: Path) -> None:
    path = write_config(tmp_path, store={"dir": None})
    text = path.read_text().replace(
        "dir = null\n", 'remote = "linewatch@jetson-01:/var/lib/linewatch/bundles"\n'
    )
    path.write_text(text)
    store = open_store(load_config(path))
    assert isinstance(store, RemoteStore)
    assert (store.dest, store.path) == ("linewatch@jetson-01", "/var/lib/linewatch/bundles")


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            'data = "mvtec:/d"\ndrop_dir = "/x"\nsign_key = "/k"\n[store]\ndir = "/s"\n',
            "run_dir: Field required (set it in the file or LINEWATCH_REFRESH_RUN_DIR)",
        ),
        (
            'run_dir = "/r"\ndata = "visa:/d"\ndrop_dir = "/x"\nsign_key = "/k"\n[store]\ndir = "/s"\n',
            "data: format 'visa' is not supported",
        ),
        (
            'run_dir = "/r"\ndata = "/d"\ndrop_dir = "/x"\nsign_key = "/k"\n[store]\ndir = "/s"\n',
            "data: must be FORMAT:ROOT",
        ),
        (
            'run_dir = "/r"\ndata = "mvtec:/d"\ndrop_dir = "/x"\nsign_key = "/k"\n[store]\n',
            "store: set exactly one of store.dir",
        ),
        (
            'run_dir = "/r"\ndata = "mvtec:/d"\ndrop_dir = "/x"\nsign_key = "/k"\n[store]\nremote = "nohost"\n',
            "store.remote: must look like",
        ),
        (
            'run_dir = "/r"\ndata = "mvtec:/d"\ndrop_dir = "/x"\nsign_key = "/k"\n[store]\ndir = "/s"\n[gate]\nmax_drop = -0.1\n',
            "gate.max_drop: Input should be greater than or equal to 0",
        ),
        (
            'run_dir = "/r"\ndata = "mvtec:/d"\ndrop_dir = "/x"\nsign_key = "/k"\n[store]\ndir = "/s"\n[gate]\nmax_dorp = 0.1\n',
            "gate.max_dorp: Extra inputs are not permitted",
        ),
        (
            'run_dir = "/r"\ndata = "mvtec:/d"\ndrop_dir = "/x"\nsign_key = "/k"\n[store]\ndir = "/s"\n[mqtt]\nurl = "http://x"\ntopic_root="a"\n',
            "mqtt.url: scheme must be mqtt:// or mqtts://",
        ),
        (
            'run_dir = "/r"\ndata = "mvtec:/d"\ndrop_dir = "/x"\nsign_key = "/k"\n[store]\ndir = "/s"\n[mqtt]\nurl = "mqtt://x"\n',
            "mqtt: mqtt.topic_root is required",
        ),
        (
            'run_dir = "/r"\ndata = "mvtec:/d"\ndrop_dir = "/x"\nsign_key = "/k"\n[store]\ndir = "/s"\n[mqtt]\nurl = "mqtt://x"\ntopic_root = "linewatch/#"\n',
            "mqtt.topic_root: topic root 'linewatch/#' must be a concrete",
        ),
        ("run_dir = [", "not valid TOML"),
    ],
)
def test_errors_name_the_key(
    tmp_path: Path, toml: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in [v for v in __import__("os").environ if v.startswith("LINEWATCH_REFRESH_")]:
        monkeypatch.delenv(var)
    path = tmp_path / "refresh.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert expected in str(info.value)


def test_missing_file_and_preflight(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml")
    cfg = load_config(write_config(tmp_path))
    preflight(cfg, "run")
    (tmp_path / "keys" / "linewatch.pub").unlink()
    (tmp_path / "run" / "metrics.json").unlink()
    with pytest.raises(ConfigError) as info:
        preflight(cfg, "run")
    assert "verify_key: file does not exist" in str(info.value)
    assert "run_dir: file does not exist" in str(info.value)
    preflight(cfg, "status")  # status needs neither


def test_example_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    example = Path(__file__).resolve().parents[2] / "deploy" / "refresh" / "refresh.example.toml"
    cfg = load_config(example)
    assert cfg.store.dir == Path("/var/lib/linewatch/bundles")
    assert cfg.mqtt.endpoint()[:3] == ("127.0.0.1", 8883, True)
