"""Feature squeezing (Xu, Evans and Qi, "Feature Squeezing: Detecting Adversarial Examples in
Deep Neural Networks", NDSS 2018).

The model's probabilities on the input are compared with its probabilities on "squeezed"
copies: bit-depth reduction and 2x2 median smoothing. The score is the largest L1 distance
between the probability vectors (the paper's joint detector); clean inputs barely move,
adversarial perturbations, tuned to the unsqueezed input, often do.

Args (manifest `options`): bits=2 (bit depth kept; the paper uses 1 on MNIST, 5 on CIFAR-10;
2 detected the most FGSM and PGD examples made from Fashion-MNIST validation images, see
docs/RESULTS.md), median=2 (median window side; 0 turns the median squeezer off).
Example: `FeatureSqueezing(bits=2).score(x, outputs)` with `outputs.views` from the pipeline.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from serving.guard.policy import Outputs


def reduce_bit_depth(x: np.ndarray, bits: int) -> np.ndarray:
    """Quantize [0, 1] pixels to 2**bits levels: round(x * (2**bits - 1)) / (2**bits - 1)."""
    levels = float(2 ** bits - 1)
    return np.round(x * levels) / levels


def median_smooth_2x2(x: np.ndarray) -> np.ndarray:
    """2x2 median filter over the last two axes, as scipy.ndimage.median_filter(size=2,
    mode='reflect') computes it: the window of pixel (i, j) is rows i-1..i and columns
    j-1..j (edges repeated), and the "median" of 4 values is the upper middle one (rank 2)."""
    padded = np.concatenate([x[..., :1, :], x], axis=-2)
    padded = np.concatenate([padded[..., :1], padded], axis=-1)
    a, b = padded[..., :-1, :-1], padded[..., :-1, 1:]
    c, d = padded[..., 1:, :-1], padded[..., 1:, 1:]
    hi1, lo1 = np.maximum(a, b), np.minimum(a, b)
    hi2, lo2 = np.maximum(c, d), np.minimum(c, d)
    # second largest of four = max(smaller of the two maxima, larger of the two minima)
    return np.maximum(np.minimum(hi1, hi2), np.maximum(lo1, lo2))


class FeatureSqueezing:
    """score = max over squeezers of ||p(x) - p(squeeze(x))||_1, in [0, 2]."""

    name = "feature-squeezing"
    blocking = False
    needs_reference = False

    def __init__(self, bits: int = 2, median: int = 2) -> None:
        if not 1 <= bits <= 7:
            raise ValueError(f"bits must be in 1..7, got {bits}")
        if median not in (0, 2):
            raise ValueError(f"median must be 2 (2x2 window) or 0 (off), got {median}")
        self.bits, self.median = bits, median
        self.views = {f"bit-depth-{bits}": lambda x: reduce_bit_depth(x, bits)}
        if median:
            self.views["median-2x2"] = median_smooth_2x2

    @classmethod
    def from_manifest(cls, bundle_dir: Path, options: dict, engine: object = None) -> "FeatureSqueezing":
        return cls(bits=int(options.get("bits", 2)), median=int(options.get("median", 2)))

    def options(self) -> dict:
        return {"bits": self.bits, "median": self.median}

    def score(self, x: np.ndarray, outputs: Outputs) -> np.ndarray:
        distances = [np.abs(outputs.probs - outputs.views[name]).sum(axis=1) for name in self.views]
        return np.max(distances, axis=0)
