"""The model registry: name -> constructor, with one factory whose error lists the known names."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn

_REGISTRY: dict[str, Callable[["ModelSpec"], nn.Module]] = {}


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model before loading its state_dict.

    Args:
        name: a registered model name (`known_models()`).
        num_classes: output logits (11 for the MIA ensemble's members).
        in_channels: image channels.
        image_size: square side in pixels.
        mean, std: per-channel normalization, applied by the model's first layer.
        options: architecture-specific keyword arguments (e.g. `weights_path`).
    """

    name: str
    num_classes: int = 10
    in_channels: int = 1
    image_size: int = 28
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ValueError(f"mean/std need {self.in_channels} values, got {self.mean}/{self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be > 0, got {self.std}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelSpec":
        data = dict(data)
        data["mean"], data["std"] = tuple(data["mean"]), tuple(data["std"])
        return cls(**data)


def register_model(name: str) -> Callable:
    """Decorator: `@register_model("mnist-base")` on a function ModelSpec -> nn.Module."""

    def wrap(builder: Callable[[ModelSpec], nn.Module]) -> Callable[[ModelSpec], nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = builder
        return builder

    return wrap


def known_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(spec: ModelSpec | str, **kwargs) -> nn.Module:
    """Build a model from its spec (or name plus ModelSpec fields).

    Example: `model = create_model("mnist-base")`
    """
    if isinstance(spec, str):
        spec = ModelSpec(name=spec, **kwargs)
    builder = _REGISTRY.get(spec.name)
    if builder is None:
        raise KeyError(f"unknown model {spec.name!r}; known: {', '.join(known_models())}")
    return builder(spec)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


class Normalize(nn.Module):
    """(x - mean) / std per channel; the first layer of every advguard model, so that
    attacks, the evaluator and the server all see pixels in [0, 1]."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
