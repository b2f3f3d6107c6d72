import torch

from training.attacks import AdversarialPatch, save_png
from training.attacks.patch import patch_side

from .conftest import accuracy, assert_valid


def test_patch_stays_inside_its_square(model, test_xy):
    x, y = test_xy[0][:16], test_xy[1][:16]
    patch = torch.rand(1, 9, 9)
    attack = AdversarialPatch(model, scale=0.1, patch=patch, row=3, col=17)
    x_adv = attack(x, y)
    assert_valid(x, x_adv)
    inside = torch.zeros_like(x, dtype=torch.bool)
    inside[..., 3:12, 17:26] = True
    assert torch.equal(x_adv[~inside], x[~inside])
    assert torch.equal(x_adv[..., 3:12, 17:26], patch.expand(16, 1, 9, 9))
    # random places: each image changes only in one 9x9 square
    x_rand = attack.with_place(-1, -1)(x, y)
    for img, orig in zip(x_rand, x):
        rows, cols = (img != orig)[0].nonzero(as_tuple=True)
        if len(rows):
            assert rows.max() - rows.min() < 9 and cols.max() - cols.min() < 9


def test_patch_size_covers_five_to_twenty_five_percent():
    from training.attacks.patch import PatchConfig

    for scale in (0.05, 0.1, 0.25):
        side = patch_side(PatchConfig(scale=scale), 28, 28)
        assert abs(side * side / 784 - scale) < 0.03


def test_targeted_patch_reaches_its_target_and_saves_as_png(model, fmnist_small, test_xy, tmp_path):
    train_x = fmnist_small.train.x[:500]
    target = 8
    attack = AdversarialPatch(model, scale=0.25, epochs=3, batch_size=50, lr=0.3, rotate=False,
                              targeted=True).fit(train_x, torch.full((500,), target))
    x, y = test_xy[0][:128], test_xy[1][:128]
    keep = y != target
    x, y = x[keep], y[keep]
    t = torch.full_like(y, target)
    x_adv = attack(x, t)
    assert_valid(x, x_adv)
    reached = accuracy(model, x_adv, t)
    assert reached > 0.3 and reached > accuracy(model, x, t) + 0.25
    path = save_png(attack.patch, tmp_path / "patch.png", upscale=4)
    from PIL import Image

    with Image.open(path) as img:
        assert img.size == (4 * attack.patch.shape[-1],) * 2 and img.mode == "L"


def test_patch_needs_fitting(model, test_xy):
    import pytest

    with pytest.raises(ValueError, match="not trained"):
        AdversarialPatch(model)(*test_xy)
