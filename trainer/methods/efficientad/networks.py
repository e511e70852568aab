"""EfficientAD's networks as published (Batzner et al., WACV 2024): PDN S and M, and the autoencoder.

The patch description network (PDN) has no padding, so each output vector depends on
exactly one 33x33 input patch; that locality is what makes the student-teacher
discrepancy a *local* anomaly signal, and the autoencoder the *logical* (global) one.

`width` scales the hidden channels (1.0 is the published network) of the PDNs and the
autoencoder (never its 64-channel bottleneck). It exists so that tests and small CPU
boxes can train in seconds; the defaults are the paper's.
"""

from __future__ import annotations

import torch
from torch import nn

PDN_SIZES = ("s", "m")


def _c(channels: int, width: float) -> int:
    return max(8, round(channels * width))


def pdn_small(out_channels: int = 384, width: float = 1.0, padding: bool = False) -> nn.Sequential:
    """PDN-S: 4 convolutions (128, 256, 256, out), two 2x2 average pools."""
    c1, c2 = _c(128, width), _c(256, width)
    p = 1 if padding else 0
    return nn.Sequential(
        nn.Conv2d(3, c1, 4, padding=3 * p),
        nn.ReLU(inplace=True),
        nn.AvgPool2d(2, 2, padding=p),
        nn.Conv2d(c1, c2, 4, padding=3 * p),
        nn.ReLU(inplace=True),
        nn.AvgPool2d(2, 2, padding=p),
        nn.Conv2d(c2, c2, 3, padding=p),
        nn.ReLU(inplace=True),
        nn.Conv2d(c2, out_channels, 4),
    )


def pdn_medium(out_channels: int = 384, width: float = 1.0, padding: bool = False) -> nn.Sequential:
    """PDN-M: 6 convolutions (256, 512, 512, 512, out, out), two 2x2 average pools."""
    c1, c2 = _c(256, width), _c(512, width)
    p = 1 if padding else 0
    return nn.Sequential(
        nn.Conv2d(3, c1, 4, padding=3 * p),
        nn.ReLU(inplace=True),
        nn.AvgPool2d(2, 2, padding=p),
        nn.Conv2d(c1, c2, 4, padding=3 * p),
        nn.ReLU(inplace=True),
        nn.AvgPool2d(2, 2, padding=p),
        nn.Conv2d(c2, c2, 1),
        nn.ReLU(inplace=True),
        nn.Conv2d(c2, c2, 3, padding=p),
        nn.ReLU(inplace=True),
        nn.Conv2d(c2, out_channels, 4),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 1),
    )


def pdn(size: str, out_channels: int = 384, width: float = 1.0, padding: bool = False) -> nn.Sequential:
    """`padding=False` is the published network; `True` (the reference code's option) keeps the
    image border in the map (output = input/4), which matters for small inputs: at 64 px the
    unpadded PDN sees only the central 32 px."""
    if size not in PDN_SIZES:
        raise ValueError(f"PDN size must be one of {PDN_SIZES}, got {size!r}")
    return (pdn_small if size == "s" else pdn_medium)(out_channels, width, padding)


def pdn_output_hw(input_hw: tuple[int, int], padding: bool = False) -> tuple[int, int]:
    """Output grid of either PDN (both have the same geometry): 256 -> 56 (64 padded), 64 -> 8 (16)."""

    def one(s: int) -> int:
        if padding:
            return ((s + 3) // 2 + 1 + 3) // 2 + 1 - 3
        return ((s - 3) // 2 - 3) // 2 - 5

    h, w = (one(int(s)) for s in input_hw)
    if h < 1 or w < 1:
        raise ValueError(f"input {input_hw} is too small for a PDN (needs at least 40 px)")
    return h, w


def _enc_size(s: int) -> int:
    for _ in range(5):
        s = (s + 2 - 4) // 2 + 1
    return s


class AutoEncoder(nn.Module):
    """The published autoencoder: 6 strided convs to a 64-channel 1x1 bottleneck, 8 upsampling convs back.

    `width` scales the hidden channels (32 and 64 at 1.0) but never the bottleneck.

    The decoder's intermediate sizes are the paper's (3, 8, 15, 32, 63, 127 for a 256 input)
    scaled to the input size, and the last upsample lands on the PDN's output grid.
    """

    def __init__(
        self,
        input_hw: tuple[int, int],
        output_hw: tuple[int, int],
        out_channels: int = 384,
        bottleneck: int = 64,
        width: float = 1.0,
    ):
        super().__init__()
        c32, c64 = _c(32, width), _c(64, width)
        h, w = (int(s) for s in input_hw)
        eh, ew = _enc_size(h), _enc_size(w)
        if eh < 1 or ew < 1:
            raise ValueError(f"input {input_hw} is too small for the autoencoder (needs at least 32 px)")
        act = nn.ReLU
        self.encoder = nn.Sequential(
            nn.Conv2d(3, c32, 4, stride=2, padding=1),
            act(inplace=True),
            nn.Conv2d(c32, c32, 4, stride=2, padding=1),
            act(inplace=True),
            nn.Conv2d(c32, c64, 4, stride=2, padding=1),
            act(inplace=True),
            nn.Conv2d(c64, c64, 4, stride=2, padding=1),
            act(inplace=True),
            nn.Conv2d(c64, c64, 4, stride=2, padding=1),
            act(inplace=True),
            nn.Conv2d(c64, bottleneck, (eh, ew)),
        )
        layers: list[nn.Module] = []
        cin = bottleneck
        for ref in (3, 8, 15, 32, 63, 127):
            size = (max(1, round(ref * h / 256)), max(1, round(ref * w / 256)))
            layers += [
                nn.Upsample(size=size, mode="bilinear", align_corners=False),
                nn.Conv2d(cin, c64, 4, stride=1, padding=2),
                act(inplace=True),
                nn.Dropout(0.2),
            ]
            cin = c64
        layers += [
            nn.Upsample(size=tuple(output_hw), mode="bilinear", align_corners=False),
            nn.Conv2d(c64, c64, 3, stride=1, padding=1),
            act(inplace=True),
            nn.Conv2d(c64, out_channels, 3, stride=1, padding=1),
        ]
        self.decoder = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))
