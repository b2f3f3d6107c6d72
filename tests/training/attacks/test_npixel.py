import pytest
import torch

from training.attacks import NPixel
from training.attacks._local_eval import LocalEvaluator
from training.models import ModelSpec, create_model

from .conftest import assert_valid


@pytest.mark.parametrize("name", ["fmnist-cnn", "mnist-base", "distill-cnn", "eat3", "mnist-dense"])
def test_local_evaluator_matches_a_full_forward_pass(name):
    torch.manual_seed(0)
    model = create_model(ModelSpec(name=name)).eval()
    x = torch.rand(4, 1, 28, 28)
    ev = LocalEvaluator(model, x)
    assert ev.enabled
    for size in (1, 4, 28):
        owner = torch.randint(0, 4, (20,))
        r0, c0 = torch.randint(0, 29 - size, (20,)), torch.randint(0, 29 - size, (20,))
        crop = torch.rand(20, 1, size, size)
        full = x[owner].clone()
        for i in range(20):
            full[i, :, r0[i]:r0[i] + size, c0[i]:c0[i] + size] = crop[i]
        with torch.no_grad():
            assert torch.allclose(ev.logits(owner, r0, c0, crop), model(full), atol=1e-4)


@pytest.mark.parametrize("pixels, precision", [(1, "float32"), (3, "float32"), (1, "bfloat16"), (3, "bfloat16")])
def test_npixel_changes_at_most_n_pixels(model, test_xy, pixels, precision):
    """In bfloat16 the search scores candidates approximately; success is still float32's."""
    x, y = test_xy[0][:32], test_xy[1][:32]
    result = NPixel(model, pixels=pixels, popsize=20, steps=4, precision=precision).run(x, y)
    assert_valid(x, result.x_adv)
    changed = (result.x_adv != x).flatten(1).sum(dim=1)
    assert (changed <= pixels).all() and changed.sum() > 0
    with torch.no_grad():
        pred = model(result.x_adv).argmax(1)
    assert torch.equal(result.success, pred != y)
    assert (result.queries <= 20 * 5).all() and (result.queries >= 20).all()
    # fooled images stop spending queries; the others spend the whole budget
    assert (result.queries[~result.success] == 100).all()


def test_npixel_query_budget_and_determinism(model, test_xy):
    x, y = test_xy[0][:16], test_xy[1][:16]
    attack = NPixel(model, pixels=2, popsize=10, steps=50, max_queries=40, seed=5)
    a, b = attack.run(x, y), attack.run(x, y)
    assert (a.queries <= 40).all()
    assert torch.equal(a.x_adv, b.x_adv)


def test_npixel_with_more_pixels_fools_more(model, test_xy):
    x, y = test_xy[0][:32], test_xy[1][:32]
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    kw = dict(popsize=30, steps=6)
    one = NPixel(model, pixels=1, **kw).run(x, y).success[correct].float().mean()
    many = NPixel(model, pixels=12, **kw).run(x, y).success[correct].float().mean()
    assert many > one + 0.05


def test_npixel_targeted_success_means_the_target(model, test_xy):
    x, y = test_xy[0][:16], test_xy[1][:16]
    t = (y + 1) % 10
    result = NPixel(model, pixels=4, popsize=20, steps=3, targeted=True).run(x, t)
    with torch.no_grad():
        assert torch.equal(result.success, model(result.x_adv).argmax(1) == t)
