"""`mia` resumes every stage: a run killed with SIGKILL (once while making the adversarial pool,
once mid-way through an EAT cycle) and resumed ends with the same pool, ensemble and metrics as
an uninterrupted run with the same seed; shards are never recomputed; `plan` reports the state;
a helper process (`training.defenses.mia.helper`) makes the same pool the run would."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from training.data import DataConfig, Splits, load_splits
from training.defenses import create_defense
from training.trainer import TrainConfig

ROOT = Path(__file__).resolve().parents[4]
OPTIONS = {"attacks": "gma:values=0.1|1.0;exponents=1,pgd:eps=0.1;steps=2;alpha=0.05,fgsm:eps=0.1,cw",
           "cw_steps": "5", "cw_binary_steps": "2", "gma_steps": "2", "gma_tries": "2",
           "shares": "0.25,0.5", "share": "0.5", "members": "eat1,eat2", "n_bootstraps": "2", "shard_size": "24"}
CONFIG = TrainConfig(epochs=2, batch_size=32, lr=3e-3)
DATA = "DataConfig(name='fashion-mnist', val_size=100, limit_train=240, limit_test=48)"
RUN = f"""
import sys, torch
torch.set_num_threads(1)
from training.data import DataConfig, load_splits
from training.defenses import create_defense
from training.trainer import TrainConfig
data = {DATA}
splits = load_splits(data)
create_defense('mia', {OPTIONS!r}).fit('mia-target', splits, {CONFIG!r}, sys.argv[1], resume=True,
                                       run_config={{'data': data.__dict__}})
"""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def splits() -> Splits:
    return load_splits(eval(DATA))


@pytest.fixture(scope="module")
def reference(splits, tmp_path_factory):
    out = tmp_path_factory.mktemp("mia-reference")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        metrics = create_defense("mia", OPTIONS).fit("mia-target", splits, CONFIG, out)
    finally:
        torch.set_num_threads(threads)
    return out, metrics


def _loadable(path: Path) -> bool:
    try:
        torch.load(path, map_location="cpu", weights_only=True)
        return True
    except (RuntimeError, EOFError, OSError):
        return False


def _resumed(splits: Splits, out: Path) -> dict:
    """The run in `out` resumed in this process on one thread (as the subprocess runs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return create_defense("mia", OPTIONS).fit("mia-target", splits, CONFIG, out, resume=True)
    finally:
        torch.set_num_threads(threads)


def _killed_when(out: Path, pattern: str, timeout: float = 300.0) -> None:
    """Run the fit in a subprocess and SIGKILL it as soon as a whole file matching `pattern` is
    there (last.pt is written whole or not at all, `training.checkpoint.write_atomic`)."""
    proc = subprocess.Popen([sys.executable, "-c", RUN, str(out)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + timeout
    while not any(_loadable(p) for p in out.glob(pattern)):
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {pattern} appeared: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{pattern} did not appear within {timeout} s")
        time.sleep(0.02)  # polling the run folder: the file's appearance is the event
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def test_a_run_killed_twice_resumes_to_the_uninterrupted_result(splits, reference, tmp_path):
    ref_out, ref_metrics = reference
    out = tmp_path / "run"
    _killed_when(out, "adversarial/train/3-cw/00001.pt")          # mid-pool: CW's second shard just written
    assert not (out / "adversarial.pt").exists()
    cw_first = (out / "adversarial/train/3-cw/00000.pt").stat().st_mtime_ns
    _killed_when(out, "eat/eat1/share-50/last.pt")                 # mid-EAT: cycle 2 of eat1, epoch 1 of 2
    assert (out / "adversarial/train/3-cw/00000.pt").stat().st_mtime_ns == cw_first  # never recomputed
    assert not (out / "eat/eat1/share-50/model.pt").exists()

    from training.defenses.mia import MIAConfig, plan
    from training.options import build_config

    text = plan(build_config(MIAConfig, OPTIONS), CONFIG, splits, out)
    assert "eat/eat1/share-25" in text and "done" in text and "1/2 epochs" in text

    metrics = _resumed(splits, out)

    pool, ref_pool = (torch.load(d / "adversarial.pt", weights_only=True) for d in (out, ref_out))
    for key in ("train", "val", "test"):
        assert torch.equal(pool[key]["x"], ref_pool[key]["x"]), key
    ours, theirs = (torch.load(d / "model.pt", weights_only=True)["state_dict"] for d in (out, ref_out))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert metrics["detection"] == ref_metrics["detection"]
    assert metrics["eat_cycles"] == ref_metrics["eat_cycles"]
    assert metrics["profile"] == "paper" and metrics["budget"]["cw_steps"] == 5


def test_a_torn_last_pt_restarts_its_stage_and_still_matches(splits, reference, tmp_path):
    """A stop while the trainer writes last.pt leaves a torn file: the stage restarts from its
    first epoch (with a warning) instead of failing, and the result is still the reference's."""
    ref_out, ref_metrics = reference
    out = tmp_path / "run"
    _killed_when(out, "eat/eat2/share-25/last.pt")
    last = out / "eat/eat2/share-25/last.pt"
    last.write_bytes(last.read_bytes()[:100])
    metrics = _resumed(splits, out)
    assert metrics["detection"] == ref_metrics["detection"]


def test_a_helper_makes_the_pool_the_run_would_and_the_run_goes_on_from_it(splits, reference, tmp_path):
    """The run is stopped once its pool is defined (first shard written); a helper alone makes the
    rest of the pool from the run's config.json; the resumed run takes that pool as it is and ends
    with the uninterrupted run's pool, ensemble and metrics."""
    ref_out, ref_metrics = reference
    out = tmp_path / "run"
    _killed_when(out, "adversarial/train/0-gma/00000.pt")
    helper = subprocess.run([sys.executable, "-m", "training.defenses.mia.helper", "--run", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert helper.returncode == 0, helper.stderr[-2000:]
    assert "train cw shard" in helper.stderr and "test cw shard" in helper.stderr  # made here, not by the run
    assert "pool complete" in helper.stderr
    pool, ref_pool = (torch.load(d / "adversarial.pt", weights_only=True) for d in (out, ref_out))
    for key in ("train", "val", "test"):
        assert torch.equal(pool[key]["x"], ref_pool[key]["x"]), key
    cw_first = (out / "adversarial/train/3-cw/00000.pt").stat().st_mtime_ns

    metrics = _resumed(splits, out)
    assert (out / "adversarial/train/3-cw/00000.pt").stat().st_mtime_ns == cw_first  # taken as it was
    assert metrics["detection"] == ref_metrics["detection"]


def test_the_helper_names_what_is_missing(tmp_path):
    from training.defenses.mia.helper import help_run

    with pytest.raises(TimeoutError, match=r"nothing/config.json did not appear .* start the training"):
        help_run(tmp_path / "nothing", timeout=0)


def test_unseen_attacks_are_crafted_before_the_pool_and_the_evaluation_uses_them(reference, tmp_path):
    """`mia.eval --craft-only --n N` needs only the source model (a run still making its pool);
    the evaluation of the finished run takes those shards as they are."""
    import shutil

    from training.defenses.mia.eval import main as evaluate

    ref_out, _ = reference
    early = tmp_path / "early"
    shutil.copytree(ref_out / "source", early / "source")
    shutil.copy(ref_out / "config.json", early / "config.json")
    out = tmp_path / "eval"
    args = ["--n", "8", "--unseen", "square:eps=0.1;max_queries=20", "--adaptive-steps", "3", "--out", str(out)]
    with pytest.raises(SystemExit, match="has not finished its adversarial pool.*--craft-only --n N"):
        evaluate(["--run", str(early), *args])
    assert evaluate(["--run", str(early), "--craft-only", *args]) == 0
    shard = next(out.glob("unseen/*square*/00000.pt"))
    made = shard.stat().st_mtime_ns

    assert evaluate(["--run", str(ref_out), *args]) == 0
    assert shard.stat().st_mtime_ns == made  # taken as it was, not remade
    report = json.loads((out / "eval.json").read_text())
    assert report["clean_images"] == 8 and report["detection"]["attacks"]["square"]["unseen"] is True
    assert report["adaptive"]["images"] == 8
