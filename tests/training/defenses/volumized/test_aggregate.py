"""Slice-score aggregations a few slices cannot swing: majority vote and trimmed mean."""
import pytest
import torch
import torch.nn.functional as F

from training.defenses.volumized.aggregate import aggregate, trimmed_mean, vote_counts


def test_vote_is_the_majority_and_a_log_distribution():
    torch.manual_seed(0)
    s = torch.randn(50, 16, 10)
    counts = vote_counts(s)
    by_hand = torch.stack([torch.bincount(s[i].argmax(-1), minlength=10) for i in range(50)]).float()
    assert torch.equal(counts, by_hand)
    out = aggregate(s, "vote")
    assert torch.allclose(out.exp().sum(dim=1), torch.ones(50), atol=1e-6)
    strict = (counts.topk(2, dim=1).values[:, 0] > counts.topk(2, dim=1).values[:, 1])
    assert torch.equal(out.argmax(1)[strict], counts.argmax(1)[strict])


def test_vote_tie_is_broken_by_the_mean_probability():
    s = torch.full((1, 4, 3), -5.0)
    s[0, 0, 0], s[0, 1, 0] = 1.0, 1.0     # two slices vote 0, mildly
    s[0, 2, 1], s[0, 3, 1] = 9.0, 9.0     # two slices vote 1, confidently
    assert int(aggregate(s, "vote").argmax()) == 1


def test_trimmed_mean_matches_its_definition_and_bounds_t_wild_slices():
    torch.manual_seed(1)
    lp = F.log_softmax(torch.randn(8, 16, 10), dim=-1)
    expected = lp.sort(dim=1).values[:, 3:13].mean(dim=1)
    assert torch.allclose(trimmed_mean(lp, 3), expected)
    wild = lp.clone()
    wild[:, :3] = torch.where(torch.rand(8, 3, 10) < 0.5, torch.tensor(-1e4), torch.tensor(0.0))
    out = trimmed_mean(wild, 3)
    rest = lp[:, 3:]                       # the 13 untouched slices bound every class's value
    assert (out >= rest.min(dim=1).values - 1e-6).all() and (out <= rest.max(dim=1).values + 1e-6).all()
    with pytest.raises(ValueError, match="trim"):
        trimmed_mean(lp, 8)


def test_unsure_slices_abstain_from_the_vote():
    s = torch.full((1, 5, 3), 0.0)
    s[0, 0, 2] = s[0, 1, 2] = 8.0          # two sure votes for class 2
    s[0, 2:, 0] = 0.5                      # three unsure slices lean to class 0 (top prob ~0.45)
    assert vote_counts(s).tolist() == [[3.0, 0.0, 2.0]]
    assert vote_counts(s, abstain=0.6).tolist() == [[0.0, 0.0, 2.0]]
    assert int(aggregate(s, "vote", abstain=0.6).argmax()) == 2 and int(aggregate(s, "vote").argmax()) == 0
    assert torch.allclose(aggregate(s, "vote", abstain=0.6).exp().sum(), torch.tensor(1.0))
