"""`mia` resumes every stage: a run killed with SIGKILL (once while making the adversarial pool,
once mid-way through an EAT cycle) and resumed ends with the same pool, ensemble and metrics as
an uninterrupted run with the same seed; shards are never recomputed; `plan` reports the state."""
from __future__ import annotations

import pytest
import torch

from tests.training.defenses.mia.small_run import CONFIG, OPTIONS, killed_when, resumed

pytestmark = pytest.mark.slow


def test_a_run_killed_twice_resumes_to_the_uninterrupted_result(mia_splits, mia_reference, tmp_path):
    ref_out, ref_metrics = mia_reference
    out = tmp_path / "run"
    killed_when(out, "adversarial/train/3-cw/00001.pt")          # mid-pool: CW's second shard just written
    assert not (out / "adversarial.pt").exists()
    cw_first = (out / "adversarial/train/3-cw/00000.pt").stat().st_mtime_ns
    killed_when(out, "eat/eat1/share-50/last.pt")                 # mid-EAT: cycle 2 of eat1, epoch 1 of 2
    assert (out / "adversarial/train/3-cw/00000.pt").stat().st_mtime_ns == cw_first  # never recomputed
    assert not (out / "eat/eat1/share-50/model.pt").exists()

    from training.defenses.mia import MIAConfig, plan
    from training.options import build_config

    text = plan(build_config(MIAConfig, OPTIONS), CONFIG, mia_splits, out)
    assert "eat/eat1/share-25" in text and "done" in text and "1/2 epochs" in text

    metrics = resumed(mia_splits, out)

    pool, ref_pool = (torch.load(d / "adversarial.pt", weights_only=True) for d in (out, ref_out))
    for key in ("train", "val", "test"):
        assert torch.equal(pool[key]["x"], ref_pool[key]["x"]), key
    ours, theirs = (torch.load(d / "model.pt", weights_only=True)["state_dict"] for d in (out, ref_out))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert metrics["detection"] == ref_metrics["detection"]
    assert metrics["eat_cycles"] == ref_metrics["eat_cycles"]
    assert metrics["profile"] == "paper" and metrics["budget"]["cw_steps"] == 5


def test_a_torn_last_pt_restarts_its_stage_and_still_matches(mia_splits, mia_reference, tmp_path):
    """A stop while the trainer writes last.pt leaves a torn file: the stage restarts from its
    first epoch (with a warning) instead of failing, and the result is still the reference's."""
    ref_out, ref_metrics = mia_reference
    out = tmp_path / "run"
    killed_when(out, "eat/eat2/share-25/last.pt")
    last = out / "eat/eat2/share-25/last.pt"
    last.write_bytes(last.read_bytes()[:100])
    metrics = resumed(mia_splits, out)
    assert metrics["detection"] == ref_metrics["detection"]


def test_a_kept_run_resumes_in_a_fresh_folder_to_the_uninterrupted_result(mia_splits, mia_reference, tmp_path):
    """`training.keep`: a run killed mid-EAT is saved to a kept folder (its pool left out) and
    restored into a new folder, as in a fresh checkout; the resume remakes the pool against the
    kept source model, takes the kept stages as they are and ends with the uninterrupted result."""
    from training.keep import restore, save

    ref_out, ref_metrics = mia_reference
    out, kept, fresh = tmp_path / "run", tmp_path / "kept", tmp_path / "fresh"
    killed_when(out, "members/1-eat2/last.pt")                    # EAT cycles and member 0 done, member 1 in flight
    save(out, kept)
    assert not (kept / "adversarial").exists() and not (kept / "adversarial.pt").exists()
    assert (kept / "members/1-eat2/last.pt").exists() and (kept / "members/0-eat1/model.pt").exists()
    assert save(out, kept) == []                                   # nothing changed: nothing written
    restore(kept, fresh)
    finished = {p.relative_to(fresh): p.read_bytes() for p in fresh.rglob("model.pt")}

    metrics = resumed(mia_splits, fresh)

    assert all((fresh / rel).read_bytes() == data for rel, data in finished.items())  # taken as kept
    ours, theirs = (torch.load(d / "model.pt", weights_only=True)["state_dict"] for d in (fresh, ref_out))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    for key in ("detection", "eat_cycles", "members"):
        assert metrics[key] == ref_metrics[key], key
    assert "members/1-eat2/model.pt" in {str(p) for p in save(fresh, kept)}  # finished since:
    assert not (kept / "members/1-eat2/last.pt").exists()                     # its last.pt dropped


def test_a_kept_run_with_every_stage_finished_remakes_only_the_test_sets(mia_splits, mia_reference, tmp_path):
    """Restored with every EAT and member stage finished, a run needs no training pool: the resume
    makes the test sets alone and ends with the uninterrupted run's metrics."""
    from training.keep import restore, save

    ref_out, ref_metrics = mia_reference
    save(ref_out, tmp_path / "kept")
    fresh = restore(tmp_path / "kept", tmp_path / "fresh") and tmp_path / "fresh"
    for done in ("model.pt", "metrics.json"):          # the ensemble not yet built
        (fresh / done).unlink()

    metrics = resumed(mia_splits, fresh)

    assert sorted(p.name for p in (fresh / "adversarial").iterdir() if p.is_dir()) == ["test"]
    assert set(torch.load(fresh / "adversarial.pt", weights_only=True)) == {"definition", "test"}
    for key in ("detection", "eat_cycles", "members", "adversarial_pool", "train_size"):
        assert metrics[key] == ref_metrics[key], key


def test_a_finished_run_kept_without_its_stages_resumes_to_its_metrics(mia_splits, mia_reference, tmp_path):
    """A finished run kept as `make mia-keep` keeps it (ensemble, source, reports; no stage
    weights) resumes in a fresh folder to its metrics without training anything: it remakes only
    its pool's test sets, which `training.defenses.mia.eval` reads."""
    from training.keep import restore, save

    ref_out, ref_metrics = mia_reference
    save(ref_out, tmp_path / "kept", leave_out=("eat/*", "members/*"))
    assert not (tmp_path / "kept/eat").exists() and (tmp_path / "kept/model.pt").exists()
    fresh = tmp_path / "fresh"
    restore(tmp_path / "kept", fresh)

    metrics = resumed(mia_splits, fresh)

    assert metrics == ref_metrics
    assert not (fresh / "eat").exists() and not (fresh / "members").exists()
    pool, ref_pool = (torch.load(d / "adversarial.pt", weights_only=True) for d in (fresh, ref_out))
    assert set(pool) == {"definition", "test"} and torch.equal(pool["test"]["x"], ref_pool["test"]["x"])
