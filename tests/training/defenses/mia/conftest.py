"""The small `mia` run's data and its uninterrupted result, computed once for the session: the
resume, helper and evaluation tests compare against it (see `small_run`)."""
from __future__ import annotations

import pytest

from tests.training.defenses.mia.small_run import CONFIG, DATA, OPTIONS


@pytest.fixture(scope="session")
def mia_splits():
    from training.data import load_splits

    return load_splits(DATA)


@pytest.fixture(scope="session")
def mia_reference(mia_splits, tmp_path_factory, one_thread):
    """(run folder, metrics) of the small run made in one go, on one torch thread."""
    from training.defenses import create_defense

    out = tmp_path_factory.mktemp("mia-reference")
    with one_thread():
        metrics = create_defense("mia", OPTIONS).fit("mia-target", mia_splits, CONFIG, out)
    return out, metrics
