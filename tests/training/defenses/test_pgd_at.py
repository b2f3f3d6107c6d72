import json

import pytest
import torch

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


def test_an_interrupted_pgd_at_run_resumes_to_the_uninterrupted_weights(tmp_path, defense_splits):
    """The per-batch attack seeds continue across --resume (they used to restart at 1, so a
    resumed run trained on other random starts than an uninterrupted one)."""
    from training.trainer import TrainConfig

    small = defense_splits.__class__(train=defense_splits.train.take(256), val=defense_splits.val.take(64),
                                     test=defense_splits.test.take(64), labels=defense_splits.labels,
                                     name=defense_splits.name)
    options = {"eps": "0.1", "steps": "2"}
    one, two = (TrainConfig(epochs=n, batch_size=64, schedule="constant", lr=1e-3) for n in (1, 2))
    create_defense("pgd-at", options).fit("mnist-shallow", small, two, tmp_path / "straight")
    create_defense("pgd-at", options).fit("mnist-shallow", small, one, tmp_path / "resumed")
    create_defense("pgd-at", options).fit("mnist-shallow", small, two, tmp_path / "resumed", resume=True)
    straight, resumed = load_model(tmp_path / "straight")[0], load_model(tmp_path / "resumed")[0]
    for name, a in straight.state_dict().items():
        assert torch.equal(a, resumed.state_dict()[name]), name


def test_pgd_at_config_is_validated():
    with pytest.raises(ValueError, match="eps must be > 0"):
        create_defense("pgd-at", {"eps": "-0.1"})
    with pytest.raises(ValueError, match="known: alpha, clean_weight, eps"):
        create_defense("pgd-at", {"epsilon": "0.1"})
    with pytest.raises(KeyError, match="known: distill, fast-at, filter-finetune"):
        create_defense("pgd-att")
