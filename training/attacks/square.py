"""Square attack (Andriushchenko et al., 2020), score-based black-box, L-inf."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from training.attacks._base import Attack, AttackConfig, eval_mode
from training.attacks._fusion import fused_eval_view
from training.attacks._losses import attack_loss, succeeded

log = logging.getLogger(__name__)

# (fraction of the query budget, divisor of p_init): the paper's piecewise-constant schedule
_SCHEDULE = ((0.001, 1), (0.005, 2), (0.02, 4), (0.05, 8), (0.1, 16), (0.2, 32), (0.4, 64),
             (0.6, 128), (0.8, 256), (1.0, 512))


@dataclass(frozen=True)
class SquareConfig(AttackConfig):
    eps: float = 0.1
    max_queries: int = 5000
    p_init: float = 0.8
    loss: str = "margin"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_queries < 1:
            raise ValueError(f"max_queries must be >= 1, got {self.max_queries}")
        if not 0 < self.p_init <= 1:
            raise ValueError(f"p_init must be in (0, 1], got {self.p_init}")
        if self.loss not in ("margin", "ce"):
            raise ValueError(f"loss must be 'margin' or 'ce', got {self.loss!r}")


@dataclass
class SquareResult:
    """Adversarial images, per-image success (checked on the model itself) and the model
    queries spent on each image."""

    x_adv: torch.Tensor
    success: torch.Tensor
    queries: torch.Tensor


def _p_at(p_init: float, it: int, max_queries: int) -> float:
    frac = it / max_queries
    for upto, div in _SCHEDULE:
        if frac <= upto:
            return p_init / div
    return p_init / 512


class Square(Attack):
    r"""Square attack: random search over square-shaped updates at the corners of the L-inf ball.

    Starts from vertical stripes of +-eps; each iteration picks, per image, a random square
    whose side follows the paper's schedule (sqrt(p * H * W), p halving from `p_init`),
    sets the perturbation inside it to +-eps per channel, and keeps the change if the loss
    improves. Uses only the model's outputs, so masked or obfuscated gradients do not stop it:
    a defence strong against PGD but weak against Square is masking gradients. Images stop
    spending queries once fooled; `max_queries` per image.

    Args (SquareConfig): eps=0.1, max_queries=5000, p_init=0.8, loss='margin' | 'ce'
        (ascended, as every attack loss here), targeted=False, seed=0.
    Shape: x (N, C, H, W) in [0, 1]; y (N,); returns (N, C, H, W).
    Example: `result = Square(model, eps=0.1, max_queries=1000).run(x, y)`
    """

    Config = SquareConfig
    name = "square"

    def _score(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        return attack_loss(logits, y, self.config.loss, self.config.targeted), \
            succeeded(logits, y, self.config.targeted)

    @torch.no_grad()
    def run(self, x: torch.Tensor, y: torch.Tensor) -> SquareResult:
        cfg = self.config
        x, y = x.detach(), y.detach().to(x.device)
        n, c, h, w = x.shape
        gen = self.generator(x.device)
        ar_h, ar_w = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        with eval_mode(self.model):
            stripes = torch.randint(0, 2, (n, c, 1, w), generator=gen, device=x.device) * 2 - 1
            x_best = (x + cfg.eps * stripes.to(x.dtype)).clamp(0, 1)
            model = fused_eval_view(self.model)
            loss, done = self._score(model, x_best, y)
            queries = torch.ones(n, dtype=torch.long, device=x.device)
            for it in range(1, cfg.max_queries):
                idx = (~done).nonzero().squeeze(1)
                if not len(idx):
                    break
                m = len(idx)
                xi, xb = x[idx], x_best[idx]
                delta = xb - xi
                side = int(round(math.sqrt(_p_at(cfg.p_init, it, cfg.max_queries) * h * w)))
                side = min(max(side, 1), h - 1)
                top = torch.randint(0, h - side + 1, (m,), generator=gen, device=x.device)
                left = torch.randint(0, w - side + 1, (m,), generator=gen, device=x.device)
                in_rows = (ar_h[None] >= top[:, None]) & (ar_h[None] < top[:, None] + side)
                in_cols = (ar_w[None] >= left[:, None]) & (ar_w[None] < left[:, None] + side)
                window = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # (m, 1, h, w)
                sign = torch.randint(0, 2, (m, c, 1, 1), generator=gen, device=x.device) * 2 - 1
                new = cfg.eps * sign.to(x.dtype)
                cand = (xi + torch.where(window, new, delta)).clamp(0, 1)
                # A square that changes nothing wastes a query: flip its sign instead.
                same = ((cand - xb).abs() < 1e-7).logical_or(~window).flatten(1).all(dim=1)
                if same.any():
                    cand[same] = (xi[same] + torch.where(window[same], -new[same], delta[same])).clamp(0, 1)
                cand_loss, cand_ok = self._score(model, cand, y[idx])
                queries[idx] += 1
                better = cand_loss > loss[idx]
                x_best[idx[better]] = cand[better]
                loss[idx[better]] = cand_loss[better]
                done[idx[better]] = cand_ok[better]
                if it % 500 == 0:
                    log.debug("Square query %d: %d/%d fooled", it, int(done.sum()), n)
            success = succeeded(self.model(x_best), y, cfg.targeted)  # on the model itself
        return SquareResult(x_best, success, queries)

    def _perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.run(x, y).x_adv
