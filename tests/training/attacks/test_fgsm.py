import torch

from training.attacks import FGSM

from .conftest import accuracy, assert_valid


def test_fgsm_bound_range_and_accuracy_drop(model, test_xy):
    x, y = test_xy
    x_adv = FGSM(model, eps=0.1)(x, y)
    assert_valid(x, x_adv, linf=0.1)
    # every pixel moves by eps unless the box stops it
    moved = (x_adv - x).abs()
    assert ((moved - 0.1).abs() < 1e-6).logical_or(x_adv == 0).logical_or(x_adv == 1).all()
    assert accuracy(model, x_adv, y) < accuracy(model, x, y) - 0.4


def test_fgsm_targeted_moves_toward_the_target(model, test_xy):
    x, y = test_xy
    t = (y + 1) % 10
    x_adv = FGSM(model, eps=0.1, targeted=True)(x, t)
    assert_valid(x, x_adv, linf=0.1)
    with torch.no_grad():
        before = model(x).log_softmax(1).gather(1, t[:, None]).mean()
        after = model(x_adv).log_softmax(1).gather(1, t[:, None]).mean()
    assert after > before + 1.0
    assert accuracy(model, x_adv, t) > accuracy(model, x, t) + 0.1
