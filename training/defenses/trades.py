"""`trades` (Zhang et al., 2019): clean cross-entropy plus beta times the KL divergence between
the model's predictions on the clean image and on the worst image of its eps-ball."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from training.attacks import eval_mode
from training.distributed import unwrap
from training.defenses.base import DefenseConfig
from training.defenses.common import BatchLossDefense, StepSeeds, auto_alpha, project_linf, resumable


@dataclass(frozen=True)
class TRADESConfig(DefenseConfig):
    """Args:
        beta: weight of the robustness (KL) term; 1/lambda in the paper (6 for CIFAR-10).
        eps: L-inf radius.
        steps: inner-maximization steps.
        alpha: inner step size; 0 means 2.5 * eps / steps.
    """

    beta: float = 6.0
    eps: float = 0.1
    steps: int = 10
    alpha: float = 0.0

    def __post_init__(self) -> None:
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if self.eps <= 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")


def kl_maximizer(model: nn.Module, x: torch.Tensor, eps: float, alpha: float, steps: int,
                 seed: int) -> torch.Tensor:
    """argmax over the eps-ball of KL(f(x) || f(x')), by signed-gradient ascent from
    x + 0.001 * N(0, 1) (TRADES' inner problem), model in eval mode."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    with eval_mode(model):
        with torch.no_grad():
            target = F.softmax(model(x), dim=1)
        x_adv = project_linf(x, x + 0.001 * torch.randn(x.shape, generator=gen, device=x.device), eps)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), target, reduction="sum")
            (grad,) = torch.autograd.grad(kl, x_adv)
            x_adv = project_linf(x, x_adv.detach() + alpha * grad.sign(), eps)
    return x_adv.detach()


class TRADES(BatchLossDefense):
    """loss = CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x')), x' the KL maximizer.

    Example: `create_defense("trades", {"beta": "6"}).fit("fmnist-cnn", splits, ...)`
    """

    Config = TRADESConfig

    def batch_loss(self):
        cfg, seeds = self.config, StepSeeds()
        alpha = auto_alpha(cfg.alpha, cfg.eps, cfg.steps)

        def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            x_adv = kl_maximizer(unwrap(model), x, cfg.eps, alpha, cfg.steps, seeds())
            logits = model(torch.cat([x, x_adv]))
            clean, adv = logits[:len(x)], logits[len(x):]
            robust = F.kl_div(F.log_softmax(adv, dim=1), F.softmax(clean, dim=1), reduction="batchmean")
            return F.cross_entropy(clean, y) + cfg.beta * robust

        return resumable(loss, seeds)

