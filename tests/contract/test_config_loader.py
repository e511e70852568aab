"""The one config loader: file < environment < overrides, tables merged, one error format naming keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import SettingsConfigDict

from linewatch.contract.config_loader import LayeredSettings, load_settings, read_toml
from linewatch.contract.errors import ConfigError


class _Link(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = "localhost"
    port: int = Field(1883, gt=0, lt=65536)
    tags: list[str] = Field(default_factory=list)


class _Demo(LayeredSettings):
    model_config = SettingsConfigDict(env_prefix="LW_TEST_", env_nested_delimiter="__", extra="forbid")
    name: str = "default"
    link: _Link = _Link()


class _Needs(LayeredSettings):
    model_config = SettingsConfigDict(env_prefix="LW_TEST_", env_nested_delimiter="__", extra="forbid")
    store: Path


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for var in [v for v in os.environ if v.startswith("LW_TEST_")]:
        monkeypatch.delenv(var)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_file_then_env_then_overrides_merge_key_by_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path, 'name = "file"\n[link]\nhost = "broker"\nport = 1884\n')
    assert load_settings(_Demo, component="demo").name == "default"
    cfg = load_settings(_Demo, component="demo", path=path)
    assert (cfg.name, cfg.link.host, cfg.link.port) == ("file", "broker", 1884)
    monkeypatch.setenv("LW_TEST_LINK__PORT", "1999")
    cfg = load_settings(_Demo, component="demo", path=path)
    assert (cfg.link.host, cfg.link.port) == ("broker", 1999)  # env changed one key of the file's table
    cfg = load_settings(_Demo, component="demo", path=path, overrides={"link": {"port": 2000}})
    assert (cfg.name, cfg.link.host, cfg.link.port) == ("file", "broker", 2000)


def test_errors_name_key_env_variable_component_and_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path, "[link]\nport = 0\nprot = 1\n")
    with pytest.raises(ConfigError) as info:
        load_settings(_Demo, component="demo", path=path)
    text = str(info.value)
    assert text.startswith(f"invalid demo configuration ({path}):")
    assert "link.port: Input should be greater than 0 (env LW_TEST_LINK__PORT)" in text
    assert "link.prot: Extra inputs are not permitted" in text
    with pytest.raises(ConfigError) as info:
        load_settings(_Needs, component="demo")
    assert "store: Field required (set it in the file or LW_TEST_STORE)" in str(info.value)
    monkeypatch.setenv("LW_TEST_LINK__TAGS", "[not json")
    with pytest.raises(ConfigError, match=r"environment LW_TEST_\*"):
        load_settings(_Demo, component="demo")


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not found: .* does not exist"):
        read_toml(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        read_toml(_write(tmp_path, "[link\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_settings(_Demo, component="demo", path=tmp_path / "absent.toml")
    cfg = load_settings(_Demo, component="demo", path=tmp_path / "absent.toml", required=False)
    assert cfg.name == "default"


def test_prepare_sees_the_file_values_and_may_refuse_or_rewrite(tmp_path: Path) -> None:
    seen: list[tuple[dict[str, Any], Path]] = []

    def prepare(values: dict[str, Any], file: Path) -> dict[str, Any]:
        seen.append((values, file))
        if "secret" in values.get("link", {}):
            raise ConfigError("link.secret: not allowed in the file")
        return {**values, "name": values["name"].upper()}

    path = _write(tmp_path, 'name = "file"\n')
    assert load_settings(_Demo, component="demo", path=path, prepare=prepare).name == "FILE"
    assert seen == [({"name": "file"}, path)]
    with pytest.raises(ConfigError, match=r"link\.secret"):
        load_settings(
            _Demo, component="demo", path=_write(tmp_path, '[link]\nsecret = "x"\n'), prepare=prepare
        )


def test_a_load_leaves_no_file_values_behind(tmp_path: Path) -> None:
    load_settings(_Demo, component="demo", path=_write(tmp_path, 'name = "file"\n'))
    assert _Demo().name == "default"  # the file's values belonged to that load only
