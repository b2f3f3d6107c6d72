"""Universal adversarial patch (Brown et al., 2017), trained with random placement (EOT)."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from training.attacks._base import Attack, AttackConfig, eval_mode
from training.attacks._fusion import fused_eval_view
from training.attacks._losses import attack_loss

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PatchConfig(AttackConfig):
    scale: float = 0.1
    epochs: int = 5
    lr: float = 0.1
    batch_size: int = 128
    rotate: bool = True
    row: int = -1
    col: int = -1

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.05 <= self.scale <= 0.25:
            raise ValueError(f"scale (share of the image the patch covers) must be in [0.05, 0.25], "
                             f"got {self.scale}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"need epochs >= 1, batch_size >= 1, lr > 0; got {self.epochs}, "
                             f"{self.batch_size}, {self.lr}")
        if (self.row < 0) != (self.col < 0):
            raise ValueError(f"give both row and col (or neither, for random places), "
                             f"got {self.row}, {self.col}")


def patch_side(config: PatchConfig, height: int, width: int) -> int:
    """Side of the square patch covering `scale` of an H x W image."""
    return max(1, min(height, width, round(math.sqrt(config.scale * height * width))))


def place(x: torch.Tensor, patch: torch.Tensor, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """x (N, C, H, W) with `patch` (C, s, s) pasted at (top[i], left[i]); differentiable in patch."""
    s = patch.shape[-1]
    ar = torch.arange(s, device=x.device)
    rows = (top[:, None] + ar[None])[:, :, None]
    cols = (left[:, None] + ar[None])[:, None, :]
    idx = torch.arange(len(x), device=x.device)[:, None, None]
    out = x.clone()
    out[idx, :, rows, cols] = patch.permute(1, 2, 0).expand(len(x), s, s, patch.shape[0])
    return out


def save_png(patch: torch.Tensor, path: Path | str, upscale: int = 8) -> Path:
    """Write a (C, s, s) patch in [0, 1] as a PNG, each pixel an `upscale` x `upscale` block."""
    from PIL import Image

    arr = (patch.detach().cpu().clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    arr = arr.repeat(upscale, axis=1).repeat(upscale, axis=2)
    image = Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


class AdversarialPatch(Attack):
    r"""A universal square patch that, pasted anywhere, makes the model misclassify
    (or predict the target class).

    `fit(x, y)` trains one patch for the whole set: Adam on the patch pixels (kept in [0, 1]),
    each image of each batch getting the patch at a random place and, with `rotate`, a random
    rotation by a multiple of 90 degrees (expectation over transformation). The loss is
    ascended as for every attack: cross-entropy of the label (untargeted) or minus that of the
    target (targeted; `y` holds targets, usually one class). `fit` returns a new attack holding
    the patch; calling it pastes the patch at (`row`, `col`) or, when those are -1, at a random
    place per image (seeded). Only the patch's square changes.

    Args (PatchConfig): scale=0.1 (share of the image covered, 0.05..0.25), epochs=5,
        lr=0.1, batch_size=128, rotate=True, row=-1, col=-1, targeted=False, seed=0.
    Shape: x (N, C, H, W) in [0, 1]; y (N,); `patch` is (C, s, s).
    Example: `attack = AdversarialPatch(model, scale=0.1).fit(x_train, y_train); x_adv = attack(x, y)`
    """

    Config = PatchConfig
    name = "patch"

    def __init__(self, model: nn.Module, config: PatchConfig | None = None,
                 patch: torch.Tensor | None = None, **overrides) -> None:
        super().__init__(model, config, **overrides)
        self.patch = None if patch is None else patch.detach().clamp(0, 1)

    def _places(self, n: int, h: int, w: int, s: int, gen: torch.Generator,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.row >= 0:
            if self.config.row + s > h or self.config.col + s > w:
                raise ValueError(f"a {s}x{s} patch at ({self.config.row}, {self.config.col}) "
                                 f"leaves the {h}x{w} image")
            return (torch.full((n,), self.config.row, device=device),
                    torch.full((n,), self.config.col, device=device))
        return (torch.randint(0, h - s + 1, (n,), generator=gen, device=device),
                torch.randint(0, w - s + 1, (n,), generator=gen, device=device))

    def fit(self, x: torch.Tensor, y: torch.Tensor) -> "AdversarialPatch":
        """Train a patch on images x (N, C, H, W) and labels or targets y; returns the attack."""
        cfg = self.config
        c, h, w = x.shape[1:]
        s = patch_side(cfg, h, w)
        gen = self.generator(x.device)
        patch = torch.rand((c, s, s), generator=gen, device=x.device, dtype=x.dtype).requires_grad_(True)
        optimizer = torch.optim.Adam([patch], lr=cfg.lr)
        with eval_mode(self.model), torch.enable_grad():
            model = fused_eval_view(self.model)
            for epoch in range(cfg.epochs):
                order = torch.randperm(len(x), generator=gen, device=x.device)
                total = 0.0
                for batch in order.split(cfg.batch_size):
                    top, left = (torch.randint(0, n - s + 1, (len(batch),), generator=gen, device=x.device)
                                 for n in (h, w))
                    turns = int(torch.randint(0, 4, (1,), generator=gen)) if cfg.rotate else 0
                    shown = torch.rot90(patch, turns, dims=(1, 2))
                    logits = model(place(x[batch], shown, top, left))
                    loss = -attack_loss(logits, y[batch].to(x.device), "ce", cfg.targeted).mean()
                    (patch.grad,) = torch.autograd.grad(loss, patch)
                    optimizer.step()
                    with torch.no_grad():
                        patch.clamp_(0, 1)
                    total += loss.item() * len(batch)
                log.info("patch epoch %d/%d: loss %.4f", epoch + 1, cfg.epochs, total / len(x))
        return AdversarialPatch(self.model, cfg, patch=patch.detach())

    def with_place(self, row: int, col: int) -> "AdversarialPatch":
        """The same patch, pasted at (row, col) (-1, -1: random places)."""
        return AdversarialPatch(self.model, replace(self.config, row=row, col=col), patch=self.patch)

    def _perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.patch is None:
            raise ValueError("the patch is not trained: use AdversarialPatch(model).fit(x_train, y_train)")
        s = self.patch.shape[-1]
        top, left = self._places(len(x), x.shape[2], x.shape[3], s, self.generator(x.device), x.device)
        return place(x, self.patch.to(x.device, x.dtype), top, left)
