"""The trainer's one config object: TOML file, then environment (`LINEWATCH_TRAIN_*`), then CLI flags.

Validated at start, so a typo in a key or a bad value fails before minutes of feature
extraction, with a message that names the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from contract.config_loader import LayeredSettings, load_settings
from contract.errors import ConfigError  # noqa: F401 - re-exported: trainer.cli and the tests import it here


class PatchCoreConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    budget: int = Field(30_000, gt=0, description="total memory-bank patches over all tasks")
    coreset_ratio: float = Field(0.1, gt=0, le=1)
    proj_dim: int | None = Field(32, gt=0, description="random projection for coreset selection")
    reweight_k: int = Field(9, ge=1)


class PadimConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dims: int = Field(100, gt=0)
    eps: float = Field(0.01, gt=0)


class ReplayConfig(BaseModel):
    """Continual learning by replay (trained methods): a fixed buffer of past tasks' images."""

    model_config = ConfigDict(extra="forbid")
    size: int = Field(300, ge=0, description="images kept over all past tasks, shared equally")
    format: Literal["png", "jpeg"] = Field("png", description="how buffered images are stored")
    jpeg_quality: int = Field(95, ge=1, le=100)
    batch: int = Field(8, ge=0, description="replayed images added to each training batch")


class EfficientADConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: Literal["s", "m"] = "s"
    out_channels: int = Field(384, gt=0)
    width: float = Field(1.0, gt=0, description="PDN hidden-channel multiplier (1.0 = published)")
    padding: bool = Field(False, description="padded PDN: the map covers the border (not published)")
    teacher: Path | None = Field(None, description="distilled teacher file (linewatch-train distill-teacher)")
    teacher_cache: Path | None = Field(None, description="where distilled teachers are cached")
    distill_steps: int = Field(10_000, gt=0)
    distill_batch: int = Field(8, gt=0)
    steps: int = Field(10_000, gt=0, description="training steps per task (early stopping may end sooner)")
    batch_size: int = Field(8, gt=0, description="current-task images per batch")
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    hard_quantile: float = Field(0.999, ge=0, lt=1)
    penalty_batch: int = Field(4, ge=0, description="generic images per step for the student penalty")
    penalty_pool: int = Field(64, gt=0)
    penalty_sources: list[str] | None = None
    map_quantiles: tuple[float, float] = (0.9, 0.995)
    eval_every: int = Field(100, gt=0)
    patience: int = Field(5, ge=0, description="evaluations without improvement before stopping (0: never)")
    holdout: float = Field(0.1, gt=0, lt=1, description="share of a task's images held out to stop early")
    device: str = "cpu"
    replay: ReplayConfig = ReplayConfig()


class STFPMConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: int = Field(1000, gt=0, description="training steps per task (early stopping may end sooner)")
    batch_size: int = Field(8, gt=0, description="current-task images per batch")
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.4, gt=0)
    momentum: float = Field(0.9, ge=0)
    weight_decay: float = Field(1e-4, ge=0)
    eval_every: int = Field(50, gt=0)
    patience: int = Field(5, ge=0)
    holdout: float = Field(0.1, gt=0, lt=1)
    device: str = "cpu"
    replay: ReplayConfig = ReplayConfig()


class GeometryConfig(BaseModel):
    """How a camera frame becomes model inputs (trainer/geometry.py). The model input, and so the
    tile, size is `image_size`. Saved with the run and written to the bundle manifest (`geometry`)."""

    model_config = ConfigDict(extra="forbid")
    mode: Literal["resize", "letterbox", "tile"] = Field(
        "resize",
        description="resize: squeeze to image_size; letterbox: keep aspect, pad; tile: grid of tiles",
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


class TrainConfig(LayeredSettings):
    model_config = SettingsConfigDict(
        env_prefix="LINEWATCH_TRAIN_", env_nested_delimiter="__", extra="forbid"
    )

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
    patchcore: PatchCoreConfig = PatchCoreConfig()
    padim: PadimConfig = PadimConfig()
    efficientad: EfficientADConfig = EfficientADConfig()
    stfpm: STFPMConfig = STFPMConfig()
    geometry: GeometryConfig = GeometryConfig()

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
            from trainer.methods.registry import method_class

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
        }

    def method_kwargs(self) -> dict[str, Any]:
        common = {
            "backbone": self.backbone,
            "layers": tuple(self.layers) if self.layers else None,
            "backbone_weights": self.backbone_weights,
            "input_hw": tuple(self.image_size),
            "sigma": self.sigma,
            "quantile": self.quantile,
            "seed": self.seed,
            "progress": self.progress,
        }
        extra = getattr(self, self.method, None)
        return {**common, **(extra.model_dump() if isinstance(extra, BaseModel) else {})}


def load_config(path: Path | None = None, **overrides: Any) -> TrainConfig:
    """File, then environment, then explicit overrides (the CLI flags that were given; None = not given)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return load_settings(TrainConfig, component="trainer", path=path, overrides=given)


def config_from_values(values: dict[str, Any]) -> TrainConfig:
    """Validate exactly these values, ignoring the environment (CLI flags and saved runs win)."""
    return TrainConfig(_env_prefix="LINEWATCH_TRAIN_IGNORED_", **values)
