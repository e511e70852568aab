"""The refresh job's one configuration object.

Loaded from a TOML file (default `/etc/linewatch/refresh.toml`) with every key
overridable from the environment as `LINEWATCH_REFRESH_<KEY>`, nested keys joined
with a double underscore (`LINEWATCH_REFRESH_GATE__MAX_DROP=0.03`,
`LINEWATCH_REFRESH_MQTT__PASSWORD=...`). Environment wins over the file so that
secrets can live in a systemd `EnvironmentFile` rather than in the TOML.

Validation happens once, at start, and every message names the key (and the
environment variable) to fix: a nightly job that fails at 03:00 should say exactly
what is wrong in the journal.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

try:  # pydantic-settings >= 2.7: lets a list come from a plain comma-separated env var
    from pydantic_settings import NoDecode
except ImportError:  # pragma: no cover - older pydantic-settings: env lists must be JSON
    NoDecode = None  # type: ignore[assignment,misc]

from linewatch.contract.config_loader import LayeredSettings, load_settings
from linewatch.contract.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ENV_PREFIX",
    "ConfigError",
    "GateConfig",
    "MqttConfig",
    "RefreshConfig",
    "StepsConfig",
    "StoreConfig",
    "load_config",
]

ENV_PREFIX = "LINEWATCH_REFRESH_"
DEFAULT_CONFIG_PATH = Path("/etc/linewatch/refresh.toml")
# Drops are merged in the MVTec folder layout, so only layouts that are folders qualify.
DROP_FORMATS = ("mvtec", "folder")
_REMOTE_RE = re.compile(r"^(?:(?P<user>[^@:/\s]+)@)?(?P<host>[^@:/\s]+):(?P<path>/\S*)$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GateConfig(_Section):
    """Margins the new model must meet before it may replace the live one."""

    metric: str = "image_auroc"
    max_drop: float = Field(0.02, ge=0.0, le=1.0)
    max_drop_by_task: dict[str, float] = Field(default_factory=dict)
    new_task_floor: float = Field(0.90, ge=0.0, le=1.0)
    # "eval": re-evaluate the old run on the same test data (fair comparison, costs one eval).
    # "run": trust the last row of the old run's metrics.json (cheaper, may be stale).
    baseline: Literal["eval", "run"] = "eval"

    @field_validator("max_drop_by_task")
    @classmethod
    def _drops_in_range(cls, value: dict[str, float]) -> dict[str, float]:
        for task, drop in value.items():
            if not 0.0 <= drop <= 1.0:
                raise ValueError(f"max drop for task {task!r} must be within [0, 1], got {drop}")
        return value


class StoreConfig(_Section):
    """Where bundles are published: a local directory or `[user@]host:/abs/path` over ssh."""

    dir: Path | None = None
    remote: str | None = None
    keep: int = Field(5, ge=2, description="published bundles kept; current and previous always are")
    ssh: list[str] = Field(default_factory=lambda: ["ssh", "-o", "BatchMode=yes"])
    rsync: list[str] = Field(default_factory=lambda: ["rsync"])

    @field_validator("remote")
    @classmethod
    def _remote_shape(cls, value: str | None) -> str | None:
        if value is not None and not _REMOTE_RE.match(value):
            raise ValueError("must look like [user@]host:/absolute/path")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> StoreConfig:
        if (self.dir is None) == (self.remote is None):
            raise ValueError(
                "set exactly one of store.dir (local bundle store) or store.remote (user@host:/path)"
            )
        return self

    def remote_parts(self) -> tuple[str, str]:
        """Split `remote` into (ssh destination, absolute path)."""
        assert self.remote is not None
        match = _REMOTE_RE.match(self.remote)
        assert match is not None
        dest = f"{match['user']}@{match['host']}" if match["user"] else match["host"]
        return dest, match["path"].rstrip("/") or "/"


class MqttConfig(_Section):
    """How to reach the broker the edge reports on. No `url` means: skip confirmation."""

    url: str | None = None
    topic_root: Annotated[list[str], NoDecode] if NoDecode else list[str] = Field(default_factory=list)  # type: ignore[valid-type]
    confirm_timeout_s: float = Field(180.0, gt=0)
    username: str | None = None
    password: SecretStr | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    client_id_prefix: str = "linewatch-refresh"

    @field_validator("topic_root", mode="before")
    @classmethod
    def _split_roots(cls, value: Any) -> Any:
        # A single root (the common case, and what an env var naturally holds), a
        # comma-separated string, a JSON list, or a TOML list: several cameras may be
        # fed from the same bundle store and all must confirm.
        if isinstance(value, str) and value.lstrip().startswith("["):
            with contextlib.suppress(json.JSONDecodeError):
                value = json.loads(value)
        if isinstance(value, str):
            value = [part for part in (p.strip() for p in value.split(",")) if part]
        if isinstance(value, list):
            value = [str(v).strip().rstrip("/") for v in value]
        return value

    @field_validator("topic_root")
    @classmethod
    def _no_wildcards(cls, value: list[str]) -> list[str]:
        for root in value:
            if not root or "#" in root or "+" in root:
                raise ValueError(f"topic root {root!r} must be a concrete topic prefix without wildcards")
        return value

    @field_validator("url")
    @classmethod
    def _url_shape(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError("scheme must be mqtt:// or mqtts://")
        if not parts.hostname:
            raise ValueError("needs a host, e.g. mqtt://127.0.0.1:1883")
        try:
            _ = parts.port
        except ValueError as exc:
            raise ValueError(f"bad port: {exc}") from None
        return value

    @model_validator(mode="after")
    def _roots_when_url(self) -> MqttConfig:
        if self.url and not self.topic_root:
            raise ValueError("mqtt.topic_root is required when mqtt.url is set")
        return self

    def endpoint(self) -> tuple[str, int, bool, str | None, str | None]:
        """(host, port, tls, username, password); credentials in the URL lose to explicit keys."""
        assert self.url
        parts = urlsplit(self.url)
        tls = parts.scheme in ("mqtts", "ssl")
        port = parts.port or (8883 if tls else 1883)
        user = self.username or (unquote(parts.username) if parts.username else None)
        if self.password is not None:
            password: str | None = self.password.get_secret_value()
        else:
            password = unquote(parts.password) if parts.password else None
        return str(parts.hostname), port, tls, user, password


class StepsConfig(_Section):
    """Limits and knobs for the external steps (trainer, exporter, edge verify)."""

    train_timeout_s: float = Field(6 * 3600.0, gt=0)
    eval_timeout_s: float = Field(2 * 3600.0, gt=0)
    export_timeout_s: float = Field(2 * 3600.0, gt=0)
    export_args: list[str] = Field(default_factory=list)
    # Files younger than this are ignored in the drop dir: they may still be being copied.
    drop_settle_s: float = Field(60.0, ge=0)
    memory_bank_methods: list[str] = Field(
        default_factory=lambda: ["patchcore", "padim", "cfa", "fewshot", "few-shot", "few_shot"]
    )


class RefreshConfig(LayeredSettings):
    """Everything `linewatch-refresh` needs. See `deploy/refresh/refresh.example.toml`."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid")

    run_dir: Path
    data: str
    drop_dir: Path
    review_dir: Path | None = None  # operator-reported missed defects: <task>/test/<defect>/*, test set only
    sign_key: Path
    verify_key: Path | None = None
    log_path: Path = Path("/var/log/linewatch/refresh.jsonl")
    lock_path: Path = Path("/run/linewatch/refresh.lock")
    python: str = Field(default_factory=lambda: sys.executable)
    store: StoreConfig
    gate: GateConfig = Field(default_factory=GateConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    steps: StepsConfig = Field(default_factory=StepsConfig)

    @field_validator("data")
    @classmethod
    def _data_spec(cls, value: str) -> str:
        fmt, sep, root = value.partition(":")
        if not sep or not root:
            raise ValueError("must be FORMAT:ROOT, e.g. mvtec:/var/lib/linewatch/dataset")
        if fmt not in DROP_FORMATS:
            raise ValueError(
                f"format {fmt!r} is not supported by the refresh job: new images are merged in the "
                f"MVTec folder layout, so use one of {', '.join(DROP_FORMATS)}"
            )
        return value

    @property
    def data_format(self) -> str:
        return self.data.partition(":")[0]

    @property
    def data_root(self) -> Path:
        return Path(self.data.partition(":")[2])

    @property
    def public_key(self) -> Path:
        """The key `linewatch-edge verify` checks with.

        Default follows `linewatch-export keygen`: `linewatch.key` pairs with
        `linewatch.pub`; an HMAC secret (`*.hmac`) is its own verification key.
        """
        if self.verify_key is not None:
            return self.verify_key
        if self.sign_key.suffix == ".hmac":
            return self.sign_key
        if self.sign_key.suffix == ".key":
            return self.sign_key.with_suffix(".pub")
        return self.sign_key.with_name(self.sign_key.name + ".pub")


def _resolve_relative(data: dict[str, Any], file: Path) -> dict[str, Any]:
    """Make path keys in the file relative to the file's folder, as people expect."""
    base = file.resolve().parent
    path_keys = {"run_dir", "drop_dir", "review_dir", "sign_key", "verify_key", "log_path", "lock_path"}
    out = dict(data)
    for key in path_keys & out.keys():
        if isinstance(out[key], str) and not os.path.isabs(out[key]):
            out[key] = str(base / out[key])
    if isinstance(out.get("data"), str):
        fmt, sep, root = out["data"].partition(":")
        if sep and root and not os.path.isabs(root):
            out["data"] = f"{fmt}:{base / root}"
    store = out.get("store")
    if isinstance(store, dict) and isinstance(store.get("dir"), str) and not os.path.isabs(store["dir"]):
        out["store"] = {**store, "dir": str(base / store["dir"])}
    mqtt = out.get("mqtt")
    if isinstance(mqtt, dict):
        mqtt = dict(mqtt)
        for key in ("ca_file", "cert_file", "key_file"):
            if isinstance(mqtt.get(key), str) and not os.path.isabs(mqtt[key]):
                mqtt[key] = str(base / mqtt[key])
        out["mqtt"] = mqtt
    return out


def load_config(path: Path | str | None = None) -> RefreshConfig:
    """Read the TOML file (if any), apply env overrides, validate; raise ConfigError.

    The path comes from the argument, else `LINEWATCH_REFRESH_CONFIG`, else the
    default. A missing file is only an error when it was asked for explicitly, so a
    purely environment-configured job also works.
    """
    explicit = path is not None or "LINEWATCH_REFRESH_CONFIG" in os.environ
    file = Path(path or os.environ.get("LINEWATCH_REFRESH_CONFIG") or DEFAULT_CONFIG_PATH)
    return load_settings(
        RefreshConfig, component="refresh", path=file, required=explicit, prepare=_resolve_relative
    )


def preflight(cfg: RefreshConfig, command: str) -> None:
    """Check the file system before a command starts work; raise ConfigError naming keys.

    Kept apart from the model so that `status` works on a box where, say, the
    signing key is not present (it lives on the training server only).
    """
    problems: list[str] = []

    def need_dir(key: str, path: Path | None) -> None:
        if path is not None and not path.is_dir():
            problems.append(f"  {key}: directory does not exist: {path}")

    def need_file(key: str, path: Path | None) -> None:
        if path is not None and not path.is_file():
            problems.append(f"  {key}: file does not exist: {path}")

    if command == "run":
        need_dir("run_dir", cfg.run_dir)
        if cfg.run_dir.is_dir():
            need_file("run_dir", cfg.run_dir / "metrics.json")
        need_dir("data", cfg.data_root)
        need_dir("drop_dir", cfg.drop_dir)
        need_dir("review_dir", cfg.review_dir)
        need_file("sign_key", cfg.sign_key)
        need_file("verify_key", cfg.public_key)
        roots = [cfg.run_dir.resolve(), cfg.data_root.resolve(), cfg.drop_dir.resolve()]
        if len(set(roots)) != len(roots):
            problems.append("  run_dir, data, drop_dir: must be three different directories")
        if cfg.mqtt.ca_file is not None:
            need_file("mqtt.ca_file", cfg.mqtt.ca_file)
    if command in ("run", "rollback") and cfg.store.dir is not None:
        need_dir("store.dir", cfg.store.dir)
    if problems:
        raise ConfigError("invalid refresh configuration:\n" + "\n".join(problems))
