"""Slice orders that a few changed pixels cannot flip (issue 17; paper 004 ranks per image).

Paper 004 ranks the slices of *each* image by a metric, so one changed pixel can re-order
whole slices (measured: 43% of Fashion-MNIST test images under one random pixel). Two
alternatives, chosen by `VolumizerConfig.ranking`:

- 'fixed': one order for every image, the ranking of the *training set's mean* metric per
  grid position (`fixed_order_from`). No input can change it.
- 'robust': per image, but scored on a 3 x 3 median-filtered image (`median3`: one pixel
  cannot change a median of 9 by more than the gap between its neighbours) with scores
  quantized to `quantum` before ranking, ties broken by grid index. A bounded change swaps
  two slices only when their scores sit near a quantization boundary.

Both run inside the model (and its ONNX graph): `median3` is 9 shifted copies and a sort.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from training.defenses.volumized.metrics import sort_key


def median3(x: torch.Tensor) -> torch.Tensor:
    """3 x 3 median filter of N x C x H x W (edges replicated), same shape."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    shifted = [padded[..., dr:dr + h, dc:dc + w] for dr in range(3) for dc in range(3)]
    return torch.stack(shifted, dim=-1).sort(dim=-1).values[..., 4]


def fixed_order_from(images: torch.Tensor, volumizer, batch_size: int = 1024) -> tuple[int, ...]:
    """The grid order of the mean per-slice score over `images` (N x C x H x W), ascending or
    descending as `volumizer.config.order` says, ties in grid order.

    `volumizer` is a `Volumizer` whose `scores` define the metric (its ranking is ignored).
    Example: `order = fixed_order_from(train.x[:5000], Volumizer(VolumizerConfig(metric="mi")))`
    """
    total = None
    for start in range(0, len(images), batch_size):
        part = volumizer.per_image_scores(images[start:start + batch_size]).sum(dim=0)
        total = part if total is None else total + part
    if total is None:
        raise ValueError("fixed_order_from needs at least one image")
    mean = total / len(images)
    keys = sort_key(mean, descending=volumizer.config.order == "descending")
    return tuple(int(v) for v in torch.argsort(keys))


def quantized(scores: torch.Tensor, quantum: float) -> torch.Tensor:
    """Scores rounded to multiples of `quantum` (the robust ranking's key before tie-breaks)."""
    return torch.round(scores / quantum) * quantum


def order_flips(volumizer, x: torch.Tensor, trials: int = 20, seed: int = 0) -> dict:
    """Share of (image, random one-pixel change) pairs whose slice order changes, and the mean
    number of depth positions that move (random place, random value; seeded)."""
    gen = torch.Generator().manual_seed(seed)
    base = volumizer.order(x)
    n, _, h, w = x.shape
    changed = moved = 0
    for _ in range(trials):
        x_adv = x.clone()
        rows, cols = torch.randint(0, h, (n,), generator=gen), torch.randint(0, w, (n,), generator=gen)
        x_adv[torch.arange(n), :, rows, cols] = torch.rand(n, x.shape[1], generator=gen)
        diff = volumizer.order(x_adv) != base
        changed += int(diff.any(dim=1).sum())
        moved += int(diff.sum())
    return {"trials": trials * n, "reordered_share": changed / (trials * n),
            "mean_positions_moved": moved / (trials * n), "depth": base.shape[1]}
