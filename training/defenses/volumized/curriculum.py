"""Paper 004's curriculum (Deep-CLO): a syllabus that feeds samples from simple to complex.

Ordering the samples *inside* a batch does not change a mean-reduced gradient, so the syllabus
orders the whole epoch instead. Every sample gets a difficulty (a Table 1 metric of the whole
image: entropy standalone, or a distance metric against the training set's mean image) and a
difficulty quantile q in [0, 1] (ascending: low metric = simple; 'descending' flips it).

Pacing g(t) (t in [0, 1], the position in the epoch) is the fraction of the sorted data that
is available at t: sample i becomes available at t_i = g^-1(q_i). Each epoch every sample is
seen exactly once, at a time drawn uniformly in [t_i, 1]; so a batch at t mixes the
not-yet-seen samples among the available ones, simple ones first, and the hardest sample
lands at the end.
- 'none': g = 1 (uniform random order: no curriculum);
- 'linear': g(t) = s + (1 - s) t;
- 'root': g(t) = sqrt(s^2 + (1 - s^2) t);
- 'step': g(t) = s + (1 - s) * floor(t * steps) / (steps - 1), capped at 1;
- 'sorted': the strict order by difficulty (ties in index order), no randomness.
`s` is `start_fraction`. `epochs` > 0 applies the syllabus to the first `epochs` epochs only.
With `stratify` (default) the quantiles are taken within each class, so the early batches of
an epoch hold the easy samples of *every* class rather than whole easy classes (Fashion-MNIST's
sandals and trousers are simpler than its shirts by any of these metrics).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from training.defenses.volumized.metrics import METRICS, STANDALONE, metric_values, sort_key

PACINGS = ("none", "linear", "root", "step", "sorted")


@dataclass(frozen=True)
class SyllabusConfig:
    metric: str = "entropy"
    order: str = "ascending"
    pacing: str = "linear"
    start_fraction: float = 0.25
    steps: int = 4
    epochs: int = 0
    bins: int = 16
    stratify: bool = True

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"unknown syllabus metric {self.metric!r}; known: {', '.join(METRICS)}")
        if self.order not in ("ascending", "descending"):
            raise ValueError(f"syllabus order must be 'ascending' or 'descending', got {self.order!r}")
        if self.pacing not in PACINGS:
            raise ValueError(f"unknown pacing {self.pacing!r}; known: {', '.join(PACINGS)}")
        if not 0.0 < self.start_fraction <= 1.0:
            raise ValueError(f"start_fraction must be in (0, 1], got {self.start_fraction}")
        if self.steps < 2:
            raise ValueError(f"steps must be >= 2, got {self.steps}")
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")


def difficulty(x: torch.Tensor, config: SyllabusConfig, reference: torch.Tensor | None = None,
               batch_size: int = 1024) -> torch.Tensor:
    """Per-image metric (float64, N). Distance metrics compare with `reference` (C x H x W;
    default: the mean of `x`)."""
    rows = x.detach().flatten(1)
    ref = None
    if config.metric not in STANDALONE:
        ref = (reference if reference is not None else x.mean(dim=0)).flatten().unsqueeze(0)
    parts = [metric_values(config.metric, rows[i:i + batch_size], ref, bins=config.bins)
             for i in range(0, len(rows), batch_size)]
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.float64)


def quantiles(values: torch.Tensor, descending: bool = False, groups: torch.Tensor | None = None) -> torch.Tensor:
    """Rank / (n - 1) in [0, 1] within each group (all one group by default): 0 for the
    simplest sample (ties in index order)."""
    if groups is None:
        groups = torch.zeros(len(values), dtype=torch.long)
    q = torch.empty(len(values), dtype=torch.float64)
    for g in torch.unique(groups):
        members = (groups == g).nonzero().squeeze(1)
        ranks = torch.empty(len(members), dtype=torch.float64)
        ranks[torch.argsort(sort_key(values[members], descending))] = torch.arange(
            len(members), dtype=torch.float64)
        q[members] = ranks / max(len(members) - 1, 1)
    return q


def available_at(q: torch.Tensor, config: SyllabusConfig) -> torch.Tensor:
    """t_i = g^-1(q_i): the earliest epoch position at which each sample may be drawn."""
    s = config.start_fraction
    if config.pacing == "linear":
        t = (q - s) / (1 - s) if s < 1 else torch.zeros_like(q)
    elif config.pacing == "root":
        t = (q * q - s * s) / (1 - s * s) if s < 1 else torch.zeros_like(q)
    elif config.pacing == "step":
        level = torch.ceil(((q - s) / (1 - s) * (config.steps - 1)).clamp(min=0)) if s < 1 else torch.zeros_like(q)
        t = level / config.steps
    else:
        t = torch.zeros_like(q)
    return t.clamp(0.0, 1.0)


class Syllabus:
    """`epoch_order(epoch, generator) -> permutation of range(N)` for the trainer.

    Example: `fit(..., epoch_order=Syllabus(train.x, train.y, SyllabusConfig()).epoch_order)`
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None = None,
                 config: SyllabusConfig | None = None) -> None:
        self.config = config if config is not None else SyllabusConfig()
        self.values = difficulty(images, self.config)
        groups = labels if self.config.stratify and labels is not None else None
        self.q = quantiles(self.values, descending=self.config.order == "descending", groups=groups)
        self.start = available_at(self.q, self.config)

    def epoch_order(self, epoch: int, generator: torch.Generator) -> torch.Tensor:
        cfg, n = self.config, len(self.q)
        if cfg.pacing == "none" or (cfg.epochs and epoch >= cfg.epochs):
            return torch.randperm(n, generator=generator)
        if cfg.pacing == "sorted":
            return torch.argsort(self.q, stable=True)
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        when = self.start + (1.0 - self.start) * u
        return torch.argsort(when, stable=True)

    def mean_difficulty_by_position(self, order: torch.Tensor, parts: int = 4) -> list[float]:
        """Mean difficulty quantile of each successive part of an epoch (a check and a log line)."""
        chunks = torch.tensor_split(self.q[order], parts)
        return [float(c.mean()) if len(c) else math.nan for c in chunks]
