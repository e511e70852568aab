"""DRAEM's networks (Zavrtanik et al., ICCV 2021): a reconstructive and a discriminative sub-network.

- Reconstructive: an encoder-decoder (5 levels of two 3x3 conv-BN-ReLU, 4 max-pools, widths
  w, 2w, 4w, 8w, 8w; bilinear upsampling back) that is trained to turn an image with a synthetic
  anomaly into the anomaly-free original.
- Discriminative: a U-Net with skip connections (6 levels, widths v, 2v, 4v, 8v, 8v, 8v) on the
  concatenation of the input and its reconstruction; 2 output channels (normal, anomalous).

The paper's widths are w = 128 and v = 64 (125M parameters in this implementation); `DRAEMConfig` defaults are far
smaller so the pair trains on a 2-core CPU (see its docstring).

Scoring, in the graph: softmax over the two channels -> the anomaly channel -> a stride-1 average
pool (21 px at 256 px, scaled with the input, as the paper's image score uses) -> raw map. The
image score is the max of that map after normalisation, so it is the paper's "max of the
average-pooled mask". Upsampling goes to each skip's size, so any input size works, and every op
(Conv, BatchNormalization, MaxPool, Resize, Softmax, AveragePool) is in TensorRT's ONNX list.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from linewatch.trainer.methods.layers import FrameInput, single_slot_outputs


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=True)


class _UpConv(nn.Module):
    """Bilinear x2 (to the skip's size) then conv-BN-ReLU, as the reference decoder's `up` blocks."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
        )

    def forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self.conv(_up(x, like))


class ReconstructiveNet(nn.Module):
    """Encoder-decoder without skips (the reference's ReconstructiveSubNetwork), width `w`."""

    def __init__(self, w: int):
        super().__init__()
        widths = [w, 2 * w, 4 * w, 8 * w, 8 * w]
        self.enc = nn.ModuleList()
        cin = 3
        for c in widths:
            self.enc.append(_block(cin, c))
            cin = c
        dec = [8 * w, 4 * w, 2 * w, w]
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        cin = widths[-1]
        for c in dec:
            self.up.append(_UpConv(cin, cin))
            self.dec.append(_block(cin, c))
            cin = c
        self.out = nn.Conv2d(w, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = []
        for i, block in enumerate(self.enc):
            if i:
                sizes.append(x)
                x = F.max_pool2d(x, 2)
            x = block(x)
        for up, block, like in zip(self.up, self.dec, reversed(sizes), strict=True):
            x = block(up(x, like))
        return self.out(x)


class DiscriminativeNet(nn.Module):
    """U-Net with skip connections (the reference's DiscriminativeSubNetwork), width `v`, 2 logits."""

    def __init__(self, v: int, cin: int = 6):
        super().__init__()
        widths = [v, 2 * v, 4 * v, 8 * v, 8 * v, 8 * v]
        self.enc = nn.ModuleList()
        c = cin
        for w in widths:
            self.enc.append(_block(c, w))
            c = w
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for skip in reversed(widths[:-1]):
            self.up.append(_UpConv(c, skip))
            self.dec.append(_block(2 * skip, skip))
            c = skip
        self.out = nn.Conv2d(v, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.enc):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        x = skips.pop()
        for up, block in zip(self.up, self.dec, strict=True):
            skip = skips.pop()
            x = block(torch.cat([up(x, skip), skip], dim=1))
        return self.out(x)


def pool_kernel(input_hw: tuple[int, int]) -> int:
    """The paper's 21 px average pool at 256 px, scaled with the input; odd, at least 3."""
    k = round(21 * min(input_hw) / 256)
    return max(3, k + (k + 1) % 2)


class DRAEMModel(nn.Module):
    def __init__(self, input_hw: tuple[int, int], recon_width: int, disc_width: int):
        super().__init__()
        self.input = FrameInput((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # the paper's images are in [0, 1]
        self.reconstructive = ReconstructiveNet(recon_width)
        self.discriminative = DiscriminativeNet(disc_width)
        self.kernel = pool_kernel(input_hw)

    def outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float NCHW in [0, 1] -> (reconstruction, 2-channel mask logits)."""
        rec = self.reconstructive(x)
        return rec, self.discriminative(torch.cat([rec, x], dim=1))

    def anomaly_probability(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> (B, H, W) softmax probability of the anomalous channel (the paper's pixel map)."""
        _, logits = self.outputs(self.input(frames))
        return torch.softmax(logits, dim=1)[:, 1]

    def raw_map(self, frames: torch.Tensor) -> torch.Tensor:
        prob = self.anomaly_probability(frames).unsqueeze(1)
        return F.avg_pool2d(prob, self.kernel, stride=1, padding=self.kernel // 2).squeeze(1)

    def forward(self, frames, center, scale):
        raw = self.raw_map(frames)
        return single_slot_outputs(raw, center, scale)


def focal_loss(logits: torch.Tensor, mask: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """The paper's focal loss on the softmax of the 2-channel output; `mask` is (B, H, W) in {0, 1}."""
    logp = torch.log_softmax(logits, dim=1)
    target = mask.long().unsqueeze(1)
    logp_t = logp.gather(1, target).squeeze(1)
    p_t = logp_t.exp()
    return (-((1.0 - p_t) ** gamma) * logp_t).mean()


def _gauss_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, size, size)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11) -> torch.Tensor:
    """Mean SSIM of two NCHW batches in [0, 1] (Gaussian window 11, sigma 1.5, as the reference)."""
    c = a.shape[1]
    w = _gauss_window(window).to(a).expand(c, 1, window, window)
    pad = window // 2

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w, padding=pad, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean()


def draem_loss(
    rec: torch.Tensor, clean: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """L2 + SSIM loss of the reconstruction against the clean image, plus focal loss of the mask."""
    l2 = F.mse_loss(rec, clean)
    ssim_loss = 1.0 - ssim(rec, clean)
    focal = focal_loss(logits, mask)
    loss = l2 + ssim_loss + focal
    return loss, {"l2": float(l2.detach()), "ssim": float(ssim_loss.detach()), "focal": float(focal.detach())}
