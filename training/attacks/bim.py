"""BIM / I-FGSM (Kurakin et al., 2017; paper 003, eq. 2), L-inf."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from training.attacks._base import Attack, AttackConfig
from training.attacks._fusion import fused_eval_view
from training.attacks._losses import LOSSES, attack_loss


@dataclass(frozen=True)
class BIMConfig(AttackConfig):
    eps: float = 0.1
    alpha: float = 1 / 255
    steps: int = 0
    loss: str = "ce"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; known: {', '.join(LOSSES)}")

    @property
    def n_steps(self) -> int:
        """`steps`, or Kurakin et al.'s rule min(eps*255 + 4, 1.25*eps*255) when steps=0."""
        if self.steps:
            return self.steps
        return max(1, math.ceil(min(self.eps * 255 + 4, 1.25 * self.eps * 255)))


class BIM(Attack):
    r"""Basic iterative method: FGSM steps from the clean image, clipped after every step.

    .. math:: X_0 = X,\quad X_{N+1} = Clip_{X,\epsilon}\{X_N + \alpha\,sign(\nabla_X J(X_N, y))\}

    where Clip keeps each pixel within [x - eps, x + eps] and [0, 1]. No random start (that is
    PGD's difference). Targeted: `y` holds targets and the loss is descended.

    Args (BIMConfig): eps=0.1 (L-inf), alpha=1/255, steps=0 (0: Kurakin's rule,
        min(eps*255 + 4, 1.25*eps*255)), loss='ce' | 'margin' | 'dlr', targeted=False.
    Shape: x (N, C, H, W) in [0, 1]; y (N,); returns (N, C, H, W).
    Example: `x_adv = BIM(model, eps=0.1, alpha=0.01, steps=10)(x, y)`
    """

    Config = BIMConfig
    name = "bim"

    def _perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        lower, upper = (x - cfg.eps).clamp_min(0.0), (x + cfg.eps).clamp_max(1.0)
        x_adv, model = x.clone(), fused_eval_view(self.model)
        for _ in range(cfg.n_steps):
            x_adv.requires_grad_(True)
            loss = attack_loss(model(x_adv), y, cfg.loss, cfg.targeted).sum()
            (grad,) = torch.autograd.grad(loss, x_adv)
            with torch.no_grad():
                x_adv = torch.minimum(torch.maximum(x_adv + cfg.alpha * grad.sign(), lower), upper)
        return x_adv
