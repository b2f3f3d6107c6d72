"""`pgd-at`: PGD adversarial training (Madry et al., 2018), L-inf."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from training.attacks import PGD
from training.distributed import unwrap
from training.defenses.base import DefenseConfig
from training.defenses.common import BatchLossDefense, StepSeeds, auto_alpha, resumable


@dataclass(frozen=True)
class PGDATConfig(DefenseConfig):
    """Args:
        eps: L-inf radius of the inner maximization (pixels in [0, 1]).
        steps: PGD steps per batch.
        alpha: step size; 0 means 2.5 * eps / steps.
        random_start: start each PGD run at a uniform point of the eps-ball.
        clean_weight: weight of the clean loss (0: adversarial examples only, as Madry et al.).
    """

    eps: float = 0.1
    steps: int = 10
    alpha: float = 0.0
    random_start: bool = True
    clean_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.eps <= 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")
        if not 0 <= self.clean_weight <= 1:
            raise ValueError(f"clean_weight must be in [0, 1], got {self.clean_weight}")


class PGDAT(BatchLossDefense):
    """Minimize the loss at the PGD-k maximizer of the eps-ball around every training image.

    Adversarial examples are made with the model in eval mode (batch-norm statistics and
    dropout fixed) and a fresh random start per batch, then the step trains in train mode.
    Example: `create_defense("pgd-at", {"eps": "0.1", "steps": "10"}).fit("fmnist-cnn", ...)`
    """

    Config = PGDATConfig

    def batch_loss(self):
        cfg, seeds = self.config, StepSeeds()
        alpha = auto_alpha(cfg.alpha, cfg.eps, cfg.steps)

        def loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            x_adv = PGD(unwrap(model), eps=cfg.eps, alpha=alpha, steps=cfg.steps,
                        random_start=cfg.random_start, seed=seeds())(x, y)
            if cfg.clean_weight == 0:
                return F.cross_entropy(model(x_adv), y)
            logits = model(torch.cat([x, x_adv]))
            clean, adv = logits[:len(x)], logits[len(x):]
            return cfg.clean_weight * F.cross_entropy(clean, y) + (1 - cfg.clean_weight) * F.cross_entropy(adv, y)

        return resumable(loss, seeds)

