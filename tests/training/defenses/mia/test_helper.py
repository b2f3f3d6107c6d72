"""A pool helper (`python -m training.defenses.mia.helper`) makes the pool the run would make,
from the run's config.json, and the run goes on from it."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.training.defenses.mia.small_run import ROOT, killed_when, resumed

pytestmark = pytest.mark.slow


def test_a_helper_makes_the_pool_the_run_would_and_the_run_goes_on_from_it(mia_splits, mia_reference, tmp_path):
    """The run is stopped once its pool is defined (first shard written); a helper alone makes the
    rest of the pool from the run's config.json; the resumed run takes that pool as it is and ends
    with the uninterrupted run's pool, ensemble and metrics."""
    ref_out, ref_metrics = mia_reference
    out = tmp_path / "run"
    killed_when(out, "adversarial/train/0-gma/00000.pt")
    helper = subprocess.run([sys.executable, "-m", "training.defenses.mia.helper", "--run", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert helper.returncode == 0, helper.stderr[-2000:]
    assert "train cw shard" in helper.stderr and "test cw shard" in helper.stderr  # made here, not by the run
    assert "pool complete" in helper.stderr
    pool, ref_pool = (torch.load(d / "adversarial.pt", weights_only=True) for d in (out, ref_out))
    for key in ("train", "val", "test"):
        assert torch.equal(pool[key]["x"], ref_pool[key]["x"]), key
    cw_first = (out / "adversarial/train/3-cw/00000.pt").stat().st_mtime_ns

    metrics = resumed(mia_splits, out)
    assert (out / "adversarial/train/3-cw/00000.pt").stat().st_mtime_ns == cw_first  # taken as it was
    assert metrics["detection"] == ref_metrics["detection"]


def test_the_helper_names_what_is_missing(tmp_path):
    from training.defenses.mia.helper import help_run

    with pytest.raises(TimeoutError, match=r"nothing/adversarial/pool.json did not appear .* start the training"):
        help_run(tmp_path / "nothing", timeout=0)
