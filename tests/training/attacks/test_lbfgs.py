import torch

from training.attacks import LBFGS, random_targets

from .conftest import assert_valid


def test_lbfgs_reaches_targets_inside_the_box(model, test_xy):
    x, y = test_xy[0][:8], test_xy[1][:8]
    t = random_targets(y, 10, seed=4)
    x_adv = LBFGS(model, c=0.1, search_steps=2, max_iter=25)(x, t)
    assert_valid(x, x_adv)
    with torch.no_grad():
        reached = model(x_adv).argmax(1) == t
    assert reached.float().mean() >= 0.75
    l2 = (x_adv - x).flatten(1).norm(dim=1)[reached]
    assert (l2 > 0).all() and l2.median() < 3.0
