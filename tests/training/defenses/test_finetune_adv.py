import pytest
import torch

from training.attacks import FGSM
from training.checkpoint import load_model
from training.defenses import create_defense
from training.trainer import TrainConfig


@pytest.mark.slow
def test_finetune_on_a_premade_fgsm_set_resists_that_set(tmp_path, defense_splits, standard_run):
    base, _ = load_model(standard_run)
    x, y = defense_splits.test.x, defense_splits.test.y
    x_adv = FGSM(base, eps=0.1)(x, y)  # made once, from the base model: the inoculation setting
    metrics = create_defense("finetune-adv", {"base_run": str(standard_run), "attack": "fgsm"}).fit(
        "mnist-shallow", defense_splits, TrainConfig(epochs=1, batch_size=64, lr=3e-3), tmp_path)
    tuned, _ = load_model(tmp_path)
    with torch.no_grad():
        before = (base(x_adv).argmax(1) == y).float().mean().item()
        after = (tuned(x_adv).argmax(1) == y).float().mean().item()
    assert after >= before + 0.15, (before, after)
    assert metrics["train_size"] == 2 * len(defense_splits.train)  # clean + adversarial
    assert metrics["adversarial_set_seconds"] > 0


def test_finetune_adv_needs_a_base_run(defense_splits, tmp_path):
    with pytest.raises(ValueError, match="base_run"):
        create_defense("finetune-adv").fit("mnist-shallow", defense_splits, TrainConfig(), tmp_path)
