"""The trainer's one config object: TOML file, then environment (`LINEWATCH_TRAIN_*`), then CLI flags.

Validated at start, so a typo in a key or a bad value fails before minutes of feature
extraction, with a message that names the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import PydanticBaseSettingsSource, SettingsConfigDict

from linewatch.contract.config_loader import LayeredSettings, load_settings
from linewatch.contract.errors import ConfigError  # noqa: F401 - re-exported: trainer.cli and the tests import it here

if TYPE_CHECKING:
    from linewatch.trainer.methods.base import CommonSettings


class GeometryConfig(BaseModel):
    """How a camera frame becomes model inputs (contract/geometry.py). The model input, and so the
    tile, size is `image_size`. Saved with the run and written to the bundle manifest (`geometry`).

    `auto` (the default) is resolved once, at the first `fit`, from the training frames' size
    (`contract.geometry.choose_geometry`) into `resize` or `tile`; the run keeps the result and
    `reason`, so `update`, `eval`, the exporter and the edge never re-decide."""

    model_config = ConfigDict(extra="forbid")
    mode: Literal["auto", "resize", "letterbox", "tile"] = Field(
        "auto",
        description="auto: tile frames much larger than image_size, else resize; resize: squeeze to "
        "image_size; letterbox: keep aspect, pad; tile: grid of tiles",
    )
    overlap: int = Field(0, ge=0, description="tile: px shared by neighbouring tiles (at the working scale)")
    scale: float = Field(
        1.0, gt=0, le=8, description="tile: frames are rescaled by this before tiling (1 = native)"
    )
    frame_size: tuple[int, int] | None = Field(
        None,
        description="(H, W) of the camera frames; images are brought to it (learnt from the data when unset)",
    )
    margin: int = Field(
        0,
        ge=0,
        description="tile: px of mirrored frame around the frame, so its border is seen from inside a tile",
    )
    context: bool = Field(
        False,
        description="tile: also score the whole frame resized and average that map with the tiles' "
        "(one more model input per frame)",
    )
    learn_frame_size: bool = Field(
        True,
        description="tile/letterbox without frame_size: record the first task's frame size (True) or "
        "cut every frame at its own size (False; what `auto` chooses, so cameras of different sizes "
        "and orientations each keep their pixels)",
    )
    reason: str | None = Field(None, description="why `auto` chose this geometry (set by fit)")
    auto: bool = Field(
        False,
        description="set when `auto` resolved this geometry: every new task's frame size then gets its "
        "own choice (`by_size`), at `fit` and at `update` alike",
    )
    by_size: list[dict[str, Any]] = Field(
        default_factory=list,
        description="`auto`, per task: geometries for frames near a reference size (`match`), with "
        "the tasks they serve and why (contract.geometry.Geometry.for_frame)",
    )


class TrainConfig(LayeredSettings):
    """The top-level keys below, plus one section per registered method (`[patchcore]`, ...): each is
    validated by the method's own `Config` (trainer/methods/sections.py); other unknown keys are refused."""

    model_config = SettingsConfigDict(env_prefix="LINEWATCH_TRAIN_", env_nested_delimiter="__", extra="allow")

    method: str = "patchcore"
    strategy: str | None = Field(
        None, description="default: the method's own first strategy (cl for memory banks, replay for trained)"
    )
    backbone: str = "tf_efficientnet_lite0"
    layers: list[int] | None = None
    backbone_weights: Path | None = None
    image_size: tuple[int, int] = (256, 256)
    seed: int = 0
    val_fraction: float = Field(0.15, gt=0, lt=1, description="share of train images held out to calibrate")
    min_val: int = Field(3, ge=1)
    quantile: float = Field(
        0.99, gt=0, le=1, description="good-score quantile that becomes the 0.5 threshold"
    )
    sigma: float = Field(4.0, gt=0)
    progress: bool = True
    report: bool = True
    geometry: GeometryConfig = GeometryConfig()

    @model_validator(mode="before")
    @classmethod
    def _method_sections(cls, data: Any) -> Any:
        from linewatch.trainer.methods.sections import validate_sections

        return validate_sections(data, cls.model_fields, cls.__name__)

    @field_validator("image_size")
    @classmethod
    def _size(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 32 or v[0] % 8 or v[1] % 8:
            raise ValueError("image_size must be (H, W), each >= 32 and a multiple of 8")
        return v

    @model_validator(mode="after")
    def _default_strategy(self) -> TrainConfig:
        """`fit --method efficientad` must just work: memory-bank methods default to `cl`, trained ones
        to `replay`, each method's own first strategy, so no default is refused by the method."""
        if self.strategy is None:
            from linewatch.trainer.methods.registry import method_class

            self.strategy = method_class(self.method).strategies[0]
        return self

    @model_validator(mode="after")
    def _geometry(self) -> TrainConfig:
        g, tile = self.geometry, self.image_size
        if g.overlap >= min(tile):
            raise ValueError(
                f"geometry.overlap {g.overlap} must be smaller than the tile (image_size {tile})"
            )
        if g.mode == "tile" and g.frame_size is not None:
            work = (round(g.frame_size[0] * g.scale), round(g.frame_size[1] * g.scale))
            if work[0] + 2 * g.margin < tile[0] or work[1] + 2 * g.margin < tile[1] or g.margin >= min(work):
                raise ValueError(
                    f"geometry: frame_size {g.frame_size} x scale {g.scale} = {work} (margin {g.margin}) "
                    f"does not fit tiles of {tile}"
                )
        if g.context and g.mode not in ("tile", "auto"):
            raise ValueError(f"geometry.context is a tile option; mode is {g.mode!r}")
        return self

    def geometry_manifest(self) -> dict[str, Any]:
        """The `geometry` record of the run and the bundle manifest (tile = image_size)."""
        g = self.geometry
        return {
            "mode": g.mode,
            "tile": list(self.image_size),
            "overlap": g.overlap,
            "scale": g.scale,
            "frame_size": list(g.frame_size) if g.frame_size else None,
            "margin": g.margin,
            **({"context": True} if g.context else {}),
            **({"reason": g.reason} if g.reason else {}),
            **({"by_size": [dict(entry) for entry in g.by_size]} if g.by_size else {}),
        }

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Overrides (CLI flags), then the environment, then the file (contract/config_loader.py). The
        # method sections are not declared fields, so their variables are read by a source of their own.
        from linewatch.trainer.methods.sections import sections_env

        overrides, env, *rest = super().settings_customise_sources(
            settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
        )
        return overrides, env, sections_env(env_settings), *rest

    def section(self, method: str) -> BaseModel:
        """A registered method's config section (its own `Config`, validated)."""
        extra = self.__pydantic_extra__ or {}
        if method not in extra:
            raise KeyError(f"no config section for method {method!r}")
        return extra[method]

    def method_settings(self) -> CommonSettings:
        """What every method takes from the top-level keys (its own section is `section(method)`)."""
        from linewatch.trainer.methods.base import CommonSettings

        return CommonSettings(
            backbone=self.backbone,
            layers=tuple(self.layers) if self.layers else None,
            backbone_weights=self.backbone_weights,
            input_hw=tuple(self.image_size),
            sigma=self.sigma,
            quantile=self.quantile,
            seed=self.seed,
            progress=self.progress,
        )


def load_config(path: Path | None = None, **overrides: Any) -> TrainConfig:
    """File, then environment, then explicit overrides (the CLI flags that were given; None = not given).
    Tables merge key by key, so `--geometry tile` keeps the file's `[geometry] overlap`."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return load_settings(TrainConfig, component="trainer", path=path, overrides=given)


def config_from_values(values: dict[str, Any]) -> TrainConfig:
    """Validate exactly these values, ignoring the environment (CLI flags and saved runs win)."""
    return TrainConfig(_env_prefix="LINEWATCH_TRAIN_IGNORED_", **values)
