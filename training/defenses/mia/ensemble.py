"""Paper 002's MIA ensemble: bagged members with an extra "adversarial" class, hard majority vote.

Each member is an (K+1)-way classifier (K classes plus "adversarial" at index K). The ensemble
counts one hard vote per member (its argmax) and decides:

- a class with a strict majority (more than half of the votes) always wins: the vote counts
  decide, member confidences cannot overturn them (this is not soft voting);
- otherwise the plurality wins; a tie between the classes with the most votes is broken by
  `tie_break`: 'probability' (default) -> the tied class with the higher mean member
  probability; 'adversarial' -> the input is declared adversarial (the members disagree).

Both rules are one formula, exportable to ONNX: score_j = votes_j + 0.5 * mean_prob_j
(a vote difference of 1 outweighs any probability difference), plus M + 1 on the adversarial
class where the top vote count is tied and tie_break == 'adversarial'. `forward` returns
log(score / sum(score)), so argmax is the decision and softmax gives the (smoothed) vote
shares. As a detector the score is the share of votes for "adversarial" (`adversarial_score`).
"""
from __future__ import annotations

import torch
from torch import nn

from training.models.registry import ModelSpec, create_model

TIE_BREAKS = ("probability", "adversarial")


def majority_vote(member_logits: torch.Tensor, tie_break: str = "probability") -> tuple[torch.Tensor, torch.Tensor]:
    """M x N x K member logits -> (votes N x K, decision scores N x K; argmax = the decision).

    The adversarial class is the last one (index K - 1).
    """
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"unknown tie_break {tie_break!r}; known: {', '.join(TIE_BREAKS)}")
    m, _, k = member_logits.shape
    classes = torch.arange(k, device=member_logits.device)
    picks = member_logits.argmax(dim=2)  # M x N
    votes = (picks.unsqueeze(-1) == classes).to(member_logits.dtype).sum(dim=0)
    mean_prob = torch.softmax(member_logits, dim=2).mean(dim=0)
    scores = votes + 0.5 * mean_prob
    if tie_break == "adversarial":
        top = votes.max(dim=1, keepdim=True).values
        tied = ((votes == top).to(votes.dtype).sum(dim=1, keepdim=True) > 1).to(votes.dtype)
        scores = scores + tied * (m + 1) * (classes == k - 1).to(votes.dtype)
    return votes, scores


class MIAEnsemble(nn.Module):
    """Majority vote over members; `forward(x)` -> N x (K+1) decision logits (see module doc).

    Example: `ensemble = MIAEnsemble([eat1, eat2, eat3]); flagged = ensemble(x).argmax(1) == 10`
    """

    def __init__(self, members: list[nn.Module], tie_break: str = "probability") -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if tie_break not in TIE_BREAKS:
            raise ValueError(f"unknown tie_break {tie_break!r}; known: {', '.join(TIE_BREAKS)}")
        self.members = nn.ModuleList(members)
        self.tie_break = tie_break

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x) for member in self.members])

    def vote(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return majority_vote(self.member_logits(x), self.tie_break)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, scores = self.vote(x)
        return torch.log(scores / scores.sum(dim=1, keepdim=True))

    def adversarial_score(self, x: torch.Tensor) -> torch.Tensor:
        """Share of members voting "adversarial", N values in [0, 1]."""
        votes, _ = self.vote(x)
        return votes[:, -1] / len(self.members)

    def soft_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable surrogate for adaptive attacks: log of the mean member probability."""
        logp = torch.log_softmax(self.member_logits(x), dim=2)
        return torch.logsumexp(logp, dim=0) - torch.log(torch.tensor(float(len(self.members))))


class SoftEnsemble(nn.Module):
    """`ensemble.soft_log_probs` as a model, for gradient attacks against the whole ensemble."""

    def __init__(self, ensemble: MIAEnsemble) -> None:
        super().__init__()
        self.ensemble = ensemble

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ensemble.soft_log_probs(x)


def mia_ensemble(spec: ModelSpec) -> MIAEnsemble:
    """The model registry's "mia-ensemble" (registered by `training.defenses`).

    spec.options: members (list of ModelSpec dicts), tie_break ('probability')."""
    specs = [ModelSpec.from_dict(m) for m in spec.options.get("members", [])]
    for member in specs:
        if member.num_classes != spec.num_classes:
            raise ValueError(f"member {member.name} has {member.num_classes} classes, "
                             f"the ensemble {spec.num_classes}")
    return MIAEnsemble([create_model(m) for m in specs], spec.options.get("tie_break", "probability"))
