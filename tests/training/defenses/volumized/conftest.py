"""A small volumized training run, shared by the tests that train one."""
from __future__ import annotations

import pytest

from training.data import Splits


@pytest.fixture(scope="session")
def train_volumized(fmnist_small, tmp_path_factory):
    """`train_volumized(name, options, sizes=(train, val, test), epochs, batch_size)` ->
    (splits, run folder, metrics): `volumized` on the first images of the small subset."""
    from training.defenses import create_defense
    from training.trainer import TrainConfig

    def run(name: str, options: dict, sizes: tuple[int, int, int], epochs: int, batch_size: int):
        n_train, n_val, n_test = sizes
        splits = Splits(fmnist_small.train.take(n_train), fmnist_small.val.take(n_val),
                        fmnist_small.test.take(n_test), fmnist_small.labels, fmnist_small.name)
        out = tmp_path_factory.mktemp(name) / "run"
        config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=3e-3, seed=0)
        return splits, out, create_defense("volumized", options).fit("fmnist-cnn", splits, config, out)

    return run
