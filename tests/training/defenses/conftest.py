"""Fixtures for the defence tests: one small Fashion-MNIST subset, a standard mnist-shallow
model trained on it (the baseline every defence is compared with), and attack accuracies.

Everything here trains with one intra-op thread: on this 2-core machine shared with other
jobs, torch's 2-thread kernels measured ~20x slower per batch than 1 thread for these small
models (threads spin waiting for each other), and the thread count is restored afterwards.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.support import one_thread as _one_thread

EPOCHS, BATCH, LR = 2, 64, 3e-3


@pytest.fixture(autouse=True)
def _single_thread_tests():
    with _one_thread():
        yield


@pytest.fixture(scope="session")
def one_thread():
    """A context manager for module- and session-scoped fixtures that train."""
    return _one_thread


@pytest.fixture(scope="session")
def defense_splits(fmnist_small):
    """2,000 training, 500 validation and 300 test images of Fashion-MNIST."""
    return fmnist_small.__class__(train=fmnist_small.train.take(2000), val=fmnist_small.val.take(500),
                                  test=fmnist_small.test.take(300), labels=fmnist_small.labels,
                                  name=fmnist_small.name)


@pytest.fixture(scope="session")
def train_config():
    from training.trainer import TrainConfig

    return TrainConfig(epochs=EPOCHS, batch_size=BATCH, lr=LR)


@pytest.fixture(scope="session")
def standard_run(tmp_path_factory, defense_splits, train_config) -> Path:
    """mnist-shallow, standard training, same subset and schedule as the defences."""
    from training.defenses.common import build_model
    from training.trainer import fit

    out = tmp_path_factory.mktemp("defenses") / "standard"
    model, spec = build_model("mnist-shallow", defense_splits, train_config.seed)
    with _one_thread():
        fit(model, spec, defense_splits, train_config, out)
    return out


@pytest.fixture(scope="session")
def robust_accuracy(defense_splits):
    """robust_accuracy(model, attack='pgd'|'fgsm', eps=0.1) on the 300 test images.
    PGD: 10 steps of 0.025 from a random start."""
    from training.attacks import FGSM, PGD

    def measure(model: torch.nn.Module, attack: str = "pgd", eps: float = 0.1) -> float:
        x, y = defense_splits.test.x, defense_splits.test.y
        make = PGD(model, eps=eps, alpha=eps / 4, steps=10) if attack == "pgd" else FGSM(model, eps=eps)
        x_adv = make(x, y)
        with torch.no_grad():
            return (model.eval()(x_adv).argmax(1) == y).float().mean().item()

    return measure


@pytest.fixture(scope="session")
def standard_pgd_accuracy(standard_run, robust_accuracy) -> float:
    from training.checkpoint import load_model

    with _one_thread():
        return robust_accuracy(load_model(standard_run)[0])
