"""The interface every attack shares: registry, configs, shapes, the model's mode."""
import pytest
import torch

from training.attacks import FGSM, PGD, create_attack, known_attacks
from training.attacks.pgd import PGDConfig
from training.models import ModelSpec, create_model


def test_registry_knows_every_attack_and_lists_names_on_error():
    assert known_attacks() == ["bim", "cw", "fgsm", "gma", "lbfgs", "npixel", "patch", "pgd", "square"]
    with pytest.raises(KeyError, match="unknown attack 'pgdd'; known: bim, cw, fgsm"):
        create_attack("pgdd", None)


def test_configs_are_frozen_and_validated():
    with pytest.raises(ValueError, match="eps must be >= 0, got -0.1"):
        PGDConfig(eps=-0.1)
    with pytest.raises(ValueError, match="norm"):
        PGDConfig(norm="l1")
    cfg = PGDConfig()
    with pytest.raises(Exception):
        cfg.eps = 0.2  # frozen
    for name, bad in [("cw", {"c": 0}), ("npixel", {"pixels": 17}), ("patch", {"scale": 0.5}),
                      ("square", {"p_init": 0}), ("gma", {"tries": 0}), ("lbfgs", {"max_iter": 0})]:
        with pytest.raises(ValueError):
            create_attack(name, None, **bad)


def test_shapes_and_range_are_checked():
    model = create_model(ModelSpec(name="fmnist-cnn"))
    attack = FGSM(model, eps=0.1)
    with pytest.raises(ValueError, match="N x C x H x W"):
        attack(torch.rand(1, 28, 28), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="one label per image"):
        attack(torch.rand(2, 1, 28, 28), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        attack(torch.rand(2, 1, 28, 28) * 2, torch.zeros(2, dtype=torch.long))


def test_model_mode_is_restored_exactly():
    torch.manual_seed(0)
    model = create_model(ModelSpec(name="fmnist-cnn"))
    model.train()
    model[2].eval()  # a mixed state must come back as it was
    before = [m.training for m in model.modules()]
    x, y = torch.rand(4, 1, 28, 28), torch.arange(4)
    PGD(model, eps=0.05, alpha=0.01, steps=2)(x, y)
    assert [m.training for m in model.modules()] == before
    assert all(p.grad is None for p in model.parameters())


def test_attacks_work_under_no_grad_and_are_deterministic():
    torch.manual_seed(0)
    model = create_model(ModelSpec(name="fmnist-cnn")).eval()
    x, y = torch.rand(4, 1, 28, 28), torch.arange(4)
    with torch.no_grad():
        a = PGD(model, eps=0.05, alpha=0.01, steps=3, seed=7)(x, y)
    b = PGD(model, eps=0.05, alpha=0.01, steps=3, seed=7)(x, y)
    assert torch.equal(a, b)
