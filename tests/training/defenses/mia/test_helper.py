"""A helper (`python -m training.defenses.mia.helper`) makes the pool the run would make and
trains the EAT cycles and members nobody holds, from the run's config.json; the run goes on from
its work."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.training.defenses.mia.small_run import ROOT, RUN, killed_when, resumed

pytestmark = pytest.mark.slow


def test_a_helper_makes_the_pool_and_the_stages_the_run_would_and_the_run_goes_on_from_them(
        mia_splits, mia_reference, tmp_path):
    """The run is stopped once its pool is defined (first shard written); a helper alone makes the
    rest of the pool and trains every stage (tasks from the last, a member once its EAT model is
    there) from the run's config.json; the resumed run takes pool and stages as they are and ends
    with the uninterrupted run's pool, EAT table, members and ensemble."""
    ref_out, ref_metrics = mia_reference
    out = tmp_path / "run"
    killed_when(out, "adversarial/train/0-gma/00000.pt")
    helper = subprocess.run([sys.executable, "-m", "training.defenses.mia.helper", "--run", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert helper.returncode == 0, helper.stderr[-2000:]
    assert "train cw shard" in helper.stderr and "test cw shard" in helper.stderr  # made here, not by the run
    assert "pool complete" in helper.stderr
    assert "trained here: eat2 EAT cycles, member 1, eat1 EAT cycles, member 0" in helper.stderr
    pool, ref_pool = (torch.load(d / "adversarial.pt", weights_only=True) for d in (out, ref_out))
    for key in ("train", "val", "test"):
        assert torch.equal(pool[key]["x"], ref_pool[key]["x"]), key
    made = {p: p.stat().st_mtime_ns for p in [out / "adversarial/train/3-cw/00000.pt",
                                              *out.glob("eat/*/share-*/model.pt"), *out.glob("members/*/model.pt")]}
    assert len(made) == 1 + 4 + 2

    metrics = resumed(mia_splits, out)
    assert {p: p.stat().st_mtime_ns for p in made} == made  # taken as they were
    for key in ("detection", "eat_cycles", "members"):
        assert metrics[key] == ref_metrics[key], key
    assert (out / "eat_table.md").read_text() == (ref_out / "eat_table.md").read_text()


def test_a_helper_beside_the_run_shares_the_stages_and_the_run_waits_for_its_own(mia_splits, mia_reference,
                                                                                  tmp_path):
    """Training process and helper at once (the run stopped once its pool was complete, the helper
    started first, the run resumed as the helper finds the pool): the helper takes the last EAT
    cycles, the run the first; each goes on with whatever is ready and unheld, the run loads the
    helper's stages and ends with the uninterrupted run's ensemble; no stage is trained twice."""
    _, ref_metrics = mia_reference
    out = tmp_path / "run"
    killed_when(out, "eat/eat1/share-25/last.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    helper = subprocess.Popen([sys.executable, "-m", "training.defenses.mia.helper", "--run", str(out)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    log = []
    for line in helper.stderr:  # the helper has loaded the pool: from here it claims chains
        log.append(line)
        if "pool complete" in line:
            break
    run = subprocess.run([sys.executable, "-c", RUN, str(out)], cwd=ROOT, capture_output=True, text=True,
                         timeout=900, env=env)
    helper_out, rest = helper.communicate(timeout=300)
    helper_log = "".join(log) + rest
    assert run.returncode == 0 and helper.returncode == 0, (run.stderr[-2000:], helper_log[-2000:])
    mine = helper_log.split("trained here: ")[1].splitlines()[0].split(", ")
    assert mine[0] == "eat2 EAT cycles"
    # the trainer prints each stage's last epoch (tqdm.write, stdout): 2 x 2 EAT cycles (eat1's
    # first resumed from its last.pt) + 2 members, each trained once; the helper's: 2 per EAT task
    assert run.stdout.count("epoch 2/2:") + helper_out.count("epoch 2/2:") == 4 + 2
    assert helper_out.count("epoch 2/2:") == sum(2 if "EAT" in task else 1 for task in mine)
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("detection", "eat_cycles", "members"):
        assert metrics[key] == ref_metrics[key], key


def test_the_helper_names_what_is_missing(tmp_path):
    from training.defenses.mia.helper import help_run

    with pytest.raises(TimeoutError, match=r"nothing/adversarial/pool.json did not appear .* start the training"):
        help_run(tmp_path / "nothing", timeout=0)
