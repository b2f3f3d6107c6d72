"""Target selection for targeted attacks: random other class, least likely, every other class.

Every targeted attack takes its targets in place of labels (`attack(x, targets)`); these
functions choose them. Paper 000's Algorithm 1 attacks each image toward each of the 9 other
classes: `every_other_class` expands a batch into those (image, label, target) triples.
"""
from __future__ import annotations

import torch
from torch import nn

from training.attacks._base import eval_mode

TARGET_MODES = ("random", "least-likely")


def random_targets(y: torch.Tensor, num_classes: int, seed: int = 0) -> torch.Tensor:
    """A uniformly random class other than `y[i]` for each sample (deterministic under `seed`).

    Example: `t = random_targets(y, 10, seed=0); x_adv = PGD(model, targeted=True)(x, t)`
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    shift = torch.randint(1, num_classes, (len(y),), generator=gen).to(y.device)
    return (y + shift) % num_classes


@torch.no_grad()
def least_likely_targets(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """The class the model finds least likely for each clean image (Kurakin et al.'s 'll')."""
    with eval_mode(model):
        logits = torch.cat([model(chunk) for chunk in x.split(batch_size)])
    return logits.argmin(dim=1)


def every_other_class(x: torch.Tensor, y: torch.Tensor, num_classes: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Repeat each image once per other class.

    Returns `(x_rep, y_rep, targets)` with `len(x) * (num_classes - 1)` rows, image-major:
    rows `i*(K-1) .. (i+1)*(K-1)-1` are image i toward every class but `y[i]`, ascending.
    """
    k = num_classes
    offsets = torch.arange(1, k, device=y.device)
    targets = ((y[:, None] + offsets[None, :]) % k).sort(dim=1).values.reshape(-1)
    return x.repeat_interleave(k - 1, dim=0), y.repeat_interleave(k - 1), targets


def select_targets(mode: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   num_classes: int, seed: int = 0) -> torch.Tensor:
    """Targets by name: 'random' (another class), 'least-likely', or a class index ('3')."""
    if mode == "random":
        return random_targets(y, num_classes, seed)
    if mode in ("least-likely", "least_likely", "ll"):
        return least_likely_targets(model, x)
    if mode.isdigit():
        target = int(mode)
        if not 0 <= target < num_classes:
            raise ValueError(f"target class must be in 0..{num_classes - 1}, got {target}")
        return torch.full_like(y, target)
    raise ValueError(f"unknown target mode {mode!r}; known: {', '.join(TARGET_MODES)} or a class index")
