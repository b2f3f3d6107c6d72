"""Paper 002's augmented data set: clean samples keep their labels, adversarial ones get one
extra label, "adversarial" (index = number of classes, 10 for Fashion-MNIST).

- `parse_attacks("gma,pgd:eps=0.1;steps=10,fgsm:eps=0.1,cw")`: attack names with typed options.
- `AdversarialSet`: adversarial images with their labels, origin and attack (made by
  `training.defenses.mia.craft`).
- `augmented`: clean split + the first n pool images, n / (n_clean + n) = share.
- `bootstraps`, `bootstrap_indices`: n samples with replacement of an augmented split (bagging).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from training.attacks import Attack, attack_class
from training.data import Split
from training.options import build_config


@dataclass(frozen=True)
class AttackSpec:
    """One attack by registered name with config fields as strings (typed by `build`)."""

    name: str
    options: tuple[tuple[str, str], ...] = ()

    def build(self, model: nn.Module, **fixed) -> Attack:
        cls = attack_class(self.name)
        return cls(model, build_config(cls.Config, dict(self.options), **fixed))

    def __str__(self) -> str:
        opts = ";".join(f"{k}={v}" for k, v in self.options)
        return f"{self.name}:{opts}" if opts else self.name


def parse_attacks(text: str) -> list[AttackSpec]:
    """'gma,pgd:eps=0.1;steps=10' -> [AttackSpec('gma'), AttackSpec('pgd', (('eps','0.1'), ...))].

    Attacks are separated by ',', options by ';'; a tuple option lists its values with '|'
    ('gma:values=0.1|0.5').
    """
    specs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, rest = item.partition(":")
        options = []
        for pair in filter(None, (p.strip() for p in rest.split(";"))):
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise ValueError(f"attack option must be KEY=VALUE, got {pair!r} in {item!r}")
            options.append((key.strip(), value.strip().replace("|", ",")))
        specs.append(AttackSpec(name.strip(), tuple(options)))
    if not specs:
        raise ValueError("no attacks given; e.g. 'gma,pgd:eps=0.1,fgsm:eps=0.1,cw'")
    if len({s.name for s in specs}) != len(specs):
        raise ValueError(f"each attack may appear once, got {text!r}")
    return specs


@dataclass(frozen=True)
class AdversarialSet:
    """Adversarial images with their true labels, the clean image each came from, the attack
    that made it (index into `names`) and whether it fooled the source model."""

    x: torch.Tensor
    y: torch.Tensor
    source_index: torch.Tensor
    attack: torch.Tensor
    fooled: torch.Tensor
    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.y)

    def select(self, mask_or_index: torch.Tensor) -> "AdversarialSet":
        m = mask_or_index
        return AdversarialSet(self.x[m], self.y[m], self.source_index[m], self.attack[m], self.fooled[m], self.names)

    def of(self, name: str) -> "AdversarialSet":
        return self.select(self.attack == self.names.index(name))

    def state(self) -> dict:
        return {"x": self.x, "y": self.y, "source_index": self.source_index, "attack": self.attack,
                "fooled": self.fooled, "names": list(self.names)}

    @classmethod
    def from_state(cls, state: dict) -> "AdversarialSet":
        return cls(state["x"], state["y"], state["source_index"], state["attack"], state["fooled"],
                   tuple(state["names"]))


def adversarial_count(n_clean: int, share: float) -> int:
    """n such that n / (n_clean + n) = share (rounded)."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"share must be in [0, 1), got {share}")
    return int(round(n_clean * share / (1.0 - share)))


def augmented(clean: Split, pool: AdversarialSet, share: float, num_classes: int,
              only_fooled: bool = False) -> Split:
    """Clean samples (labels kept) + the first adversarial ones of `pool` (label `num_classes`)."""
    n = adversarial_count(len(clean), share)
    source = pool.select(pool.fooled) if only_fooled else pool
    if n > len(source):
        raise ValueError(f"share {share} needs {n} adversarial images, the pool has {len(source)}"
                         f"{' that fooled the source model' if only_fooled else ''}")
    x = torch.cat([clean.x, source.x[:n]])
    y = torch.cat([clean.y, torch.full((n,), num_classes, dtype=clean.y.dtype)])
    return Split(x, y)


def bootstrap_indices(n_items: int, n: int, seed: int = 0, fraction: float = 1.0) -> list[torch.Tensor]:
    """`n` index samples of round(fraction * n_items) drawn with replacement (bagging)."""
    if n < 1 or fraction <= 0:
        raise ValueError(f"need n >= 1 and fraction > 0, got {n} and {fraction}")
    gen = torch.Generator().manual_seed(seed)
    m = max(1, int(round(fraction * n_items)))
    return [torch.randint(n_items, (m,), generator=gen) for _ in range(n)]


def bootstraps(split: Split, n: int, seed: int = 0, fraction: float = 1.0) -> list[Split]:
    """`n` samples of `split` drawn with replacement (`bootstrap_indices`, materialized)."""
    return [Split(split.x[idx], split.y[idx]) for idx in bootstrap_indices(len(split), n, seed, fraction)]
