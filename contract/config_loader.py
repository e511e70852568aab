"""One way every Linewatch component loads its settings: TOML file, then environment, then overrides.

Why one loader: the edge, the trainer and the refresh job each had their own, and they drifted. The
edge's imported ``tomllib`` with no fallback and crashed at boot on the Python 3.10 of JetPack 6
boxes; their error messages came in three formats. Here, once:

- sources, weakest first: the settings class's defaults, the TOML file, the environment
  (``<PREFIX><SECTION>__<KEY>``, nested with ``__``), explicit overrides (what CLI flags map onto).
  Tables merge key by key: an environment variable changes one key of a table from the file;
- ``tomllib`` where Python has it (3.11+), else the ``tomli`` package (same API);
- one error type, :class:`contract.errors.ConfigError`, and one message: a header naming the
  component and where its values came from, then a line per bad key with its environment variable.

A component's settings class derives from :class:`LayeredSettings` (a pydantic-settings
``BaseSettings`` with this source order) and sets ``env_prefix`` and ``env_nested_delimiter="__"``.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsError

from linewatch.contract.errors import ConfigError

try:
    import tomllib
except (
    ModuleNotFoundError
):  # Python 3.10 (JetPack 6); tests/edge/test_edge_config.py runs this with it blocked
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["ConfigError", "LayeredSettings", "format_errors", "load_settings", "read_toml"]

S = TypeVar("S", bound=BaseSettings)
Prepare = Callable[[dict[str, Any], Path], dict[str, Any]]

# The TOML values of the load in progress: read by the settings class's file source.
_FILE_VALUES: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "linewatch_config_file", default=None
)


class _FileSource(PydanticBaseSettingsSource):
    """The TOML file's values, already read (and checked) by :func:`load_settings`."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ hands over the whole table

    def __call__(self) -> dict[str, Any]:
        return dict(_FILE_VALUES.get() or {})


class LayeredSettings(BaseSettings):
    """Settings whose sources are, strongest first: init overrides, environment, TOML file."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _FileSource(settings_cls)


def read_toml(path: Path | str) -> dict[str, Any]:
    """The parsed TOML file; ConfigError when it is missing, unreadable or not TOML."""
    file = Path(path)
    try:
        with file.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {file} does not exist") from exc
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {file} is not valid TOML: {exc}") from exc


def env_name(prefix: str, loc: tuple[Any, ...]) -> str:
    """The environment variable of a key: ``LINEWATCH_EDGE_`` + ``MQTT__URL``."""
    return prefix + "__".join(str(part).upper() for part in loc if not isinstance(part, int))


def format_errors(exc: ValidationError, component: str, prefix: str, source: str) -> str:
    """One line per bad key: ``  queues.frames: <what is wrong> (env LINEWATCH_EDGE_QUEUES__FRAMES)``."""
    lines = [f"invalid {component} configuration ({source}):"]
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        msg = str(err["msg"]).removeprefix("Value error, ")
        if not loc:
            hint = ""
        elif err["type"] == "missing":
            hint = f" (set it in the file or {env_name(prefix, loc)})"
        else:
            hint = f" (env {env_name(prefix, loc)})"
        lines.append(f"  {key}: {msg}{hint}")
    return "\n".join(lines)


def load_settings(
    settings_cls: type[S],
    *,
    component: str,
    path: Path | str | None = None,
    overrides: Mapping[str, Any] | None = None,
    required: bool = True,
    prepare: Prepare | None = None,
) -> S:
    """Build and validate ``settings_cls`` from the file at ``path``, the environment and ``overrides``.

    ``required=False`` lets a missing file pass (the values then come from the environment alone).
    ``prepare(values, file)`` sees the file's values first: it may refuse a key (raise ConfigError)
    or rewrite values (relative paths made relative to the file's folder).
    """
    prefix = str(settings_cls.model_config.get("env_prefix", ""))
    values: dict[str, Any] = {}
    source = f"defaults and environment {prefix}*"
    if path is not None:
        file = Path(path)
        if required or file.is_file():
            values = read_toml(file)
            if prepare is not None:
                values = prepare(values, file)
            source = str(file)
        else:
            source = f"environment only; {file} absent"
    token = _FILE_VALUES.set(values)
    try:
        return settings_cls(**dict(overrides or {}))
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, component, prefix, source)) from None
    except SettingsError as exc:  # an environment value that is not valid JSON for a list or table key
        cause = f": {exc.__cause__}" if exc.__cause__ else ""
        raise ConfigError(
            f"invalid {component} configuration (environment {prefix}*): {exc}{cause}"
        ) from None
    finally:
        _FILE_VALUES.reset(token)
