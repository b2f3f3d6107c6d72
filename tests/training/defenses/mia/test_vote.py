"""The MIA ensemble's vote: a true (hard) majority, documented ties, one ONNX graph."""
import pytest
import torch

from training.models import ModelSpec, create_model
from training.defenses.mia.ensemble import MIAEnsemble, majority_vote

ADV = 10


pytestmark = pytest.mark.usefixtures("one_thread_module")


def _logits(*rows):
    """One member per row: (class, logit) pairs on top of a flat -5 background, 11 classes."""
    out = torch.full((len(rows), 1, 11), -5.0)
    for m, picks in enumerate(rows):
        for c, value in picks:
            out[m, 0, c] = value
    return out


def test_majority_beats_a_confident_minority():
    # member 0 is certain of class 3; members 1 and 2 barely prefer class 5
    logits = _logits([(3, 30.0)], [(5, 1.0), (3, 0.9)], [(5, 1.0), (3, 0.9)])
    votes, scores = majority_vote(logits)
    soft = torch.softmax(logits, 2).mean(0)
    assert soft.argmax(1).item() == 3            # averaging probabilities would say 3
    assert scores.argmax(1).item() == 5          # the vote says 5
    assert votes[0, 5] == 2 and votes[0, 3] == 1


def test_adversarial_majority_flags_and_scores_the_vote_share():
    logits = _logits([(ADV, 2.0)], [(ADV, 2.0)], [(1, 9.0)])
    votes, scores = majority_vote(logits)
    assert scores.argmax(1).item() == ADV and votes[0, ADV] == 2


def test_ties_follow_the_documented_rule():
    # 1-1-1: no majority; class 2's voter is the most confident overall
    logits = _logits([(2, 8.0)], [(4, 1.0)], [(ADV, 1.0)])
    _, by_probability = majority_vote(logits, "probability")
    _, by_flag = majority_vote(logits, "adversarial")
    assert by_probability.argmax(1).item() == 2
    assert by_flag.argmax(1).item() == ADV
    # 2-2 between two classes with four members
    logits = _logits([(1, 3.0)], [(1, 3.0)], [(7, 9.0)], [(7, 9.0)])
    assert majority_vote(logits, "probability")[1].argmax(1).item() == 7
    assert majority_vote(logits, "adversarial")[1].argmax(1).item() == ADV


def test_vote_rule_on_random_members():
    torch.manual_seed(0)
    for m in (3, 4, 5):
        logits = torch.randn(m, 2000, 11) * 3
        votes, scores = majority_vote(logits)
        decision = scores.argmax(1)
        top = votes.max(1).values
        assert torch.equal(votes.sum(1), torch.full((2000,), float(m)))
        assert (votes.gather(1, decision[:, None]).squeeze(1) == top).all()      # always a plurality
        strict = top > m / 2
        assert torch.equal(decision[strict], votes.argmax(1)[strict])             # majority always wins
        mean_prob = torch.softmax(logits, 2).mean(0)
        tied = (votes == top[:, None]).sum(1) > 1
        masked = torch.where(votes == top[:, None], mean_prob, torch.full_like(mean_prob, -1.0))
        assert torch.equal(decision[tied], masked.argmax(1)[tied])                # ties: mean probability
        flagged = majority_vote(logits, "adversarial")[1].argmax(1)
        assert (flagged[tied] == ADV).all() and torch.equal(flagged[~tied], decision[~tied])


def test_ensemble_outputs_vote_shares_and_rebuilds_from_its_spec(fmnist_small):
    members = [ModelSpec(arch, num_classes=11, mean=(0.286,), std=(0.353,)).to_dict()
               for arch in ("eat1", "eat2", "eat3")]
    spec = ModelSpec("mia-ensemble", num_classes=11, mean=(0.286,), std=(0.353,),
                     options={"members": members, "tie_break": "probability"})
    torch.manual_seed(0)
    ensemble = create_model(spec).eval()
    assert isinstance(ensemble, MIAEnsemble) and len(ensemble.members) == 3
    x = fmnist_small.test.x[:64]
    with torch.no_grad():
        probs = torch.softmax(ensemble(x), 1)
        votes, _ = ensemble.vote(x)
        score = ensemble.adversarial_score(x)
    assert torch.allclose(probs.sum(1), torch.ones(64))
    assert (probs - votes / 3).abs().max() < 0.5 / 3.5 + 1e-6   # a vote share, smoothed by < 1/7
    assert torch.equal(score, votes[:, ADV] / 3)


def test_one_onnx_graph_with_the_vote_matches_pytorch(fmnist_small, tmp_path):
    from training.defenses.mia.export import export_mia_onnx, mia_onnx_parity

    torch.manual_seed(1)
    members = [create_model(arch, num_classes=11, mean=(0.286,), std=(0.353,)) for arch in ("eat1", "eat2", "eat3")]
    ensemble = MIAEnsemble(members).eval()
    path = export_mia_onnx(ensemble, tmp_path / "mia.onnx", (1, 28, 28))
    x = torch.cat([fmnist_small.test.x[:200], torch.rand(56, 1, 28, 28)])
    parity = mia_onnx_parity(ensemble, path, x)
    assert parity["decisions_equal"] == 1.0 and parity["votes_equal"]
    assert parity["max_abs_score_diff"] == 0.0 and parity["max_abs_logit_diff"] < 1e-4
