"""Paper 004's 3D CNN: a registered 2D model rebuilt to read volumized images.

`to_volumetric(spec2d, ...)` builds the 2D model from its spec and converts it layer by layer:
Conv2d k x k -> Conv3d d x k x k (depth padding d // 2, so depth Z is kept), MaxPool2d /
AvgPool2d -> 3D pooling over (1, k, k) (slices are pooled, depth is not), BatchNorm2d ->
BatchNorm3d, Normalize -> a 5D Normalize; activations and dropout are kept. At Flatten the
network turns per-slice: N x C' x Z x h x w -> N x Z x (C' h w), and the dense layers act on
every slice with shared weights (the first one resized to the new width). The head thus gives
class scores *per slice*, N x Z x K.

`forward(x)` takes images N x C x H x W in [0, 1] (the volumizer is the first module, so the
ONNX graph takes images too) and returns the aggregated N x K logits:
- 'mean_log_prob' (default): mean over slices of log-softmax;
- 'mean_prob': log of the mean slice probability;
- 'mean_logits': mean of the raw slice logits.
Training uses `pal_loss`: the sum over slices of the cross-entropy (mean over the batch).
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from training.models.registry import ModelSpec, Normalize, create_model
from training.defenses.volumized.volumizer import Volumizer, VolumizerConfig

AGGREGATIONS = ("mean_log_prob", "mean_prob", "mean_logits")


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
                 aggregation: str = "mean_log_prob") -> None:
        super().__init__()
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {aggregation!r}; known: {', '.join(AGGREGATIONS)}")
        self.volumizer, self.body, self.head, self.aggregation = volumizer, body, head, aggregation

    def slice_logits(self, x: torch.Tensor) -> torch.Tensor:
        """N x C x H x W -> N x Z x K class scores, one row per slice (depth order)."""
        return self.head(self.body(self.volumizer(x)))

    def aggregate(self, slice_logits: torch.Tensor) -> torch.Tensor:
        if self.aggregation == "mean_log_prob":
            return F.log_softmax(slice_logits, dim=-1).mean(dim=1)
        if self.aggregation == "mean_prob":
            z = slice_logits.shape[1]
            return torch.logsumexp(F.log_softmax(slice_logits, dim=-1), dim=1) - math.log(z)
        return slice_logits.mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.aggregate(self.slice_logits(x))


def pal_loss(slice_logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Patch aggregate loss: sum over slices of CE(slice scores, label), mean over the batch."""
    n, z, k = slice_logits.shape
    per_slice = F.cross_entropy(slice_logits.reshape(n * z, k), y.repeat_interleave(z), reduction="none")
    return per_slice.view(n, z).sum(dim=1).mean()


def to_volumetric(spec2d: ModelSpec, volumizer: VolumizerConfig, depth_kernel: int = 3,
                  aggregation: str = "mean_log_prob") -> VolumetricNet:
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
    head: list[nn.Module] = []
    for layer in layers[cut + 1:]:
        if isinstance(layer, nn.Linear):
            head.append(nn.Linear(width, layer.out_features, bias=layer.bias is not None))
            width = layer.out_features
        else:
            head.append(convert_layer(layer, depth_kernel))
    return VolumetricNet(vol, body, nn.Sequential(*head), aggregation)


def volumetric(spec: ModelSpec) -> VolumetricNet:
    """The 3D counterpart of `spec.options['base']` (a registered 2D model name).

    spec.options: base, volumizer (VolumizerConfig fields), depth_kernel=3,
    aggregation='mean_log_prob'. Example:
    `create_model(ModelSpec("volumetric", options={"base": "fmnist-cnn"}))`
    """
    options = dict(spec.options)
    base = options.get("base", "fmnist-cnn")
    spec2d = ModelSpec(name=base, num_classes=spec.num_classes, in_channels=spec.in_channels,
                       image_size=spec.image_size, mean=spec.mean, std=spec.std)
    return to_volumetric(spec2d, VolumizerConfig(**options.get("volumizer", {})),
                         depth_kernel=int(options.get("depth_kernel", 3)),
                         aggregation=options.get("aggregation", "mean_log_prob"))
