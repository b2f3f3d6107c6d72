"""Paper 004's 3D CNN: a registered 2D model rebuilt to read volumized images.

`to_volumetric(spec2d, ...)` builds the 2D model from its spec and converts it layer by layer:
Conv2d k x k -> Conv3d d x k x k (depth padding d // 2, so depth Z is kept), MaxPool2d /
AvgPool2d -> 3D pooling over (1, k, k) (slices are pooled, depth is not), BatchNorm2d ->
BatchNorm3d, Normalize -> a 5D Normalize; activations and dropout are kept. At Flatten the
network turns per-slice: N x C' x Z x h x w -> N x Z x (C' h w), and the dense layers act on
every slice with shared weights (the first one resized to the new width). The head thus gives
class scores *per slice*, N x Z x K.

`forward(x)` takes images N x C x H x W in [0, 1] (the volumizer is the first module, so the
ONNX graph takes images too) and returns the aggregated N x K logits (`aggregate`:
mean_log_prob (default), mean_prob, mean_logits, trimmed_mean, vote).
With `position` a learned vector per depth position is added to every slice's features before
the head: with a depth kernel of 1 the slices never meet before the vote, and this is how a
slice's classifier knows where (under a fixed order) its slice lies in the image.
Training uses `pal_loss`: the sum over slices of the cross-entropy (mean over the batch).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from training.models.registry import ModelSpec, Normalize, create_model
from training.defenses.volumized.aggregate import AGGREGATIONS, aggregate
from training.defenses.volumized.volumizer import Volumizer, VolumizerConfig


class Normalize3d(nn.Module):
    """(x - mean) / std per channel for N x C x Z x h x w."""

    def __init__(self, source: Normalize) -> None:
        super().__init__()
        self.register_buffer("mean", source.mean.view(1, -1, 1, 1, 1).clone())
        self.register_buffer("std", source.std.view(1, -1, 1, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def convert_layer(layer: nn.Module, depth_kernel: int) -> nn.Module:
    """One 2D layer -> its 3D counterpart (unknown layer types are refused, not guessed)."""
    if isinstance(layer, Normalize):
        return Normalize3d(layer)
    if isinstance(layer, nn.Conv2d):
        if layer.padding == "same" or layer.padding == "valid":
            raise ValueError("string padding is not supported; use integer padding")
        kh, kw = layer.kernel_size
        return nn.Conv3d(layer.in_channels, layer.out_channels, (depth_kernel, kh, kw),
                         stride=(1, *layer.stride), padding=(depth_kernel // 2, *layer.padding),
                         dilation=(1, *layer.dilation), groups=layer.groups, bias=layer.bias is not None)
    if isinstance(layer, nn.MaxPool2d):
        k, s, p = _pair(layer.kernel_size), _pair(layer.stride or layer.kernel_size), _pair(layer.padding)
        return nn.MaxPool3d((1, *k), (1, *s), (0, *p), ceil_mode=layer.ceil_mode)
    if isinstance(layer, nn.AvgPool2d):
        k, s, p = _pair(layer.kernel_size), _pair(layer.stride or layer.kernel_size), _pair(layer.padding)
        return nn.AvgPool3d((1, *k), (1, *s), (0, *p), ceil_mode=layer.ceil_mode)
    if isinstance(layer, nn.BatchNorm2d):
        return nn.BatchNorm3d(layer.num_features, eps=layer.eps, momentum=layer.momentum, affine=layer.affine)
    if isinstance(layer, (nn.ReLU, nn.GELU, nn.ELU, nn.LeakyReLU, nn.SiLU, nn.Tanh, nn.Sigmoid,
                          nn.Dropout, nn.Identity)):
        return copy.deepcopy(layer)  # element-wise: works on any rank
    raise TypeError(f"cannot convert {type(layer).__name__} to 3D; supported: Conv2d, MaxPool2d, "
                    "AvgPool2d, BatchNorm2d, Normalize, activations, Dropout, Flatten, Linear")


class SliceFlatten(nn.Module):
    """N x C x Z x h x w -> N x Z x (C h w): from here on every slice is a sample."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2).flatten(2)


class VolumetricNet(nn.Module):
    """Volumizer -> 3D body -> per-slice head; `forward` aggregates the slice scores."""

    def __init__(self, volumizer: Volumizer, body: nn.Sequential, head: nn.Sequential,
                 aggregation: str = "mean_log_prob", depth_kernel: int = 3,
                 position: nn.Parameter | None = None, trim: int = 4, abstain: float = 0.0) -> None:
        super().__init__()
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {aggregation!r}; known: {', '.join(AGGREGATIONS)}")
        self.volumizer, self.body, self.head, self.aggregation = volumizer, body, head, aggregation
        self.depth_kernel, self.position, self.trim, self.abstain = depth_kernel, position, trim, abstain

    def features(self, volume: torch.Tensor) -> torch.Tensor:
        """N x C x Z x h x w volume -> N x Z x F slice features (position added)."""
        feats = self.body(volume)
        return feats if self.position is None else feats + self.position

    def slice_logits(self, x: torch.Tensor) -> torch.Tensor:
        """N x C x H x W -> N x Z x K class scores, one row per slice (depth order)."""
        return self.head(self.features(self.volumizer(x)))

    def aggregate(self, slice_logits: torch.Tensor) -> torch.Tensor:
        return aggregate(slice_logits, self.aggregation, self.trim, self.abstain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.aggregate(self.slice_logits(x))

    @property
    def slices_independent(self) -> bool:
        """True when a slice's scores depend on its own pixels only (depth kernel 1) and on a
        depth position no input can move (fixed ranking, or no position vectors): then a
        change to k slices changes at most k rows of `slice_logits`."""
        fixed = self.volumizer.config.ranking == "fixed"
        return self.depth_kernel == 1 and (fixed or self.position is None)

    def candidate_evaluator(self, x: torch.Tensor):
        """A scorer for sparse black-box attacks (`NPixel`): recomputes only the slices a
        candidate changes; None when the slices are not independent (a full forward then)."""
        if not self.slices_independent:
            return None
        from training.defenses.volumized.slice_eval import SliceEvaluator

        return SliceEvaluator(self, x)


def pal_loss(slice_logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Patch aggregate loss: sum over slices of CE(slice scores, label), mean over the batch."""
    n, z, k = slice_logits.shape
    per_slice = F.cross_entropy(slice_logits.reshape(n * z, k), y.repeat_interleave(z), reduction="none")
    return per_slice.view(n, z).sum(dim=1).mean()


def to_volumetric(spec2d: ModelSpec, volumizer: VolumizerConfig, depth_kernel: int = 3,
                  aggregation: str = "mean_log_prob", position: bool = False, trim: int = 4,
                  abstain: float = 0.0) -> VolumetricNet:
    """Build `spec2d`'s model and convert it (see the module docstring)."""
    if depth_kernel < 1 or depth_kernel % 2 == 0:
        raise ValueError(f"depth_kernel must be a positive odd number, got {depth_kernel}")
    model2d = create_model(spec2d)
    if not isinstance(model2d, nn.Sequential):
        raise TypeError(f"model {spec2d.name!r} is not an nn.Sequential; only sequential CNNs convert")
    layers = list(model2d)
    cut = next((i for i, layer in enumerate(layers) if isinstance(layer, nn.Flatten)), None)
    if cut is None:
        raise TypeError(f"model {spec2d.name!r} has no Flatten layer separating features from the head")
    body = nn.Sequential(*[convert_layer(layer, depth_kernel) for layer in layers[:cut]], SliceFlatten())
    vol = Volumizer(volumizer)
    probe = torch.zeros(1, spec2d.in_channels, spec2d.image_size, spec2d.image_size)
    with torch.no_grad():
        width = body.eval()(vol(probe)).shape[-1]
    body_width = width
    head: list[nn.Module] = []
    for layer in layers[cut + 1:]:
        if isinstance(layer, nn.Linear):
            head.append(nn.Linear(width, layer.out_features, bias=layer.bias is not None))
            width = layer.out_features
        else:
            head.append(convert_layer(layer, depth_kernel))
    depth = vol.depth(spec2d.image_size, spec2d.image_size)
    pos = nn.Parameter(torch.zeros(depth, body_width)) if position else None
    return VolumetricNet(vol, body, nn.Sequential(*head), aggregation, depth_kernel, pos, trim, abstain)


def volumetric(spec: ModelSpec) -> VolumetricNet:
    """The 3D counterpart of `spec.options['base']` (a registered 2D model name).

    spec.options: base, volumizer (VolumizerConfig fields), depth_kernel=3,
    aggregation='mean_log_prob', position=False, trim=4, abstain=0.0. Example:
    `create_model(ModelSpec("volumetric", options={"base": "fmnist-cnn"}))`
    """
    options = dict(spec.options)
    base = options.get("base", "fmnist-cnn")
    spec2d = ModelSpec(name=base, num_classes=spec.num_classes, in_channels=spec.in_channels,
                       image_size=spec.image_size, mean=spec.mean, std=spec.std)
    return to_volumetric(spec2d, VolumizerConfig(**options.get("volumizer", {})),
                         depth_kernel=int(options.get("depth_kernel", 3)),
                         aggregation=options.get("aggregation", "mean_log_prob"),
                         position=bool(options.get("position", False)), trim=int(options.get("trim", 4)),
                         abstain=float(options.get("abstain", 0.0)))
