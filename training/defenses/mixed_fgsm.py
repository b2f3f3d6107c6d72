"""`mixed-fgsm` (paper 003; Goodfellow et al., 2015): every batch trained on clean images and
FGSM images made with the current model, together."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from training.attacks import FGSM
from training.distributed import unwrap
from training.defenses.base import DefenseConfig
from training.defenses.common import BatchLossDefense


@dataclass(frozen=True)
class MixedFGSMConfig(DefenseConfig):
    """Args:
        eps: L-inf radius of the FGSM images.
        adv_weight: weight of the adversarial half of the loss (Goodfellow et al.: 0.5).
    """

    eps: float = 0.1
    adv_weight: float = 0.5

    def __post_init__(self) -> None:
        if self.eps <= 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if not 0 <= self.adv_weight <= 1:
            raise ValueError(f"adv_weight must be in [0, 1], got {self.adv_weight}")


class MixedFGSM(BatchLossDefense):
    """loss = (1 - w) * CE(f(x), y) + w * CE(f(x + eps * sign(grad_x CE)), y), per batch.

    The FGSM images come from the current weights (model in eval mode); clean and
    adversarial images go through the model as one batch.
    Example: `create_defense("mixed-fgsm", {"eps": "0.1"}).fit("fmnist-cnn", splits, ...)`
    """

    Config = MixedFGSMConfig

    def batch_loss(self):
        cfg = self.config

        def loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            x_adv = FGSM(unwrap(model), eps=cfg.eps)(x, y)
            logits = model(torch.cat([x, x_adv]))
            clean, adv = logits[:len(x)], logits[len(x):]
            return (1 - cfg.adv_weight) * F.cross_entropy(clean, y) + cfg.adv_weight * F.cross_entropy(adv, y)

        return loss

