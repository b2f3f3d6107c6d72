import pytest
import torch

from training.checkpoint import load_model
from training.defenses import create_defense
from training.defenses.trades import kl_maximizer
from training.trainer import accuracy


@pytest.mark.slow
def test_trades_beats_standard_under_pgd(tmp_path, defense_splits, train_config, robust_accuracy,
                                         standard_pgd_accuracy):
    create_defense("trades", {"beta": "6", "eps": "0.1", "steps": "3"}).fit(
        "mnist-shallow", defense_splits, train_config, tmp_path)
    model, _ = load_model(tmp_path)
    robust = robust_accuracy(model)
    assert robust >= standard_pgd_accuracy + 0.10, (robust, standard_pgd_accuracy)
    assert accuracy(model, defense_splits.test) > 0.6


def test_kl_maximizer_stays_in_the_ball_and_raises_the_divergence(standard_run, defense_splits):
    model, _ = load_model(standard_run)
    x = defense_splits.test.x[:64]
    x_adv = kl_maximizer(model, x, eps=0.1, alpha=0.025, steps=5, seed=0)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        p = torch.softmax(model(x), 1)
        kl = torch.nn.functional.kl_div(torch.log_softmax(model(x_adv), 1), p, reduction="batchmean")
        noise = (x + 0.1 * torch.sign(torch.randn_like(x))).clamp(0, 1)
        kl_noise = torch.nn.functional.kl_div(torch.log_softmax(model(noise), 1), p, reduction="batchmean")
    assert kl > 5 * kl_noise
