import math

import pytest
import torch

from training.attacks import GMA, GMAConfig, perturbation_grid

from .conftest import assert_valid


def test_default_grid_is_powers_of_ten_from_1e7_to_0_3():
    grid = perturbation_grid(GMAConfig())
    assert grid[0] == pytest.approx(1e-7) and grid[-1] == pytest.approx(0.3)
    # 30 (V, i) pairs; 0.1 * 10^-i == 1 * 10^-(i+1) for i = 1..5, so 25 distinct sizes
    assert len(grid) == 25 and grid == sorted(grid)
    expected = {v * 10.0 ** -i for v in (0.1, 0.5, 1.0, 2.0, 3.0) for i in range(1, 7)}
    assert all(any(math.isclose(g, e, rel_tol=1e-9) for e in expected) for g in grid)
    assert len(perturbation_grid(GMAConfig(base=math.e))) == 30   # the paper's literal "e^-i"


def test_gma_reports_accuracy_and_success_per_size(model, test_xy):
    x, y = test_xy[0][:32], test_xy[1][:32]
    attack = GMA(model, values=(1.0, 3.0), exponents=(1, 3), tries=1)
    result = attack.run(x, y)
    eps = [s.eps for s in result.sizes]
    assert eps == pytest.approx([1e-3, 3e-3, 0.1, 0.3])
    assert result.images.shape == (4, *x.shape)
    for s, imgs in zip(result.sizes, result.images):
        assert_valid(x, imgs, linf=s.eps)
        with torch.no_grad():
            acc = (model(imgs).argmax(1) == y).float().mean().item()
        assert acc == pytest.approx(s.accuracy)
        assert s.success == (s.accuracy < 0.5)
    small, large = result.sizes[0], result.sizes[-1]
    assert not small.success and small.accuracy > result.clean_accuracy - 0.1   # 1e-3 barely matters
    assert small.case == ("best" if small.accuracy > 0.8 else "between")
    assert large.case == "worst" and large.success and large.accuracy < 0.1
    assert result.accuracy == pytest.approx(sum(s.accuracy for s in result.sizes) / 4)
    # the single-image call: per image, the smallest size that fools it
    x_adv = attack.smallest_fooling(result, y)
    assert_valid(x, x_adv, linf=0.3)
    with torch.no_grad():
        assert (model(x_adv).argmax(1) != y).float().mean() > 0.9


def test_gma_retries_only_while_it_fails(model, test_xy):
    x, y = test_xy[0][:16], test_xy[1][:16]
    result = GMA(model, values=(1.0,), exponents=(4, 1), tries=3).run(x, y)
    tiny, big = result.sizes
    assert tiny.eps == pytest.approx(1e-4) and tiny.tries == 3 and not tiny.success
    assert big.eps == pytest.approx(0.1) and big.tries == 1 and big.success
    merged = GMA(model, values=(1.0,), exponents=(4, 1)).merge([result, result])
    assert merged.images.shape[1] == 32 and merged.sizes[1].accuracy == pytest.approx(big.accuracy)
