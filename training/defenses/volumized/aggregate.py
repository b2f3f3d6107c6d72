"""How the 3D CNN's per-slice class scores (N x Z x K) become one answer per image (N x K).

- 'mean_log_prob' (paper 004's choice, the default): mean over slices of log-softmax;
- 'mean_prob': log of the mean slice probability;
- 'mean_logits': mean of the raw slice logits;
- 'trimmed_mean': per class, the mean of the slice log-probabilities left after dropping the
  `trim` lowest and the `trim` highest (a few slices cannot drag a class far);
- 'vote': each slice votes for its argmax class (or abstains when its top probability is below
  `abstain`, default 0: never); the output is
  log((votes + p / 2) / (Z + 1/2)) with p the mean slice probability, a log-distribution whose
  argmax is the majority (p / 2 < 1 vote only breaks ties) and whose values still move with
  the slices' confidence (black-box attacks get a signal, the vote decides).

With a depth kernel of 1 (slices independent until here) and a slice order no input can
change, a perturbation that touches k slices changes at most k votes (an abstaining slice that
starts voting, or a vote that moves, shifts the margin by at most 2 each): see `certify`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

AGGREGATIONS = ("mean_log_prob", "mean_prob", "mean_logits", "trimmed_mean", "vote")


def vote_counts(slice_logits: torch.Tensor, abstain: float = 0.0) -> torch.Tensor:
    """N x Z x K scores -> N x K float vote counts: each slice votes for its argmax class, unless
    its top probability is below `abstain`."""
    k = slice_logits.shape[-1]
    winners = slice_logits.argmax(dim=-1, keepdim=True)
    classes = torch.arange(k, device=slice_logits.device)
    votes = (winners == classes).to(slice_logits.dtype)
    if abstain > 0:
        confident = F.softmax(slice_logits, dim=-1).amax(dim=-1, keepdim=True) >= abstain
        votes = votes * confident.to(votes.dtype)
    return votes.sum(dim=1)


def trimmed_mean(log_probs: torch.Tensor, trim: int) -> torch.Tensor:
    """Mean over slices (dim 1) of N x Z x K after dropping the `trim` lowest and highest."""
    z = log_probs.shape[1]
    if not 0 <= 2 * trim < z:
        raise ValueError(f"trim must satisfy 0 <= 2 * trim < Z = {z}, got {trim}")
    ranked = log_probs.sort(dim=1).values
    return ranked[:, trim:z - trim].mean(dim=1)


def aggregate(slice_logits: torch.Tensor, aggregation: str = "mean_log_prob", trim: int = 4,
              abstain: float = 0.0) -> torch.Tensor:
    """N x Z x K slice scores -> N x K image scores (see the module docstring)."""
    if aggregation == "mean_log_prob":
        return F.log_softmax(slice_logits, dim=-1).mean(dim=1)
    if aggregation == "mean_prob":
        z = slice_logits.shape[1]
        return torch.logsumexp(F.log_softmax(slice_logits, dim=-1), dim=1) - math.log(z)
    if aggregation == "mean_logits":
        return slice_logits.mean(dim=1)
    if aggregation == "trimmed_mean":
        return trimmed_mean(F.log_softmax(slice_logits, dim=-1), trim)
    if aggregation == "vote":
        z = slice_logits.shape[1]
        soft = F.softmax(slice_logits, dim=-1).mean(dim=1)
        counts = vote_counts(slice_logits, abstain)
        return torch.log((counts + 0.5 * soft) / (counts.sum(dim=1, keepdim=True) + 0.5))
    raise ValueError(f"unknown aggregation {aggregation!r}; known: {', '.join(AGGREGATIONS)}")
