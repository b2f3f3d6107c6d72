"""Slice (and image) metrics of paper 004's Table 1, shared by the volumizer and the syllabus.

Every function takes pixel rows in [0, 1] and returns one float64 value per row:
`x` is ... x P (P pixels of a slice, channels included) and `ref` is ... x P or broadcastable.
They use only ops that ONNX exports (histograms are one-hot sums and a matmul, no scatter);
histogram counts are exact (float32 small integers) and every metric is computed in float64,
so that PyTorch and ONNX Runtime rank slices identically (see `sort_key`).

Definitions (the paper's formulas are garbled in places; these are the readings we chose):
- entropy: Shannon entropy (nats) of the `bins`-bin intensity histogram;
- joint_entropy: entropy of the 2D histogram of (slice pixel, reference pixel) pairs;
- mi: mutual information H(x) + H(ref) - JE(x, ref);
- kl: KL(p_x || p_ref) between Laplace-smoothed histograms ((count + 1) / (P + bins));
- ssim: single-window (global) SSIM with C1 = 0.01^2, C2 = 0.03^2 (data range 1);
- maxnorm: L-inf distance max |x - ref|;
- psnr: 10 log10(1 / (MSE + 1e-12)) (finite when the slices are equal);
- mse: mean squared difference.
"""
from __future__ import annotations

import torch

STANDALONE = ("entropy",)
DISTANCE = ("mi", "kl", "joint_entropy", "ssim", "maxnorm", "psnr", "mse")
METRICS = STANDALONE + DISTANCE
KEY_SCALE = 2.0 ** 20  # metrics are rounded to 2^-20 before ranking (ties -> lower index first)


def _histogram_onehot(x: torch.Tensor, bins: int) -> torch.Tensor:
    """... x P in [0, 1] -> ... x P x bins one-hot of the intensity bin.

    float32 is exact here (x * bins is an exact power-of-two scaling, counts are small
    integers), which keeps the histograms cheap; the entropies are taken in float64.
    """
    index = torch.clamp(torch.floor(x.float() * bins), 0, bins - 1)
    centers = torch.arange(bins, dtype=torch.float32, device=x.device)
    return (index.unsqueeze(-1) == centers).float()


def _entropy_of_counts(counts: torch.Tensor, total: float) -> torch.Tensor:
    p = counts.double() / total
    return -(p * torch.log(p + (p == 0).double())).sum(-1)


def entropy(x: torch.Tensor, bins: int = 16) -> torch.Tensor:
    counts = _histogram_onehot(x, bins).sum(-2)
    return _entropy_of_counts(counts, float(x.shape[-1]))


def _joint_counts(onehot_x: torch.Tensor, onehot_ref: torch.Tensor) -> torch.Tensor:
    """... x P x B one-hots (ref broadcastable) -> ... x B*B joint histogram counts."""
    return torch.matmul(onehot_x.transpose(-1, -2), onehot_ref).flatten(-2)


def joint_entropy(x: torch.Tensor, ref: torch.Tensor, bins: int = 16) -> torch.Tensor:
    joint = _joint_counts(_histogram_onehot(x, bins), _histogram_onehot(ref, bins))
    return _entropy_of_counts(joint, float(x.shape[-1]))


def mutual_information(x: torch.Tensor, ref: torch.Tensor, bins: int = 16) -> torch.Tensor:
    hx, hr = _histogram_onehot(x, bins), _histogram_onehot(ref, bins)
    total = float(x.shape[-1])
    joint = _entropy_of_counts(_joint_counts(hx, hr), total)
    return _entropy_of_counts(hx.sum(-2), total) + _entropy_of_counts(hr.sum(-2), total) - joint


def kl_divergence(x: torch.Tensor, ref: torch.Tensor, bins: int = 16) -> torch.Tensor:
    smooth = float(x.shape[-1] + bins)
    p = (_histogram_onehot(x, bins).sum(-2).double() + 1.0) / smooth
    q = (_histogram_onehot(ref, bins).sum(-2).double() + 1.0) / smooth
    return (p * torch.log(p / q)).sum(-1)


def ssim(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    x, ref = x.double(), ref.double()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mu_x, mu_r = x.mean(-1), ref.mean(-1)
    dx, dr = x - mu_x.unsqueeze(-1), ref - mu_r.unsqueeze(-1)
    var_x, var_r, cov = (dx * dx).mean(-1), (dr * dr).mean(-1), (dx * dr).mean(-1)
    return ((2 * mu_x * mu_r + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_r ** 2 + c1) * (var_x + var_r + c2))


def mse(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    diff = x.double() - ref.double()
    return (diff * diff).mean(-1)


def maxnorm(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return (x.double() - ref.double()).abs().amax(-1)


def psnr(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return 10.0 * torch.log10(1.0 / (mse(x, ref) + 1e-12))


def metric_values(name: str, x: torch.Tensor, ref: torch.Tensor | None = None, bins: int = 16) -> torch.Tensor:
    """One metric by name; `ref` is required for the distance metrics."""
    if name == "entropy":
        return entropy(x, bins)
    if name not in DISTANCE:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
    if ref is None:
        raise ValueError(f"metric {name!r} compares with a reference; pass ref")
    if name == "mi":
        return mutual_information(x, ref, bins)
    if name == "kl":
        return kl_divergence(x, ref, bins)
    if name == "joint_entropy":
        return joint_entropy(x, ref, bins)
    return {"ssim": ssim, "maxnorm": maxnorm, "psnr": psnr, "mse": mse}[name](x, ref)


def sort_key(values: torch.Tensor, descending: bool = False) -> torch.Tensor:
    """Unique float64 keys over the last axis whose ascending order is the ranking.

    Values are rounded to 2^-20 so that last-bit differences between runtimes cannot swap two
    slices; equal rounded values keep index order (a stable sort in both directions).
    """
    count = values.shape[-1]
    rounded = torch.round(values * KEY_SCALE)
    if descending:
        rounded = -rounded
    index = torch.arange(count, dtype=torch.float64, device=values.device)
    return rounded * count + index
