"""Method registry, in the spirit of timm's: a name maps to a class with one protocol."""

from __future__ import annotations

from typing import Any

from trainer.methods.base import Method

_METHODS: dict[str, type] = {}


def register(cls: type) -> type:
    _METHODS[cls.name] = cls
    return cls


def _ensure_loaded() -> None:
    if _METHODS:
        return
    from trainer.methods.efficientad.method import EfficientAD
    from trainer.methods.padim.method import PaDiM
    from trainer.methods.patchcore.method import PatchCore
    from trainer.methods.stfpm.method import STFPM

    for cls in (PatchCore, PaDiM, EfficientAD, STFPM):
        register(cls)


def available() -> dict[str, tuple[str, ...]]:
    """Method name -> the strategies it implements itself (joint and single are protocol-level)."""
    _ensure_loaded()
    return {name: cls.strategies for name, cls in sorted(_METHODS.items())}


def method_class(name: str) -> type:
    _ensure_loaded()
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def create_method(name: str, strategy: str, **config: Any) -> Method:
    return method_class(name)(strategy=strategy, **config)
