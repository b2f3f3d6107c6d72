"""The attack interface: the base class does the bookkeeping, subclasses do the math."""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import ClassVar, Iterator

import torch
from torch import nn


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode and restore each one's exact flag afterwards."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


@dataclass(frozen=True)
class AttackConfig:
    """Fields every attack has. `targeted`: `y` passed to the attack holds target classes."""

    targeted: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("eps", "alpha", "steps", "restarts"):
            value = getattr(self, name, None)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")


class Attack(ABC):
    """Base of every attack: `attack(x, y) -> x_adv`.

    `x` holds pixels in [0, 1] (N x C x H x W); `model(x)` returns logits. The base call checks
    shapes, runs the subclass's `_perturb` with the model in eval mode (restored exactly after)
    and gradients enabled, clamps to [0, 1] and detaches. Subclasses write `_perturb(x, y) -> x_adv` only.
    """

    Config: ClassVar[type[AttackConfig]] = AttackConfig
    name: ClassVar[str] = "attack"

    def __init__(self, model: nn.Module, config: AttackConfig | None = None, **overrides) -> None:
        self.model = model
        base = config if config is not None else self.Config()
        self.config = replace(base, **overrides) if overrides else base

    @property
    def targeted(self) -> bool:
        return self.config.targeted

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"x must be N x C x H x W, got shape {tuple(x.shape)}")
        if y.ndim != 1 or len(y) != len(x):
            raise ValueError(f"y must hold one label per image ({len(x)}), got shape {tuple(y.shape)}")
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise ValueError("x must hold pixels in [0, 1]; normalization belongs inside the model")
        x, y = x.detach(), y.detach().to(x.device)
        # enable_grad: gradient attacks work even when called under torch.no_grad()
        with eval_mode(self.model), torch.enable_grad():
            x_adv = self._perturb(x, y)
        return x_adv.clamp(0.0, 1.0).detach()

    def generator(self, device: torch.device) -> torch.Generator:
        """A fresh generator seeded from the config: each call is deterministic."""
        gen = torch.Generator(device=device)
        gen.manual_seed(self.config.seed)
        return gen

    @abstractmethod
    def _perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Return adversarial images for clean `x` and labels (or targets) `y`."""
