import torch

from training.attacks import CW, PGD, random_targets
from training.attacks._losses import succeeded

from .conftest import assert_valid


def test_cw_finds_smaller_l2_perturbations_than_pgd_l2(model, test_xy):
    x, y = test_xy[0][:32], test_xy[1][:32]
    eps = 1.5
    pgd = PGD(model, eps=eps, alpha=0.3, steps=10, norm="l2")(x, y)
    cw = CW(model, c=1.0, steps=30, binary_steps=3)(x, y)
    assert_valid(x, cw)
    with torch.no_grad():
        ok_pgd, ok_cw = succeeded(model(pgd), y, False), succeeded(model(cw), y, False)
    both = ok_pgd & ok_cw
    assert ok_cw.float().mean() >= ok_pgd.float().mean()   # at least equal success
    assert both.sum() >= 16
    l2_cw = (cw - x).flatten(1).norm(dim=1)[both]
    l2_pgd = (pgd - x).flatten(1).norm(dim=1)[both]
    assert l2_cw.mean() < 0.7 * l2_pgd.mean()
    # failures come back unchanged
    assert torch.equal(cw[~ok_cw], x[~ok_cw])


def test_cw_targeted_reaches_its_targets(model, test_xy):
    x, y = test_xy[0][:32], test_xy[1][:32]
    t = random_targets(y, 10, seed=2)
    x_adv = CW(model, c=1.0, steps=30, binary_steps=3, targeted=True)(x, t)
    assert_valid(x, x_adv)
    with torch.no_grad():
        reached = model(x_adv).argmax(1) == t
    assert reached.float().mean() > 0.9
