"""Per-sample attack losses; each is to be *maximized* by an untargeted attacker."""
from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("ce", "margin", "dlr")


def _other_max(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    masked = logits.clone()
    masked.scatter_(1, y[:, None], float("-inf"))
    return masked.max(dim=1).values


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini-Wagner margin: max_{j != y} z_j - z_y (positive once misclassified)."""
    return _other_max(logits, y) - logits.gather(1, y[:, None]).squeeze(1)


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Croce & Hein's difference of logits ratio: shift- and scale-invariant margin."""
    top = logits.sort(dim=1, descending=True).values
    scale = (top[:, 0] - top[:, 2]).clamp_min(1e-12)
    return margin_loss(logits, y) / scale


def targeted_dlr_loss(logits: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    top = logits.sort(dim=1, descending=True).values
    scale = (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3])).clamp_min(1e-12)
    return (logits.gather(1, t[:, None]).squeeze(1) - _other_max(logits, t)) / scale


def attack_loss(logits: torch.Tensor, y: torch.Tensor, kind: str = "ce",
                targeted: bool = False) -> torch.Tensor:
    """The per-sample objective to ascend. Targeted: `y` are targets and the sign flips here,
    in one place."""
    if kind == "ce":
        loss = F.cross_entropy(logits, y, reduction="none")
        return -loss if targeted else loss
    if kind == "margin":
        loss = margin_loss(logits, y)
        return -loss if targeted else loss
    if kind == "dlr":
        return targeted_dlr_loss(logits, y) if targeted else dlr_loss(logits, y)
    raise KeyError(f"unknown loss {kind!r}; known: {', '.join(LOSSES)}")


def succeeded(logits: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Per-sample success: reached the target, or left the true class."""
    pred = logits.argmax(dim=1)
    return pred == y if targeted else pred != y
