"""GMA, the gradient-based miniature attack (paper 002, Algorithms 1 and 2, as SEEDS.md reads them).

Algorithm 1 runs a 10-iteration untargeted gradient attack at every size of the grid
Tr(eps) = {V_n * base^-i : V = (0.1, 0.5, 1, 2, 3), i = 1..6} and collects the results into one
attack data set. The paper writes "e^-i" but its tables give powers of ten, so base=10 is the
default (1e-7 .. 0.3; the 30 (V, i) pairs give 25 distinct sizes since 0.1*10^-i = 1*10^-(i+1)).
Algorithm 2 calls an attack at one size a success when the model's accuracy on its images
falls below 50% ("worst case"; above 80% is the "best case"), trying up to 3 times.
The bi-level poisoning formulation (the paper's eqs. 3-5) is not what Algorithm 1 computes and
is not implemented.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import torch

from training.attacks._base import Attack, AttackConfig, eval_mode
from training.attacks._losses import LOSSES
from training.attacks.pgd import PGD

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GMAConfig(AttackConfig):
    values: tuple[float, ...] = (0.1, 0.5, 1.0, 2.0, 3.0)
    exponents: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
    base: float = 10.0
    steps: int = 10
    alpha_ratio: float = 0.25
    tries: int = 3
    worst_case: float = 0.5
    best_case: float = 0.8
    loss: str = "ce"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.values or not self.exponents:
            raise ValueError("values and exponents must be non-empty")
        if self.base <= 1 or any(v <= 0 for v in self.values):
            raise ValueError(f"base must be > 1 and values > 0, got {self.base} and {self.values}")
        if self.tries < 1 or self.alpha_ratio <= 0:
            raise ValueError(f"tries must be >= 1 and alpha_ratio > 0, got {self.tries}, {self.alpha_ratio}")
        if not 0 <= self.worst_case <= self.best_case <= 1:
            raise ValueError(f"need 0 <= worst_case <= best_case <= 1, "
                             f"got {self.worst_case}, {self.best_case}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; known: {', '.join(LOSSES)}")


def perturbation_grid(config: GMAConfig) -> list[float]:
    """Tr(eps): the distinct sizes V_n * base^-i, ascending."""
    sizes = {float(f"{v * config.base ** -i:.12g}") for v in config.values for i in config.exponents}
    return sorted(sizes)


@dataclass(frozen=True)
class GMASize:
    """Algorithm 2 at one size: accuracy on its images, share of correct images it fooled,
    tries used, success (accuracy < worst_case) and the case ('worst', 'between', 'best')."""

    eps: float
    accuracy: float
    fooled: float
    tries: int
    success: bool
    case: str


@dataclass
class GMAResult:
    """`images[s]` are the attack's images at `report.sizes[s].eps`; `report.accuracy` is the
    model's accuracy on the whole GMA data set (every size together)."""

    images: torch.Tensor
    clean_accuracy: float
    accuracy: float
    success: bool
    sizes: list[GMASize] = field(default_factory=list)
    n_correct: int = 0

    def to_dict(self) -> dict:
        return {"clean_accuracy": self.clean_accuracy, "accuracy": self.accuracy,
                "success": self.success, "sizes": [asdict(s) for s in self.sizes]}


class GMA(Attack):
    r"""Gradient-based miniature attack (L-inf), over the Tr(eps) grid.

    At each size eps: PGD with `steps` iterations, step `alpha_ratio * eps`, random start;
    up to `tries` tries (each new try attacks only the images still classified correctly, with
    a new seed) until the accuracy drops below `worst_case`. `run` returns every size's images
    and the per-size report; calling the attack returns, per image, the image from the
    *smallest* size that fools the model (else from the largest size).

    Args (GMAConfig): values=(0.1, 0.5, 1, 2, 3), exponents=(1..6), base=10.0, steps=10,
        alpha_ratio=0.25, tries=3, worst_case=0.5, best_case=0.8, loss='ce', seed=0.
    Shape: x (N, C, H, W) in [0, 1]; y (N,); `run(x, y).images` is (S, N, C, H, W).
    Example: `result = GMA(model, tries=1).run(x, y); print(result.to_dict()["sizes"])`
    """

    Config = GMAConfig
    name = "gma"

    def grid(self) -> list[float]:
        return perturbation_grid(self.config)

    @torch.no_grad()
    def _correct(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.model(x).argmax(dim=1) == y

    def _attack_size(self, x: torch.Tensor, y: torch.Tensor, eps: float,
                     clean_ok: torch.Tensor) -> tuple[torch.Tensor, GMASize]:
        cfg = self.config
        x_adv, ok = x.clone(), clean_ok.clone()
        tries = 0
        for t in range(cfg.tries):
            tries = t + 1
            todo = ok.clone() if t else torch.ones_like(ok)
            if todo.any():
                pgd = PGD(self.model, eps=eps, alpha=cfg.alpha_ratio * eps, steps=cfg.steps,
                          loss=cfg.loss, seed=cfg.seed + 1000 * t)
                cand = pgd(x[todo], y[todo])
                x_adv[todo] = cand
                ok[todo] = self._correct(cand, y[todo])
            if ok.float().mean().item() < cfg.worst_case:
                break
        accuracy = ok.float().mean().item()
        fooled = (clean_ok & ~ok).sum().item() / max(int(clean_ok.sum()), 1)
        return x_adv, GMASize(eps, accuracy, fooled, tries, accuracy < cfg.worst_case, self._case(accuracy))

    def run(self, x: torch.Tensor, y: torch.Tensor) -> GMAResult:
        """Algorithm 1 (every size) with Algorithm 2's test at each; the model's mode is kept."""
        x, y = x.detach(), y.detach().to(x.device)
        with eval_mode(self.model):
            clean_ok = self._correct(x, y)
            images, sizes = [], []
            for eps in self.grid():
                x_adv, size = self._attack_size(x, y, eps, clean_ok)
                images.append(x_adv)
                sizes.append(size)
                log.info("GMA eps=%.1e: accuracy %.3f, fooled %.3f, tries %d, %s",
                         eps, size.accuracy, size.fooled, size.tries, size.case)
        accuracy = sum(s.accuracy for s in sizes) / len(sizes)
        return GMAResult(torch.stack(images), clean_ok.float().mean().item(), accuracy,
                         accuracy < self.config.worst_case, sizes, int(clean_ok.sum()))

    def _case(self, accuracy: float) -> str:
        cfg = self.config
        return "worst" if accuracy < cfg.worst_case else "best" if accuracy > cfg.best_case else "between"

    def merge(self, parts: list[GMAResult]) -> GMAResult:
        """One result from the results of consecutive batches (accuracies weighted by size)."""
        n = [p.images.shape[1] for p in parts]
        total, correct = sum(n), sum(p.n_correct for p in parts)
        sizes = []
        for s, first in enumerate(parts[0].sizes):
            acc = sum(p.sizes[s].accuracy * k for p, k in zip(parts, n)) / total
            fooled = sum(p.sizes[s].fooled * p.n_correct for p in parts) / max(correct, 1)
            sizes.append(GMASize(first.eps, acc, fooled, max(p.sizes[s].tries for p in parts),
                                 acc < self.config.worst_case, self._case(acc)))
        accuracy = sum(s.accuracy for s in sizes) / len(sizes)
        clean = sum(p.clean_accuracy * k for p, k in zip(parts, n)) / total
        return GMAResult(torch.cat([p.images for p in parts], dim=1), clean, accuracy,
                         accuracy < self.config.worst_case, sizes, correct)

    @torch.no_grad()
    def smallest_fooling(self, result: GMAResult, y: torch.Tensor) -> torch.Tensor:
        """Per image, its image from the smallest size that fools the model, else the largest size's."""
        with eval_mode(self.model):
            fooled = torch.stack([~self._correct(imgs, y) for imgs in result.images])  # (S, N)
        first = torch.where(fooled.any(dim=0), fooled.int().argmax(dim=0), len(result.images) - 1)
        return result.images[first, torch.arange(len(y), device=y.device)]

    def _perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.smallest_fooling(self.run(x, y), y)
