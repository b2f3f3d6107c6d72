import pytest
import torch

from training.attacks import PGD, random_targets
from training.attacks._losses import succeeded

from .conftest import accuracy, assert_valid


@pytest.fixture(scope="module")
def standard_model(tmp_path_factory):
    """A fully trained standard fmnist-cnn: 2 epochs on 20,000 images (~90% test accuracy).
    The shared 2-epoch/5k-image fixture keeps ~13-15% at eps=0.1 under every attack we tried
    (ours, torchattacks' PGD, Square: its trousers survive), so the issue's "< 10%" is checked
    on a properly trained model."""
    from training.data import DataConfig, load_splits
    from training.models import create_model, model_spec_for
    from training.trainer import TrainConfig, fit

    splits = load_splits(DataConfig(val_size=1000, limit_train=20000, limit_test=200))
    spec = model_spec_for("fmnist-cnn", splits)
    torch.manual_seed(0)
    model = create_model(spec)
    fit(model, spec, splits, TrainConfig(epochs=2, batch_size=128, lr=3e-3), tmp_path_factory.mktemp("std20k"))
    return model.eval()


def test_pgd_linf_takes_a_standard_model_below_ten_percent(standard_model, fmnist_small):
    model = standard_model
    x, y = fmnist_small.test.x[:200], fmnist_small.test.y[:200]
    x_adv = PGD(model, eps=0.1, alpha=0.025, steps=10)(x, y)
    assert_valid(x, x_adv, linf=0.1)
    assert accuracy(model, x, y) > 0.85
    assert accuracy(model, x_adv, y) < 0.10


def test_pgd_linf_bound_and_drop_on_the_small_model(model, test_xy):
    x, y = test_xy[0][:128], test_xy[1][:128]
    x_adv = PGD(model, eps=0.1, alpha=0.025, steps=10)(x, y)
    assert_valid(x, x_adv, linf=0.1)
    assert accuracy(model, x_adv, y) < accuracy(model, x, y) - 0.6


def test_pgd_l2_respects_its_ball(model, test_xy):
    x, y = test_xy[0][:64], test_xy[1][:64]
    x_adv = PGD(model, eps=1.0, alpha=0.25, steps=8, norm="l2")(x, y)
    assert_valid(x, x_adv)
    assert (x_adv - x).flatten(1).norm(dim=1).max() <= 1.0 + 1e-5
    assert accuracy(model, x_adv, y) < accuracy(model, x, y) - 0.3


def test_pgd_targeted_reaches_its_targets(model, test_xy):
    x, y = test_xy[0][:128], test_xy[1][:128]
    t = random_targets(y, 10, seed=1)
    # a random target needs a larger ball than untargeted on this model (eps=0.1 reaches ~40%)
    x_adv = PGD(model, eps=0.2, alpha=0.05, steps=10, targeted=True)(x, t)
    assert_valid(x, x_adv, linf=0.2)
    assert accuracy(model, x_adv, t) > 0.9


def test_restarts_never_do_worse_than_one_run(model, test_xy):
    x, y = test_xy[0][:64], test_xy[1][:64]
    kw = dict(eps=0.03, alpha=0.01, steps=5, seed=3)
    one = PGD(model, restarts=1, **kw)(x, y)
    many = PGD(model, restarts=3, **kw)(x, y)
    assert_valid(x, many, linf=0.03)
    with torch.no_grad():
        ok_one, ok_many = succeeded(model(one), y, False), succeeded(model(many), y, False)
    assert (ok_many | ~ok_one).all()          # per sample: a success is never lost
    assert ok_many.sum() >= ok_one.sum()


def test_margin_and_dlr_losses_attack_too(model, test_xy):
    x, y = test_xy[0][:64], test_xy[1][:64]
    for loss in ("margin", "dlr"):
        x_adv = PGD(model, eps=0.1, alpha=0.025, steps=6, loss=loss)(x, y)
        assert_valid(x, x_adv, linf=0.1)
        assert accuracy(model, x_adv, y) < accuracy(model, x, y) - 0.5
