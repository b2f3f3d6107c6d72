import pytest
import torch

from training.checkpoint import load_model
from training.defenses import create_defense
from training.defenses.fast_at import RobustEarlyStop, fgsm_random_start


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory, defense_splits, train_config, one_thread):
    out = tmp_path_factory.mktemp("fast-at")
    with one_thread():
        metrics = create_defense("fast-at", {"eps": "0.1", "holdout": "200", "holdout_steps": "5"}).fit(
            "mnist-shallow", defense_splits, train_config, out)
    return out, metrics


@pytest.mark.slow
def test_fast_at_beats_standard_under_pgd(fast_run, robust_accuracy, standard_pgd_accuracy):
    out, metrics = fast_run
    robust = robust_accuracy(load_model(out)[0])
    assert robust >= standard_pgd_accuracy + 0.08, (robust, standard_pgd_accuracy)
    assert len(metrics["holdout_pgd_accuracy"]) == 2  # one held-out PGD check per epoch
    assert (out / "fast_at_state.pt").exists()


def test_fgsm_step_from_a_random_start_stays_in_the_ball(standard_run, defense_splits):
    model, _ = load_model(standard_run)
    x, y = defense_splits.test.x[:32], defense_splits.test.y[:32]
    x_adv = fgsm_random_start(model, x, y, eps=0.1, step=0.125, seed=3)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert not torch.equal(x_adv, fgsm_random_start(model, x, y, eps=0.1, step=0.125, seed=4))


@pytest.mark.slow
def test_collapse_of_heldout_pgd_accuracy_restores_the_best_weights(fast_run, defense_splits):
    model, _ = load_model(fast_run[0])
    stopper = RobustEarlyStop(defense_splits.val.take(200), eps=0.1, steps=5, drop=0.1)
    assert not stopper.check(model)
    best = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():  # what catastrophic overfitting looks like: robustness gone
        for p in model.parameters():
            p.add_(torch.randn_like(p) * p.abs().mean() * 3)
    assert stopper.robust_accuracy(model) < stopper.best_accuracy - 0.1
    assert stopper.check(model)
    assert stopper.stopped_after == 2 and stopper.best_epoch == 1
    assert all(torch.equal(v, best[k]) for k, v in model.state_dict().items())
