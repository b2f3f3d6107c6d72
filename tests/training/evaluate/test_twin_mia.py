"""The MIA ensemble's twin in a composed bundle: its hard vote share is the served mia-vote score,
and the adaptive `evade` attack, following the twin's surrogate for the vote, gets past the vote
far more often than the detector-ignorant PGD on the primary at the same budget."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import training.evaluate.twin as twin_module
from serving.bundle import sha256_file
from serving.pipeline import Pipeline
from training.attacks import create_attack
from training.defenses.mia.ensemble import MIAEnsemble
from training.evaluate.adaptive import adaptive_pgd
from training.evaluate.twin import BundleTwin, Gradient, vote_excess, vote_share

# The test ensemble is tiny (tests/conftest.py's mia_run): ~6% of clean images get all three
# "adversarial" votes, so at a 5% verdict its threshold would be 1.0 and it could never fire; at
# 15% the joint calibration lets it fire on unanimous votes (threshold 2/3).
TARGET = 0.15
N, EPS, STEPS, PENALTY = 100, 0.1, 20, 10.0

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread_module")]


@pytest.fixture(scope="module")
def mia_bundle(trained_run, robust_run, mia_run, tmp_path_factory):
    """configs/bundles/fmnist-mia.yaml in small: trained_run answers, robust_run is reference and
    fallback, disagreement + mia-vote (the MIA run's ensemble) calibrated jointly, action fallback."""
    from training.export.compose import BundleConfig, DetectorEntry, compose_bundle

    config = BundleConfig(name="fmnist-mia", primary=trained_run, fallback=robust_run, reference=robust_run,
                          mia_run=mia_run.out, detectors=(DetectorEntry("disagreement"), DetectorEntry("mia-vote")),
                          target_fpr=TARGET, action="fallback", card="none", parity_images=64)
    return compose_bundle(config, tmp_path_factory.mktemp("mia-store"))


@pytest.fixture(scope="module")
def system(mia_bundle):
    """(served pipeline, twin, mia-vote's column among the detectors)."""
    twin = BundleTwin.load(mia_bundle)
    return Pipeline.load(mia_bundle), twin, [d.name for d in twin.detectors].index("mia-vote")


@pytest.fixture(scope="module")
def attacked(system, fmnist_small):
    """The first N test images, clean and attacked at the same budget (L-inf EPS, STEPS steps):
    PGD on the primary alone, `evade` with the surrogate, `evade` with the surrogate zeroed."""
    _, twin, _ = system
    x, y = fmnist_small.test.x[:N], fmnist_small.test.y[:N]
    torch.manual_seed(0)
    images = {"clean": x, "pgd": create_attack("pgd", twin.primary, eps=EPS, alpha=2.5 * EPS / STEPS, steps=STEPS)(x, y)}
    torch.manual_seed(0)
    images["evade"] = adaptive_pgd(twin, x, y, "evade", EPS, STEPS, penalty=PENALTY)
    with pytest.MonkeyPatch.context() as patch:  # the attacker ignores the vote (no gradient from it)
        patch.setattr(twin_module, "vote_excess", lambda logits, threshold: logits.new_zeros(logits.shape[1]))
        torch.manual_seed(0)
        images["evade, vote ignored"] = adaptive_pgd(twin, x, y, "evade", EPS, STEPS, penalty=PENALTY)
    return images


def test_the_bundle_carries_the_ensembles_twin(mia_bundle, mia_run, system):
    twins = {t["of"]: t for t in json.loads((mia_bundle / "manifest.json").read_text())["twins"]}
    assert set(twins) == {"model.onnx", "fallback.onnx", "mia.onnx"}
    assert sha256_file(mia_bundle / twins["mia.onnx"]["file"]) == twins["mia.onnx"]["sha256"]
    assert twins["mia.onnx"]["sha256"] == sha256_file(mia_run.out / "model.pt")
    _, twin, _ = system
    ensemble = twin.owned("mia.onnx")
    assert isinstance(ensemble, MIAEnsemble) and len(ensemble.members) == 3
    assert twin.differentiable() == Gradient.SURROGATE and twin.differentiable()


@pytest.mark.parametrize("kind", ["clean", "pgd", "evade"])
def test_twin_parity_with_the_served_pipeline(system, attacked, kind):
    pipeline, twin, _ = system
    parity = twin.parity(pipeline, attacked[kind].numpy())
    assert parity["score_diff"]["mia-vote"] == 0.0, parity
    assert parity["max_score_diff"] < 1e-5 and parity["max_prob_diff"] < 1e-4, parity
    assert parity["answers_equal"] == 1.0 and parity["flags_equal"] == 1.0, parity


@pytest.mark.parametrize("kind", ["clean", "pgd"])
def test_the_twins_hard_score_is_the_served_score(system, attacked, kind):
    """The vote share, element by element, from `scores` and from `guard_terms` alike."""
    pipeline, twin, j = system
    x = attacked[kind]
    served = pipeline.run(x.numpy()).guard.outcomes[j].scores
    with torch.no_grad():
        hard = twin.scores(x)[:, j].numpy()
        terms, _ = twin.guard_terms(x)
    np.testing.assert_array_equal(hard, served)
    np.testing.assert_array_equal(terms[:, j].numpy(), served)
    assert np.isin(served, np.arange(4, dtype=np.float32) / 3).all()


def test_vote_excess_is_zero_exactly_when_the_vote_is_safely_under_its_threshold():
    """Random member logits (3 members, 10 classes + "adversarial", the adversarial logit shifted
    per image so that every vote count occurs): wherever the surrogate is zero the vote share is
    at or under the threshold, wherever the share is over it the surrogate is positive, and its
    gradient reaches the logits."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 2000, 11, generator=generator) * 3
    logits[..., -1] += torch.empty(2000).uniform_(-8, 8, generator=generator)
    logits.requires_grad_(True)
    for threshold in (0.0, 1 / 3, 2 / 3):
        share = vote_share(logits.detach(), "probability")
        excess = vote_excess(logits, threshold)
        assert (share[excess == 0] <= threshold + 1e-6).all()
        over = share > threshold + 1e-6
        assert over.any() and (excess[over] > 0).all()
        assert 0 < (excess == 0).sum() < len(excess)
        grad, = torch.autograd.grad(excess.sum(), logits)
        assert grad.abs().sum() > 0
    assert (vote_excess(logits, 1.0) == 0).all()  # a vote that can never flag costs nothing


def test_evade_with_the_surrogate_gets_past_the_vote(system, attacked, fmnist_small):
    """Served mia-vote flag rate: evade (surrogate) far under PGD on the primary at the same
    budget, and under evade with the vote's surrogate zeroed; the attack still fools the
    primary on most images."""
    pipeline, _, j = system
    flagged = {k: float(pipeline.run(x.numpy()).guard.outcomes[j].flagged.mean()) for k, x in attacked.items()}
    assert flagged["evade"] < flagged["pgd"] - 0.2, flagged
    assert flagged["evade"] < flagged["evade, vote ignored"] - 0.2, flagged
    y = fmnist_small.test.y[:N].numpy()
    primary_correct = pipeline.primary.logits(attacked["evade"].numpy()).argmax(axis=1) == y
    assert primary_correct.mean() < 0.5, primary_correct.mean()
