"""EfficientAD's scoring module: teacher, student and autoencoder -> one normalised anomaly map.

The forward is the exported graph:

    local  = mean_c (teacher - student[:C])^2          structural anomalies (33 px patches)
    global = mean_c (autoencoder - student[C:])^2      logical anomalies (whole-image context)
    each   zero-padded to the input/4 grid (the border the unpadded PDN cannot see),
        -> 0.1 * (map - q_a) / (q_b - q_a)             quantiles of held-out good maps
    raw    = 0.5 * local + 0.5 * global, upsampled to the input, smoothed

Padding the raw distances with 0 (perfect agreement) rather than the normalised map
(as the reference code does) keeps the unseen border at the lowest score: a
normalised 0 is the 90% good quantile, above most good pixels, which at small inputs
would make the border look more anomalous than the part.

`quantiles` (q_a, q_b for each map) are a data input like the calibration, so a
recalibration on new good images is a data-only refresh; the network weights are
constants of the graph.
"""

from __future__ import annotations

import torch
from torch import nn

from linewatch.trainer.methods.efficientad.networks import AutoEncoder, pdn, pdn_output_hw
from linewatch.trainer.methods.layers import FrameInput, MapHead, single_slot_outputs

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def zero_border(x: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    """`F.pad(x, pad)` of a (B, h, w) map, written as concatenations with zeros.

    Why not `F.pad`: the exporter traces at opset 18 and converts down to 17 for
    TensorRT 8.6, and ONNX's version converter has no Pad 18 -> 17 adapter.
    """
    left, right, top, bottom = pad
    zero = torch.zeros_like(x[:, :1, :1])  # (B, 1, 1), follows the batch
    h = x.shape[1]
    x = torch.cat([p for p in (zero.expand(-1, h, left), x, zero.expand(-1, h, right)) if p.shape[2]], dim=2)
    w = x.shape[2]
    return torch.cat(
        [p for p in (zero.expand(-1, top, w), x, zero.expand(-1, bottom, w)) if p.shape[1]], dim=1
    )


class EfficientADModel(nn.Module):
    def __init__(
        self,
        size: str = "s",
        out_channels: int = 384,
        width: float = 1.0,
        input_hw: tuple[int, int] = (256, 256),
        sigma: float = 4.0,
        padding: bool = False,
    ):
        super().__init__()
        self.out_channels = out_channels
        self.input = FrameInput(IMAGENET_MEAN, IMAGENET_STD)
        self.teacher = pdn(size, out_channels, width, padding)
        self.student = pdn(size, 2 * out_channels, width, padding)
        self.grid_hw = pdn_output_hw(input_hw, padding)
        self.autoencoder = AutoEncoder(input_hw, self.grid_hw, out_channels, width=width)
        self.register_buffer("teacher_mean", torch.zeros(1, out_channels, 1, 1))
        self.register_buffer("teacher_std", torch.ones(1, out_channels, 1, 1))
        h, w = (int(s) for s in input_hw)
        ph, pw = h // 4 - self.grid_hw[0], w // 4 - self.grid_hw[1]
        self.pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)  # left, right, top, bottom
        self.head = MapHead(input_hw, sigma)
        self.teacher.requires_grad_(False)

    def train(self, mode: bool = True) -> EfficientADModel:
        super().train(mode)
        self.teacher.eval()  # the teacher is fixed: distilled once, never trained here
        return self

    def normalise_float(self, x: torch.Tensor) -> torch.Tensor:
        """Float NCHW in [0, 255] (e.g. an augmented batch) -> the network's input scale."""
        return x * self.input.scale - self.input.shift

    def teacher_features(self, x: torch.Tensor) -> torch.Tensor:
        return (self.teacher(x) - self.teacher_mean) / self.teacher_std

    def grid_maps(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(local, global) raw maps on the PDN grid, (B, h, w) each."""
        x = self.input(frames)
        t = self.teacher_features(x)
        s = self.student(x)
        a = self.autoencoder(x)
        c = self.out_channels
        local = ((t - s[:, :c]) ** 2).mean(dim=1)
        glob = ((a - s[:, c:]) ** 2).mean(dim=1)
        return local, glob

    def raw_map(self, frames: torch.Tensor, quantiles: torch.Tensor) -> torch.Tensor:
        local, glob = self.grid_maps(frames)
        if any(self.pad):
            local, glob = zero_border(local, self.pad), zero_border(glob, self.pad)
        local = 0.1 * (local - quantiles[0]) / (quantiles[1] - quantiles[0])
        glob = 0.1 * (glob - quantiles[2]) / (quantiles[3] - quantiles[2])
        return self.head(0.5 * local + 0.5 * glob)

    def forward(self, frames, quantiles, center, scale):
        raw = self.raw_map(frames, quantiles)
        return single_slot_outputs(raw, center, scale)
