import torch

from training.attacks import every_other_class, least_likely_targets, random_targets, select_targets


def test_random_targets_differ_from_labels_and_are_seeded():
    y = torch.arange(10).repeat(20)
    t = random_targets(y, 10, seed=3)
    assert (t != y).all() and t.min() >= 0 and t.max() <= 9
    assert torch.equal(t, random_targets(y, 10, seed=3))
    assert len(t.unique()) == 10


def test_every_other_class_gives_nine_targets_per_image():
    x, y = torch.rand(3, 1, 4, 4), torch.tensor([0, 4, 9])
    xr, yr, t = every_other_class(x, y, 10)
    assert len(xr) == len(yr) == len(t) == 27
    for i in range(3):
        rows = slice(9 * i, 9 * (i + 1))
        assert torch.equal(xr[rows], x[i:i + 1].expand(9, -1, -1, -1))
        assert (yr[rows] == y[i]).all()
        assert sorted(t[rows].tolist()) == [k for k in range(10) if k != y[i]]


def test_least_likely_is_the_argmin_logit(model, test_xy):
    x = test_xy[0][:16]
    t = least_likely_targets(model, x)
    with torch.no_grad():
        logits = model(x)
    assert torch.equal(logits.gather(1, t[:, None]).squeeze(1), logits.min(dim=1).values)
    assert torch.equal(select_targets("least-likely", model, x, test_xy[1][:16], 10), t)
    assert (select_targets("7", model, x, test_xy[1][:16], 10) == 7).all()
