"""Attack registry: `@register_attack("pgd")`, looked up by `create_attack`."""
from __future__ import annotations

from typing import Callable

from torch import nn

from training.attacks._base import Attack

_ATTACKS: dict[str, type[Attack]] = {}


def register_attack(name: str) -> Callable[[type[Attack]], type[Attack]]:
    def wrap(cls: type[Attack]) -> type[Attack]:
        if name in _ATTACKS:
            raise ValueError(f"attack {name!r} registered twice")
        _ATTACKS[name] = cls
        return cls

    return wrap


def known_attacks() -> list[str]:
    return sorted(_ATTACKS)


def attack_class(name: str) -> type[Attack]:
    cls = _ATTACKS.get(name)
    if cls is None:
        raise KeyError(f"unknown attack {name!r}; known: {', '.join(known_attacks())}")
    return cls


def create_attack(name: str, model: nn.Module, **config) -> Attack:
    """Example: `create_attack("pgd", model, eps=0.1, steps=40)`."""
    return attack_class(name)(model, **config)
