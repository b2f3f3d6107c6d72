"""Occlusion augmentation: training that sees the localized threat (no adversarial training).

Each training image, with probability `prob`, gets either (half and half, `patch_share`)
- 1..`max_pixels` pixels at random places set to random values (the N-pixel threat), or
- a random square at a random place, covering `min_area`..`max_area` of the image, filled with
  uniform noise (the patch threat).
Random, not adversarial: it teaches the slice classifiers that a slice may be garbage, which is
what the aggregation then has to outvote. Uses the global torch RNG unless a generator is given.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class OcclusionConfig:
    """Args: prob=0.5 (share of images occluded), max_pixels=5, min_area=0.05, max_area=0.25,
    patch_share=0.5 (share of the occluded images that get a square rather than pixels)."""

    prob: float = 0.5
    max_pixels: int = 5
    min_area: float = 0.05
    max_area: float = 0.25
    patch_share: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.prob <= 1 or not 0 <= self.patch_share <= 1:
            raise ValueError(f"prob and patch_share must be in [0, 1], got {self.prob}, {self.patch_share}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {self.max_pixels}")
        if not 0 < self.min_area <= self.max_area <= 1:
            raise ValueError(f"need 0 < min_area <= max_area <= 1, got {self.min_area}, {self.max_area}")


def occlude(x: torch.Tensor, config: OcclusionConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """A copy of x (N, C, H, W) in [0, 1] with random pixel or square occlusions."""
    n, c, h, w = x.shape
    dev = x.device
    rand = lambda *shape: torch.rand(*shape, generator=generator, device=dev)  # noqa: E731
    hit = rand(n) < config.prob
    square = hit & (rand(n) < config.patch_share)
    pixels = hit & ~square
    out = x.clone()
    # pixels: image i gets count[i] in 1..max_pixels random pixels
    count = (rand(n) * config.max_pixels).long().clamp(max=config.max_pixels - 1) + 1
    for k in range(config.max_pixels):
        who = (pixels & (count > k)).nonzero().squeeze(1)
        if len(who):
            rows = (rand(len(who)) * h).long().clamp(max=h - 1)
            cols = (rand(len(who)) * w).long().clamp(max=w - 1)
            out[who, :, rows, cols] = rand(len(who), c).to(x.dtype)
    # squares: side from an area drawn uniformly in [min_area, max_area]
    area = config.min_area + (config.max_area - config.min_area) * rand(n)
    side = torch.sqrt(area * h * w).round().long().clamp(1, min(h, w))
    top = (rand(n) * (h - side + 1).float()).long()
    left = (rand(n) * (w - side + 1).float()).long()
    r = torch.arange(h, device=dev).view(1, h, 1)
    q = torch.arange(w, device=dev).view(1, 1, w)
    inside = ((r >= top.view(-1, 1, 1)) & (r < (top + side).view(-1, 1, 1))
              & (q >= left.view(-1, 1, 1)) & (q < (left + side).view(-1, 1, 1)) & square.view(-1, 1, 1))
    noise = rand(n, c, h, w).to(x.dtype)
    return torch.where(inside.unsqueeze(1), noise, out)

