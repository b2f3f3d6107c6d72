"""FGSM (Goodfellow et al., 2015), L-inf."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from training.attacks._base import Attack, AttackConfig
from training.attacks._losses import attack_loss


@dataclass(frozen=True)
class FGSMConfig(AttackConfig):
    eps: float = 0.1
    loss: str = "ce"


class FGSM(Attack):
    """Fast gradient sign method: x + eps * sign(grad_x loss).

    Args (FGSMConfig): eps=0.1 (L-inf), loss='ce', targeted=False (then y are targets).
    Example: `x_adv = FGSM(model, eps=0.1)(x, y)`
    """

    Config = FGSMConfig
    name = "fgsm"

    def _perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_req = x.clone().requires_grad_(True)
        loss = attack_loss(self.model(x_req), y, self.config.loss, self.targeted).sum()
        (grad,) = torch.autograd.grad(loss, x_req)
        return x + self.config.eps * grad.sign()
