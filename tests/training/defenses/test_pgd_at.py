import json

import pytest

from training.checkpoint import load_model
from training.defenses import create_defense
from training.trainer import accuracy


@pytest.mark.slow
def test_pgd_at_beats_standard_under_pgd(tmp_path, defense_splits, train_config, robust_accuracy,
                                         standard_pgd_accuracy):
    metrics = create_defense("pgd-at", {"eps": "0.1", "steps": "3"}).fit(
        "mnist-shallow", defense_splits, train_config, tmp_path)
    model, _ = load_model(tmp_path)
    robust = robust_accuracy(model)
    assert robust >= standard_pgd_accuracy + 0.10, (robust, standard_pgd_accuracy)
    assert accuracy(model, defense_splits.test) > 0.6
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["defense"] == "pgd-at" and saved["defense_config"]["steps"] == 3
    assert metrics["wall_seconds"] > 0


def test_pgd_at_config_is_validated():
    with pytest.raises(ValueError, match="eps must be > 0"):
        create_defense("pgd-at", {"eps": "-0.1"})
    with pytest.raises(ValueError, match="known: alpha, clean_weight, eps"):
        create_defense("pgd-at", {"epsilon": "0.1"})
    with pytest.raises(KeyError, match="known: distill, fast-at, filter-finetune"):
        create_defense("pgd-att")
