import torch

from training.attacks import Square

from .conftest import accuracy, assert_valid


def test_square_is_a_strong_black_box_linf_attack(model, test_xy):
    x, y = test_xy[0][:32], test_xy[1][:32]
    result = Square(model, eps=0.1, max_queries=400).run(x, y)
    assert_valid(x, result.x_adv, linf=0.1)
    assert (result.queries <= 400).all()
    with torch.no_grad():
        assert torch.equal(result.success, model(result.x_adv).argmax(1) != y)
    assert accuracy(model, result.x_adv, y) < 0.3
    assert accuracy(model, result.x_adv, y) < accuracy(model, x, y) - 0.4


def test_square_needs_no_gradient(model, test_xy):
    """A model whose gradient is zero everywhere (rounded input) stops PGD, not Square."""
    from training.attacks import PGD

    class Rounded(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(torch.round(x * 8) / 8)  # round: zero gradient everywhere

    masked = Rounded(model).eval()
    x, y = test_xy[0][:32], test_xy[1][:32]
    pgd = PGD(masked, eps=0.1, alpha=0.025, steps=5, random_start=False)(x, y)
    assert torch.equal(pgd, x)  # zero gradient: sign(0) = 0, no step
    sq = Square(masked, eps=0.1, max_queries=100).run(x, y)
    assert accuracy(masked, sq.x_adv, y) < accuracy(masked, x, y) - 0.3
