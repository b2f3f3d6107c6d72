"""Paper 002's augmented data set: clean samples keep their labels, adversarial ones get one
extra label, "adversarial" (index = number of classes, 10 for Fashion-MNIST).

- `parse_attacks("gma,pgd:eps=0.1;steps=10,fgsm:eps=0.1,cw")`: attack names with typed options.
- `craft_pool`: adversarial images made once from a source ("target") model, the attacks
  interleaved (image p uses attack p mod k), so that every prefix of the pool is balanced and
  the EAT cycles' growing shares (15% -> 25% -> 40% -> 50%) add to one another.
  GMA (Algorithm 1) spreads its images over its sizes: the j-th GMA image is made at size
  Tr(eps)[j mod S], with GMA's own tries.
- `augmented`: clean split + the first n pool images, n / (n_clean + n) = share.
- `bootstraps`: n samples with replacement of an augmented split (bagging).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from training.attacks import attack_class
from training.attacks.base import Attack
from training.data import Split
from training.options import build_config

log = logging.getLogger(__name__)


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


def _run_attack(model: nn.Module, spec: AttackSpec, x: torch.Tensor, y: torch.Tensor,
                batch_size: int, seed: int) -> torch.Tensor:
    if spec.name == "gma" and len(x):
        from training.attacks.gma import GMAConfig, perturbation_grid

        sizes = perturbation_grid(build_config(GMAConfig, dict(spec.options)))
        out = torch.empty_like(x)
        slot = torch.arange(len(x)) % len(sizes)
        for s, eps in enumerate(sizes):
            idx = (slot == s).nonzero().squeeze(1)
            if len(idx):
                one = AttackSpec("gma", spec.options + (("values", str(eps)), ("exponents", "0")))
                out[idx] = _batched(one.build(model, seed=seed + s), x[idx], y[idx], batch_size,
                                    f"gma {eps:.0e}")
        return out
    return _batched(spec.build(model, seed=seed), x, y, batch_size, spec.name)


def _batched(attack: Attack, x: torch.Tensor, y: torch.Tensor, batch_size: int, label: str) -> torch.Tensor:
    chunks = [attack(x[i:i + batch_size], y[i:i + batch_size])
              for i in tqdm(range(0, len(x), batch_size), desc=label, unit="batch", leave=False, disable=None)]
    return torch.cat(chunks) if chunks else x[:0].clone()


@torch.no_grad()
def _fooled(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    was = model.training
    model.eval()
    out = torch.cat([model(x[i:i + batch_size]).argmax(1) != y[i:i + batch_size]
                     for i in range(0, len(x), batch_size)]) if len(x) else torch.zeros(0, dtype=torch.bool)
    model.train(was)
    return out


def craft_pool(model: nn.Module, clean: Split, attacks: list[AttackSpec], size: int, seed: int = 0,
               batch_size: int = 256) -> AdversarialSet:
    """`size` adversarial images from `clean` (a seeded order, cycling if size > len(clean)),
    attack `p mod k` for position p, all made against `model`."""
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    order = torch.randperm(len(clean), generator=torch.Generator().manual_seed(seed))
    position = torch.arange(size)
    source = order[position % len(clean)] if len(clean) else position[:0]
    attack = position % len(attacks)
    x = torch.empty((size, *clean.x.shape[1:]), dtype=clean.x.dtype)
    y = clean.y[source]
    for a, spec in enumerate(attacks):
        idx = (attack == a).nonzero().squeeze(1)
        log.info("crafting %d %s images", len(idx), spec)
        x[idx] = _run_attack(model, spec, clean.x[source[idx]], y[idx], batch_size, seed + 7919 * a)
    return AdversarialSet(x, y, source, attack, _fooled(model, x, y), tuple(s.name for s in attacks))


def craft_per_attack(model: nn.Module, clean: Split, attacks: list[AttackSpec], seed: int = 0,
                     batch_size: int = 256) -> AdversarialSet:
    """Every image of `clean` attacked by every attack (evaluation sets), grouped by attack."""
    parts = []
    for a, spec in enumerate(attacks):
        x = _run_attack(model, spec, clean.x, clean.y, batch_size, seed + 7919 * a)
        parts.append(AdversarialSet(x, clean.y.clone(), torch.arange(len(clean)),
                                    torch.full((len(clean),), a), _fooled(model, x, clean.y), ()))
    return AdversarialSet(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]),
                          torch.cat([p.source_index for p in parts]), torch.cat([p.attack for p in parts]),
                          torch.cat([p.fooled for p in parts]), tuple(s.name for s in attacks))


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


def bootstraps(split: Split, n: int, seed: int = 0, fraction: float = 1.0) -> list[Split]:
    """`n` samples of round(fraction * len) indices drawn with replacement (bagging)."""
    if n < 1 or fraction <= 0:
        raise ValueError(f"need n >= 1 and fraction > 0, got {n} and {fraction}")
    gen = torch.Generator().manual_seed(seed)
    m = max(1, int(round(fraction * len(split))))
    out = []
    for _ in range(n):
        idx = torch.randint(len(split), (m,), generator=gen)
        out.append(Split(split.x[idx], split.y[idx]))
    return out
