"""PGD (Madry et al., 2018), L-inf and L2, with random start and restarts."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from training.attacks._base import Attack, AttackConfig
from training.attacks._fusion import fused_eval_view
from training.attacks._losses import LOSSES, attack_loss, succeeded


@dataclass(frozen=True)
class PGDConfig(AttackConfig):
    eps: float = 0.1
    alpha: float = 0.01
    steps: int = 40
    restarts: int = 1
    random_start: bool = True
    norm: str = "linf"
    loss: str = "ce"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"norm must be 'linf' or 'l2', got {self.norm!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; known: {', '.join(LOSSES)}")
        if self.restarts < 1:
            raise ValueError(f"restarts must be >= 1, got {self.restarts}")


def _l2_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.ndim - 1)))


class PGD(Attack):
    """Projected gradient descent.

    Each step ascends the loss and projects the *image* back into the eps-ball and [0, 1]
    (so pixels pushed past the box edge keep a gradient). Restarts keep, per sample, the
    first successful run, else the one with the highest final loss.

    Args (PGDConfig): eps=0.1, alpha=0.01, steps=40, restarts=1, random_start=True,
        norm='linf' | 'l2', loss='ce' | 'margin' | 'dlr', targeted=False, seed=0.
    Example: `x_adv = PGD(model, eps=0.1, steps=40, restarts=5)(x, y)`
    """

    Config = PGDConfig
    name = "pgd"

    def _project(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        delta = x_adv - x
        eps = self.config.eps
        if self.config.norm == "linf":
            delta = delta.clamp(-eps, eps)
        else:
            delta = delta * (eps / _l2_norm(delta)).clamp(max=1.0)
        return (x + delta).clamp(0.0, 1.0)

    def _start(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if not self.config.random_start:
            return x.clone()
        noise = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) * 2 - 1
        if self.config.norm == "l2":
            noise = noise / _l2_norm(noise) * self.config.eps * torch.rand(
                (len(x),) + (1,) * (x.ndim - 1), generator=gen, device=x.device, dtype=x.dtype)
        else:
            noise = noise * self.config.eps
        return self._project(x, x + noise)

    def _run(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator,
             score: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        cfg = self.config
        x_adv = self._start(x, gen)
        for _ in range(cfg.steps):
            x_adv.requires_grad_(True)
            loss = attack_loss(model(x_adv), y, cfg.loss, cfg.targeted)
            (grad,) = torch.autograd.grad(loss.sum(), x_adv)
            with torch.no_grad():
                step = grad.sign() if cfg.norm == "linf" else grad / _l2_norm(grad)
                x_adv = self._project(x, x_adv + cfg.alpha * step)
        if not score:  # one run: no restart to compare against, skip the extra forward pass
            return x_adv.detach(), None
        with torch.no_grad():
            logits = model(x_adv)
            score = attack_loss(logits, y, cfg.loss, cfg.targeted)
            score = torch.where(succeeded(logits, y, cfg.targeted), torch.inf, score)
        return x_adv.detach(), score

    def _perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gen = self.generator(x.device)
        model = fused_eval_view(self.model)
        best, best_score = self._run(model, x, y, gen, score=self.config.restarts > 1)
        for _ in range(self.config.restarts - 1):
            todo = best_score < torch.inf
            if not todo.any():
                break
            cand, score = self._run(model, x[todo], y[todo], gen)
            better = score > best_score[todo]
            idx = todo.nonzero().squeeze(1)[better]
            best[idx], best_score[idx] = cand[better], score[better]
        return best
