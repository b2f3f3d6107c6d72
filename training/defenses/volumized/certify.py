"""Certified accuracy of a slice-vote model against square patches and N-pixel changes.

When the slices are independent until the vote (`VolumetricNet.slices_independent`: depth
kernel 1, an order no input moves) and the aggregation is a majority vote, a perturbation
confined to k slices changes at most k votes; each changed vote can take one from the true
class and give one to a rival. So an image is certified against every perturbation that
touches at most k slices when

    votes[y] - max_{c != y} votes[c] > 2 k

(strict: a tie after the attack could go either way). Then the prediction is y whatever the
perturbation's pixel values. Slices that abstain (top probability below the model's `abstain`)
keep the bound: a touched slice that starts voting adds at most one rival vote. A square patch of side s touches at most `slices_touched(s)`
slices (the worst placement, counted exactly over every placement); N changed pixels touch at
most N. Certified accuracy is the share of images certified (certified implies correct).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from training.defenses.volumized.aggregate import vote_counts


def slices_touched(height: int, width: int, slice_h: int, slice_w: int, side: int) -> int:
    """Most slices a side x side square can overlap, over every placement inside the image."""
    if not 1 <= side <= min(height, width):
        raise ValueError(f"patch side must be in 1..{min(height, width)}, got {side}")
    rows = max((top + side - 1) // slice_h - top // slice_h + 1 for top in range(height - side + 1))
    cols = max((left + side - 1) // slice_w - left // slice_w + 1 for left in range(width - side + 1))
    return rows * cols


def vote_margin(counts: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """votes[y] - the largest rival's votes, per image (N,)."""
    true = counts.gather(1, y[:, None]).squeeze(1)
    rivals = counts.scatter(1, y[:, None], float("-inf"))
    return true - rivals.max(dim=1).values


def certified(counts: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """Bool (N,): the vote for y survives any change to k slices' votes."""
    return vote_margin(counts, y) > 2 * k


@torch.no_grad()
def margins(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Vote margins of `model` (slices independent) on x, y."""
    if not model.slices_independent:
        raise ValueError("a vote certificate needs independent slices (depth_kernel=1, fixed order "
                         "or no position vectors)")
    model.eval()
    parts = [vote_margin(vote_counts(model.slice_logits(x[i:i + batch_size]), model.abstain), y[i:i + batch_size])
             for i in range(0, len(x), batch_size)]
    return torch.cat(parts)


def certified_curve(model, x: torch.Tensor, y: torch.Tensor, sides: list[int] | None = None) -> dict:
    """{'patch': {side: {area, slices, certified}}, 'pixels': {N: certified}} for model on x, y."""
    h, w = x.shape[-2:]
    cfg = model.volumizer.config
    m = margins(model, x, y)
    sides = sides or list(range(1, min(h, w) + 1))
    patch = {}
    for side in sides:
        k = slices_touched(h, w, cfg.slice_h, cfg.slice_w, side)
        patch[side] = {"area": side * side / (h * w), "slices": k, "certified": float((m > 2 * k).float().mean())}
    pixels = {n: float((m > 2 * n).float().mean()) for n in (1, 3, 5)}
    return {"n": len(x), "patch": patch, "pixels": pixels, "vote_accuracy": float((m > 0).float().mean())}


def plot_curve(curves: dict[str, dict], path: Path) -> Path:
    """Certified accuracy (%) against patch area (%), one line per model; a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, curve in curves.items():
        sides = sorted(curve["patch"], key=int)
        ax.plot([100 * curve["patch"][s]["area"] for s in sides],
                [100 * curve["patch"][s]["certified"] for s in sides], marker="o", markersize=3, label=label)
    ax.axvspan(5, 25, color="grey", alpha=0.1, label="attacked patch areas (5-25%)")
    ax.set_xlabel("square patch area (% of the image)")
    ax.set_ylabel("certified accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(0, max(30, math.ceil(max(100 * c["patch"][max(c["patch"], key=int)]["area"]
                                          for c in curves.values()))))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
