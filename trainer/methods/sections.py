"""The registered methods' configs as sections of the trainer config: `[patchcore]`, `LINEWATCH_TRAIN_PADIM__DIMS`.

Why not one declared `TrainConfig` field per method: then adding a method means editing
the trainer config. Instead `TrainConfig` accepts extra keys and hands them here: the
name of every registered method is a section, validated by that method's own `Config`
(a method without a section in the file gets its defaults); any other unknown key is
refused, as it was when the sections were declared fields. Errors name `<method>.<key>`.

The environment: pydantic-settings reads `LINEWATCH_TRAIN_<FIELD>__<KEY>` for declared
fields only, so `sections_env` runs pydantic-settings' own `EnvSettingsSource` (same
prefix, delimiter and parsing) on a settings class whose fields are the sections.
"""

from __future__ import annotations

from collections.abc import Collection
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ValidationError, create_model
from pydantic_core import InitErrorDetails
from pydantic_settings import BaseSettings, EnvSettingsSource

from linewatch.trainer.methods.registry import methods


def validate_sections(data: Any, declared: Collection[str], title: str) -> Any:
    """`data` with every registered method's section validated (defaults where absent).

    `declared` are the config's own fields; a method named like one of them is a bug (its
    section could not be told apart) and raises TypeError.
    """
    if not isinstance(data, dict):
        return data
    registered = methods()
    errors: list[InitErrorDetails] = [
        {"type": "extra_forbidden", "loc": (key,), "input": value}
        for key, value in data.items()
        if key not in declared and key not in registered
    ]
    out = {k: v for k, v in data.items() if k in declared}
    for name, cls in registered.items():
        if name in declared:
            raise TypeError(f"method {name!r} is named like the trainer config key {name!r}; rename it")
        try:
            out[name] = cls.Config.model_validate(data.get(name, {}))
        except ValidationError as exc:
            errors += [_under(name, e) for e in exc.errors()]
    if errors:
        raise ValidationError.from_exception_data(title, errors)
    return out


def _under(section: str, error: Any) -> InitErrorDetails:
    """One of a section's errors, located under the section's name."""
    detail: InitErrorDetails = {
        "type": error["type"],
        "loc": (section, *error["loc"]),
        "input": error["input"],
    }
    if "ctx" in error:
        detail["ctx"] = error["ctx"]
    return detail


def sections_env(env: EnvSettingsSource) -> EnvSettingsSource:
    """The sections' values from the environment, read exactly as `env` reads declared fields."""
    return EnvSettingsSource(
        _sections_settings(tuple((name, cls.Config) for name, cls in methods().items())),
        case_sensitive=env.case_sensitive,
        env_prefix=env.env_prefix,
        env_nested_delimiter=env.env_nested_delimiter,
    )


@lru_cache(maxsize=8)
def _sections_settings(sections: tuple[tuple[str, type[BaseModel]], ...]) -> type[BaseSettings]:
    """A settings class with one field per method section (never instantiated; it only lists them)."""
    fields: dict[str, Any] = {name: (config, None) for name, config in sections}
    return create_model("MethodSections", __base__=BaseSettings, **fields)
