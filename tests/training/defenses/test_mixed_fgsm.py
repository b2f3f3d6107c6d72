import pytest

from training.checkpoint import load_model
from training.defenses import create_defense
from training.trainer import accuracy


@pytest.mark.slow
def test_mixed_fgsm_beats_standard_under_fgsm(tmp_path, defense_splits, train_config, standard_run,
                                              robust_accuracy):
    create_defense("mixed-fgsm", {"eps": "0.1"}).fit("mnist-shallow", defense_splits, train_config, tmp_path)
    model, _ = load_model(tmp_path)
    standard, _ = load_model(standard_run)
    assert robust_accuracy(model, "fgsm") >= robust_accuracy(standard, "fgsm") + 0.10
    assert accuracy(model, defense_splits.test) > 0.6
