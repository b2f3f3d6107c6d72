"""Shared fixtures: real Fashion-MNIST subsets, a small model and a small MIA ensemble trained
on them (once per session)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.support import one_thread

torch = pytest.importorskip("torch")


@pytest.fixture(scope="session")
def fmnist_small():
    """Fashion-MNIST: 5,000 training, 1,000 validation, 1,000 test images (seed 0)."""
    from training.data import DataConfig, load_splits

    return load_splits(DataConfig(name="fashion-mnist", val_size=1000, limit_train=5000, limit_test=1000))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, fmnist_small) -> Path:
    """A run folder: fmnist-cnn, standard training, 2 epochs on the 5,000-image subset (~80% test)."""
    from training.models import create_model
    from training.models import model_spec_for
    from training.trainer import TrainConfig, fit

    out = tmp_path_factory.mktemp("runs") / "fmnist-small"
    spec = model_spec_for("fmnist-cnn", fmnist_small)
    torch.manual_seed(0)
    model = create_model(spec)
    fit(model, spec, fmnist_small, TrainConfig(epochs=2, batch_size=64, lr=3e-3), out,
        run_config={"data": {"name": "fashion-mnist", "data_dir": None, "seed": 0, "val_size": 1000,
                             "limit_train": 5000, "limit_test": 1000}, "defense": "standard"})
    return out


@pytest.fixture(scope="session")
def trained_model(trained_run):
    """(model in eval mode, ModelSpec) loaded back from `trained_run`."""
    from training.checkpoint import load_model

    return load_model(trained_run)


@pytest.fixture(scope="module")
def one_thread_module():
    """One intra-op thread for a module of small-tensor tests (restored afterwards): on a
    2-core machine shared with other processes, torch's thread pool only adds contention.
    Use with `pytestmark = pytest.mark.usefixtures("one_thread_module")`."""
    with one_thread():
        yield


MIA_OPTIONS = {"attacks": "fgsm:eps=0.1,pgd:eps=0.1;steps=2;alpha=0.05", "shares": "0.25,0.5", "share": "0.5",
               "members": "eat1,eat2", "n_bootstraps": "3"}


@pytest.fixture(scope="session")
def mia_run(fmnist_small, tmp_path_factory) -> SimpleNamespace:
    """A small `mia` run (1,000 training, 200 validation, 200 test images; one epoch per stage;
    three members): splits, config, out (the run folder), metrics, options (the defence's)."""
    from training.data import Splits
    from training.defenses import create_defense
    from training.trainer import TrainConfig

    splits = Splits(fmnist_small.train.take(1000), fmnist_small.val.take(200), fmnist_small.test.take(200),
                    fmnist_small.labels, fmnist_small.name)
    out = tmp_path_factory.mktemp("mia") / "run"
    config = TrainConfig(epochs=1, batch_size=64, lr=3e-3)
    with one_thread():
        metrics = create_defense("mia", MIA_OPTIONS).fit("mia-target", splits, config, out)
    return SimpleNamespace(splits=splits, config=config, out=out, metrics=metrics, options=MIA_OPTIONS)


@pytest.fixture(scope="session")
def robust_run(tmp_path_factory, fmnist_small) -> Path:
    """A run folder: fmnist-fast, fast-at (eps 0.1), 2 epochs on the 5,000-image subset: the
    robust fallback and reference of the defended-bundle tests."""
    from training.defenses import create_defense
    from training.trainer import TrainConfig

    out = tmp_path_factory.mktemp("runs") / "fmnist-fast-at"
    torch.manual_seed(0)
    with one_thread():
        create_defense("fast-at", {"eps": "0.1", "holdout": "128"}).fit(
            "fmnist-fast", fmnist_small, TrainConfig(epochs=2, batch_size=64, lr=3e-3), out,
            run_config={"data": {"name": "fashion-mnist", "data_dir": None, "seed": 0, "val_size": 1000,
                                 "limit_train": 5000, "limit_test": 1000}, "defense": "fast-at"})
    return out


@pytest.fixture(scope="session")
def defended_bundle(trained_run, robust_run, tmp_path_factory) -> Path:
    """`advguard bundle`'s composition: trained_run as primary, robust_run as fallback and
    reference, disagreement + feature squeezing calibrated jointly to a 5% verdict, action
    fallback, no card (the card's own tests compute it)."""
    from training.export.compose import BundleConfig, DetectorEntry, compose_bundle

    config = BundleConfig(name="fmnist-defended", primary=trained_run, fallback=robust_run, reference=robust_run,
                          detectors=(DetectorEntry("disagreement"), DetectorEntry("feature-squeezing")),
                          action="fallback", card="none", torchserve=True)
    return compose_bundle(config, tmp_path_factory.mktemp("defended-store"))
