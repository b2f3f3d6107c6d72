"""Fixtures for the attack tests: the shared small trained model and slices of its test set."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="session")
def model(trained_model):
    """fmnist-cnn trained 2 epochs on 5,000 images (~80% test accuracy), in eval mode."""
    return trained_model[0]


@pytest.fixture(scope="session")
def test_xy(fmnist_small):
    """The first 256 test images and labels."""
    return fmnist_small.test.x[:256], fmnist_small.test.y[:256]


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).float().mean().item()


def assert_valid(x, x_adv, linf: float | None = None) -> None:
    """Pixels in [0, 1], shape kept, and (optionally) the L-inf bound."""
    assert x_adv.shape == x.shape
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert not x_adv.requires_grad
    if linf is not None:
        assert (x_adv - x).abs().max() <= linf + 1e-6
