"""Method registry, as timm's `@register_model`: decorating the class is the only registration.

Why: adding a method used to mean editing this loader, a config section named like the
method, the CLI help and method tuples in tests. Now a method is a class with `name`,
`strategies` and its own pydantic `Config`, decorated with `@register_method`; the
trainer config's `[<name>]` section, the `fit --help` text and the conformance test
(`tests/trainer/methods/test_conformance.py`) all read this registry.

Discovery: the first lookup imports every module of every subpackage (a folder with an
`__init__.py`) of `trainer.methods`, found with `pkgutil`, so a new folder
`trainer/methods/<anything>/` holding a decorated class is picked up with no list to
edit. A class defined anywhere else (a test, a notebook) registers when its module runs.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from linewatch.trainer.methods.base import Method

if TYPE_CHECKING:
    from linewatch.trainer.config import TrainConfig

BUILTIN_PACKAGE = "linewatch.trainer.methods"
# The name is a TOML table and part of LINEWATCH_TRAIN_<NAME>__<KEY>: lower-case, no dashes.
NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]*")
REQUIRED_CALLS = (
    "fit_task",
    "calibrate",
    "predict",
    "scoring_graph",
    "calibration_meta",
    "metadata",
    "state",
    "load_state",
)

M = TypeVar("M", bound=type)

_METHODS: dict[str, type] = {}
_discovered: set[str] = set()


def _problems(cls: type) -> list[str]:
    """What keeps `cls` from being a method the trainer, config and exporter can all use."""
    problems = []
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        problems.append(
            f"`name` must match {NAME_PATTERN.pattern} (it names the config section), got {name!r}"
        )
    strategies = getattr(cls, "strategies", None)
    if not (isinstance(strategies, tuple) and strategies and all(isinstance(s, str) for s in strategies)):
        problems.append("`strategies` must be a non-empty tuple of names (the first is the default)")
    config = getattr(cls, "Config", None)
    if not (isinstance(config, type) and issubclass(config, BaseModel)):
        problems.append("`Config` must be a pydantic model (the method's config section)")
    else:
        try:
            config()
        except ValidationError as exc:
            problems.append(f"every field of `Config` needs a default: {exc.errors()[0]['loc']}")
    missing = [c for c in REQUIRED_CALLS if not callable(getattr(cls, c, None))]
    if missing:
        problems.append(f"missing methods of the protocol: {', '.join(missing)}")
    return problems


def register_method(cls: M) -> M:
    """Class decorator: make `cls` available as `--method cls.name` with a `[cls.name]` section.

    Refuses a class that does not declare what the trainer needs, and a second class under a
    name already taken (the same class defined again, e.g. a reloaded module, replaces it).
    """
    problems = _problems(cls)
    if problems:
        raise TypeError(f"cannot register {cls.__qualname__} as a method: " + "; ".join(problems))
    old = _METHODS.get(cls.name)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"method name {cls.name!r} is taken by {old.__module__}.{old.__qualname__}")
    _METHODS[cls.name] = cls
    return cls


def unregister_method(name: str) -> None:
    """Forget a method (tests that register a toy one clean up with this)."""
    _METHODS.pop(name, None)


def discover(package: str = BUILTIN_PACKAGE) -> None:
    """Import every module of every subpackage of `package` once, so its decorated classes register.

    An import error is raised, not skipped: a broken method must not silently vanish from `--method`.
    """
    if package in _discovered:
        return
    _discovered.add(package)  # first, so a method module that looks a method up does not recurse
    try:
        root = importlib.import_module(package)
        for sub in pkgutil.iter_modules(root.__path__, f"{package}."):
            if not sub.ispkg:
                continue
            subpackage = importlib.import_module(sub.name)
            for module in pkgutil.walk_packages(subpackage.__path__, f"{sub.name}."):
                importlib.import_module(module.name)
    except BaseException:
        _discovered.discard(package)
        raise


def methods() -> dict[str, type]:
    """Every registered method class by name, sorted by name."""
    discover()
    return dict(sorted(_METHODS.items()))


def available() -> dict[str, tuple[str, ...]]:
    """Method name -> the strategies it implements itself (joint and single are the learner's)."""
    return {name: cls.strategies for name, cls in methods().items()}


def method_class(name: str) -> type:
    known = methods()
    if name not in known:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(known)}")
    return known[name]


def create_method(cfg: TrainConfig, strategy: str | None = None) -> Method:
    """The configured method (`cfg.method`), under `strategy` or the configured one."""
    cls = method_class(cfg.method)
    return cls(strategy or cfg.strategy, cfg.method_settings(), cfg.section(cfg.method))


def build_method(name: str, strategy: str | None = None, **options: Any) -> Method:
    """A method from flat options, for tests, benchmarks and notebooks.

    `options` are `TrainConfig` keys (`image_size`, `progress`, ...) and keys of the method's
    own section (`budget`, `steps`, ...); everything else keeps TrainConfig's and the method's
    defaults, and the environment is ignored. Validation is the config's, so a bad value
    raises pydantic's `ValidationError` naming `<name>.<key>`.
    """
    from linewatch.trainer.config import TrainConfig, config_from_values

    top = {k: v for k, v in options.items() if k in TrainConfig.model_fields}
    section = {k: v for k, v in options.items() if k not in top}
    values = {"method": name, **top, name: section}
    if strategy is not None:
        values["strategy"] = strategy
    return create_method(config_from_values(values))
