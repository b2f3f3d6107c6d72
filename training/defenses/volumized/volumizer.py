"""Paper 004's volumizer: an image becomes a volume of its slices, ranked by a metric.

An H x W x C image is cut into Z = (H / p_h) * (W / p_w) non-overlapping p_h x p_w slices
(row-major grid order), each slice is scored by a metric (`metrics` beside this module), and
the slices are stacked along depth in ascending or descending score order:
N x C x H x W -> N x C x Z x p_h x p_w. No pixel is changed, dropped or repeated: the volume
is a permutation of the image's pixels, and `unvolumize(volume, order)` restores the image
exactly.

Distance metrics compare each slice with a reference slice: the most salient one by default
(the slice with the largest gradient energy sum |dx| + |dy|, first one on ties), or a fixed
grid index. The ranking runs inside the module (and inside its ONNX graph): the order is
computed from detached pixels, the gather keeps gradients to the pixels.

`ranking` chooses whose metric orders the slices: 'image' (paper 004, the default: each
image's own), 'fixed' (one order for all images, from training-set statistics: `fixed_order`,
see `ordering.fixed_order_from`; empty means grid order) or 'robust' (each image's, scored on
its 3 x 3 median-filtered version and quantized to `quantum`; see `ordering`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from training.defenses.volumized.metrics import KEY_SCALE, METRICS, STANDALONE, metric_values, sort_key
from training.defenses.volumized.ordering import median3, quantized

RANKINGS = ("image", "fixed", "robust")


@dataclass(frozen=True)
class VolumizerConfig:
    """Args:
        slice_h, slice_w: slice size p_h x p_w (7 x 7 -> Z = 16 on 28 x 28).
        metric: one of `volumizer_metrics.METRICS` (entropy is standalone; the rest compare
            with the reference slice).
        order: 'ascending' | 'descending'.
        reference: 'salient' (most salient slice) or a grid index as a string ('0', '5').
        bins: histogram bins for entropy, mutual information, KL, joint entropy.
        ranking: 'image' (paper 004) | 'fixed' | 'robust' (see the module docstring).
        fixed_order: the grid order used by ranking='fixed' (a permutation of range(Z)).
        quantum: score quantization step of ranking='robust' (metric units, nats for MI).
    """

    slice_h: int = 7
    slice_w: int = 7
    metric: str = "mi"
    order: str = "ascending"
    reference: str = "salient"
    bins: int = 16
    ranking: str = "image"
    fixed_order: tuple[int, ...] = ()
    quantum: float = 0.05

    def __post_init__(self) -> None:
        object.__setattr__(self, "fixed_order", tuple(int(v) for v in self.fixed_order))
        if self.ranking not in RANKINGS:
            raise ValueError(f"unknown ranking {self.ranking!r}; known: {', '.join(RANKINGS)}")
        if self.fixed_order and sorted(self.fixed_order) != list(range(len(self.fixed_order))):
            raise ValueError(f"fixed_order must be a permutation of 0..Z-1, got {self.fixed_order}")
        if self.quantum <= 0:
            raise ValueError(f"quantum must be > 0, got {self.quantum}")
        if self.slice_h < 1 or self.slice_w < 1:
            raise ValueError(f"slice size must be positive, got {self.slice_h} x {self.slice_w}")
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; known: {', '.join(METRICS)}")
        if self.order not in ("ascending", "descending"):
            raise ValueError(f"order must be 'ascending' or 'descending', got {self.order!r}")
        if self.reference != "salient" and not self.reference.isdigit():
            raise ValueError(f"reference must be 'salient' or a slice index, got {self.reference!r}")
        if self.bins < 2:
            raise ValueError(f"bins must be >= 2, got {self.bins}")

    def to_dict(self) -> dict:
        return asdict(self)


def slice_grid(x: torch.Tensor, slice_h: int, slice_w: int) -> torch.Tensor:
    """N x C x H x W -> N x C x Z x p_h x p_w in row-major grid order (no ranking)."""
    n, c, h, w = x.shape
    if h % slice_h or w % slice_w:
        raise ValueError(f"image {h} x {w} is not divisible into {slice_h} x {slice_w} slices")
    gh, gw = h // slice_h, w // slice_w
    grid = x.reshape(n, c, gh, slice_h, gw, slice_w).permute(0, 1, 2, 4, 3, 5)
    return grid.reshape(n, c, gh * gw, slice_h, slice_w)


def unslice_grid(slices: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of `slice_grid`: N x C x Z x p_h x p_w (grid order) -> N x C x H x W."""
    n, c, _, ph, pw = slices.shape
    gh, gw = height // ph, width // pw
    return slices.reshape(n, c, gh, gw, ph, pw).permute(0, 1, 2, 4, 3, 5).reshape(n, c, height, width)


def saliency(x: torch.Tensor, slice_h: int, slice_w: int) -> torch.Tensor:
    """Gradient energy per slice, N x Z (float64): sum over the slice of |dx| + |dy|."""
    x = x.double()
    dx = torch.zeros_like(x)
    dy = torch.zeros_like(x)
    dx[..., :, 1:] = (x[..., :, 1:] - x[..., :, :-1]).abs()
    dy[..., 1:, :] = (x[..., 1:, :] - x[..., :-1, :]).abs()
    energy = slice_grid(dx + dy, slice_h, slice_w)
    return energy.sum(dim=(1, 3, 4))


class Volumizer(nn.Module):
    """V(x): N x C x H x W in [0, 1] -> N x C x Z x p_h x p_w, slices ranked by a metric.

    Example: `volume = Volumizer(VolumizerConfig(7, 7, "entropy"))(images)`  # N x 1 x 16 x 7 x 7
    """

    def __init__(self, config: VolumizerConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else VolumizerConfig()

    def depth(self, height: int, width: int) -> int:
        return (height // self.config.slice_h) * (width // self.config.slice_w)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """The ranking key of every slice, N x Z (float64), grid order: the metric of the image
        ('image'), or of its median-filtered version, quantized ('robust')."""
        if self.config.ranking == "robust":
            return quantized(self.per_image_scores(median3(x.detach())), self.config.quantum)
        return self.per_image_scores(x)

    def per_image_scores(self, x: torch.Tensor) -> torch.Tensor:
        """The metric of every slice of each image, N x Z (float64), grid order."""
        cfg = self.config
        slices = slice_grid(x.detach(), cfg.slice_h, cfg.slice_w)
        rows = slices.permute(0, 2, 1, 3, 4).flatten(2)  # N x Z x P
        if cfg.metric in STANDALONE:
            return metric_values(cfg.metric, rows, bins=cfg.bins)
        if cfg.reference == "salient":
            energy = torch.round(saliency(x.detach(), cfg.slice_h, cfg.slice_w) * KEY_SCALE)
            ref_index = energy.argmax(dim=1)
        else:
            ref_index = torch.full((len(x),), int(cfg.reference), dtype=torch.long, device=x.device)
            if int(cfg.reference) >= rows.shape[1]:
                raise ValueError(f"reference slice {cfg.reference} >= depth {rows.shape[1]}")
        ref = torch.gather(rows, 1, ref_index.view(-1, 1, 1).expand(-1, 1, rows.shape[2]))
        return metric_values(cfg.metric, rows, ref, bins=cfg.bins)

    def order(self, x: torch.Tensor) -> torch.Tensor:
        """N x Z grid indices: depth k of the volume holds grid slice order[:, k]."""
        if self.config.ranking == "fixed":
            fixed = self.fixed_index(x)
            return fixed.expand(x.shape[0], len(fixed))
        with torch.no_grad():
            keys = sort_key(self.scores(x), descending=self.config.order == "descending")
            return torch.argsort(keys, dim=1)

    def fixed_index(self, x: torch.Tensor) -> torch.Tensor:
        """The fixed ranking's grid order (Z,), checked against the image's depth."""
        z = self.depth(*x.shape[-2:])
        fixed = self.config.fixed_order or tuple(range(z))
        if len(fixed) != z:
            raise ValueError(f"fixed_order has {len(fixed)} entries, the image has {z} slices")
        return torch.tensor(fixed, dtype=torch.long, device=x.device)

    def apply_order(self, x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        slices = slice_grid(x, self.config.slice_h, self.config.slice_w)
        n, c, z, ph, pw = slices.shape
        index = order.view(n, 1, z, 1, 1).expand(n, c, z, ph, pw)
        return torch.gather(slices, 2, index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.ranking == "fixed":  # one constant gather (no batch-sized index in the graph)
            return slice_grid(x, self.config.slice_h, self.config.slice_w).index_select(2, self.fixed_index(x))
        return self.apply_order(x, self.order(x))

    def unvolumize(self, volume: torch.Tensor, order: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Put every slice back at its grid position: the exact inverse of `apply_order`."""
        n, c, z, ph, pw = volume.shape
        index = order.view(n, 1, z, 1, 1).expand(n, c, z, ph, pw)
        slices = torch.empty_like(volume).scatter(2, index, volume)
        return unslice_grid(slices, height, width)

    def pixel_permutation(self, x: torch.Tensor) -> torch.Tensor:
        """N x (C*H*W) flat pixel indices: volume.flatten(1) == x.flatten(1).gather(1, perm)."""
        n, c, h, w = x.shape
        positions = torch.arange(c * h * w, dtype=torch.float64, device=x.device).view(1, c, h, w).expand(n, c, h, w)
        return self.apply_order(positions, self.order(x)).flatten(1).long()
