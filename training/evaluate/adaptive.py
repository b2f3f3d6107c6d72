"""Adaptive attacks on a whole defended bundle (Carlini & Wagner 2017, "Adversarial Examples Are
Not Easily Detected"; Tramer et al. 2020, "On Adaptive Attacks to Adversarial Example Defenses").

The attacker knows everything in the bundle: the primary, the reference, the fallback, every
detector with its threshold, the policy and the action. Each variant is L-inf PGD on the
bundle's PyTorch twin (`training.evaluate.twin`) with a different loss; per image, the first
point the twin answers wrongly is kept, and the caller checks it on the served ONNX pipeline.

Variants (`VARIANTS`):
- `evade`: fool the primary (toward one of its classes, never mia-vote's "adversarial") while
  keeping every detector's score under its threshold (a hinge penalty, weight `penalty`, on each
  detector's differentiable excess, `BundleTwin.guard_terms`: for mia-vote a surrogate of the
  hard vote share), so the primary's wrong answer is served unflagged;
- `fallback`: fool the fallback and the primary together, so the answer is wrong whichever way
  the guard routes it;
- `served`: fool the served answer itself (the gradient follows the branch the policy takes).

Args: eps (L-inf), steps, alpha (step; default 2.5 eps / steps), restarts (random starts;
each restart attacks only the images still standing), penalty, kappa (margin kept once fooled).
Example: `x_adv = adaptive_pgd(twin, x, y, "evade", eps=0.1, steps=100, restarts=2, penalty=10)`
"""
from __future__ import annotations

import torch

from training.evaluate.twin import BundleTwin

VARIANTS = ("evade", "fallback", "served")


def margin(logits: torch.Tensor, y: torch.Tensor, kappa: float) -> torch.Tensor:
    """z_y - max_{k != y} z_k, floored at -kappa (below zero: misclassified)."""
    true = logits.gather(1, y[:, None])[:, 0]
    other = logits.clone()
    other.scatter_(1, y[:, None], float("-inf"))
    return torch.clamp(true - other.max(dim=1).values, min=-kappa)


def _loss_and_served(twin: BundleTwin, x: torch.Tensor, y: torch.Tensor, variant: str, penalty: float,
                     kappa: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-image loss to minimise, the served answer's class at `x`), from one pass of each model."""
    logits = twin.primary(x)
    probs = torch.softmax(logits, dim=1)
    scores, excess = twin.guard_terms(x, probs) if twin.detectors else (None, None)
    routed = twin.routes()
    fallback_logits = twin.fallback(x) if routed or (variant == "fallback" and twin.fallback is not None) else None
    served = twin.route(logits, scores, fallback_logits) if routed else logits
    if variant == "served":
        loss = margin(served, y, kappa)
    elif variant == "fallback":
        loss = margin(fallback_logits if fallback_logits is not None else logits, y, kappa) + margin(logits, y, kappa)
    else:
        loss = margin(logits, y, kappa)
        if excess is not None:  # push each score safely under its threshold
            loss = loss + penalty * excess.sum(dim=1)
    return loss, served.detach().argmax(dim=1)


def adaptive_pgd(twin: BundleTwin, x: torch.Tensor, y: torch.Tensor, variant: str, eps: float = 0.1,
                 steps: int = 100, alpha: float | None = None, restarts: int = 1, penalty: float = 10.0,
                 kappa: float = 2.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Adversarial images for `variant` (see the module docstring); pixels in [0, 1]."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown adaptive variant {variant!r}; known: {', '.join(VARIANTS)}")
    alpha = 2.5 * eps / steps if alpha is None else alpha
    best = x.clone()
    standing = torch.ones(len(x), dtype=torch.bool)
    for _ in range(restarts):
        idx = standing.nonzero()[:, 0]
        if len(idx) == 0:
            break
        x0, y0 = x[idx], y[idx]
        noise = torch.rand(x0.shape, generator=generator) * 2 - 1
        x_adv = torch.clamp(x0 + eps * noise, 0, 1)
        for step in range(steps + 1):
            x_adv.requires_grad_(True)
            loss, served = _loss_and_served(twin, x_adv, y0, variant, penalty, kappa)
            with torch.no_grad():  # keep the first point the twin serves wrongly
                hit = (served != y0) & standing[idx]
                best[idx[hit]] = x_adv[hit].detach()
                standing[idx[hit]] = False
            if step == steps:
                break
            grad, = torch.autograd.grad(loss.sum(), x_adv)
            with torch.no_grad():
                x_adv = x_adv - alpha * grad.sign()
                x_adv = torch.clamp(x0 + torch.clamp(x_adv - x0, -eps, eps), 0, 1)
        with torch.no_grad():  # images never fooled keep the last point (checked by the caller)
            still = standing[idx]
            best[idx[still]] = x_adv[still].detach()
    return best.detach()
