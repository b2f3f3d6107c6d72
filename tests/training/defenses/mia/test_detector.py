"""`advguard export --mia-run`: the MIA run must be asked for, exist, and fit the primary model.
(The exported graph itself, its scores and calibration: tests/serving/test_mia_vote.py.)"""
from __future__ import annotations

import json

import pytest

from training.checkpoint import save_model
from training.defenses.mia.detector import load_mia_run
from training.models import ModelSpec, create_model

LABELS = tuple(f"class {i}" for i in range(10))
STATS = {"mean": (0.286,), "std": (0.353,)}

pytestmark = pytest.mark.usefixtures("one_thread_module")


def _mia_run(folder, classes: int = 11, size: int = 28, arch: str = "mia-ensemble", dataset: str = ""):
    """An untrained checkpoint (an ensemble of one eat1 member, or `arch` alone) in a run folder."""
    member = ModelSpec("eat1", num_classes=classes, image_size=size, **STATS)
    spec = (ModelSpec(arch, num_classes=classes, image_size=size, options={"members": [member.to_dict()]}, **STATS)
            if arch == "mia-ensemble" else member)
    save_model(folder / "model.pt", create_model(spec), spec)
    if dataset:
        (folder / "config.json").write_text(json.dumps({"data": {"name": dataset}}))
    return folder


def _export(tmp_path, capsys, *args: str) -> str:
    from advguard.cli.main import main

    code = main(["export", "--run", str(tmp_path / "runs" / "x"), "--name", "n", "--store",
                 str(tmp_path / "store"), *args])
    assert code == 2
    return capsys.readouterr().err


def test_mia_vote_needs_a_mia_run(tmp_path, capsys):
    err = _export(tmp_path, capsys, "--detectors", "low-confidence,mia-vote")
    assert "detector mia-vote needs the MIA ensemble: pass --mia-run DIR" in err


def test_a_mia_run_needs_the_mia_vote_detector(tmp_path, capsys):
    err = _export(tmp_path, capsys, "--mia-run", str(tmp_path), "--detectors", "low-confidence")
    assert "mia-vote is not among the detectors (low-confidence); add it to --detectors" in err


def test_a_missing_mia_run_is_named(tmp_path, capsys):
    err = _export(tmp_path, capsys, "--mia-run", str(tmp_path / "runs" / "mia"), "--detectors", "mia-vote")
    assert f"no MIA ensemble at {tmp_path / 'runs' / 'mia' / 'model.pt'}: train one with" in err
    assert not (tmp_path / "store").exists()  # refused before anything was written


@pytest.mark.parametrize("kind, message", [
    ({"classes": 7}, r"has 7 classes, the primary model 10 \(\+1 'adversarial' = 11 expected\)"),
    ({"size": 32}, r"takes \(1, 32, 32\) images, the primary model \(1, 28, 28\)"),
    ({"arch": "eat1"}, "holds model 'eat1', not an MIA ensemble"),
    ({"dataset": "mnist"}, "was trained on mnist, the primary model on fashion-mnist"),
])
def test_a_mia_run_that_does_not_fit_the_primary_model_is_refused(tmp_path, kind, message):
    with pytest.raises(ValueError, match=message):
        load_mia_run(_mia_run(tmp_path, **kind), (1, 28, 28), LABELS, "fashion-mnist")


def test_a_fitting_mia_run_loads(tmp_path):
    ensemble = load_mia_run(_mia_run(tmp_path, dataset="fashion-mnist"), (1, 28, 28), LABELS, "fashion-mnist")
    assert len(ensemble.members) == 1 and not ensemble.training
