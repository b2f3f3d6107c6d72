"""The `mia-vote` detector: the MIA ensemble's graph in a bundle, scored in ONNX Runtime as the
share of "adversarial" votes, calibrated like every detector, reported by the pipeline."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from serving.bundle import BundleError, load_bundle, sha256_file
from serving.engine import EngineOptions

# The test ensemble is tiny (one epoch per stage): ~6% of clean images get all three "adversarial"
# votes, so at 5% its threshold would be 1.0 and it could never fire; 15% lands on the majority.
TARGET = 0.15
ONE_THREAD = EngineOptions(threads=1)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread_module")]


@pytest.fixture(scope="module")
def mia_bundle(trained_run, mia_run, tmp_path_factory):
    """`trained_run` exported by the CLI with all three detectors, the MIA graph from `mia_run`."""
    from advguard.cli.main import main

    store = tmp_path_factory.mktemp("mia-store")
    code = main(["export", "--run", str(trained_run), "--name", "fmnist-mia", "--store", str(store),
                 "--parity-images", "64", "--detectors", "feature-squeezing,low-confidence,mia-vote",
                 "--mia-run", str(mia_run.out), "--target-fpr", str(TARGET)])
    assert code == 0
    return store / "fmnist-mia" / "1"


@pytest.fixture(scope="module")
def images(mia_run):
    """200 clean test images, then 200 adversarial ones (FGSM and PGD, from the MIA run)."""
    adversarial = torch.load(mia_run.out / "adversarial.pt", weights_only=True)["test"]["x"]
    picks = torch.randperm(len(adversarial), generator=torch.Generator().manual_seed(0))[:200]
    return torch.cat([mia_run.splits.test.x, adversarial[picks]]).numpy()


def _entry(bundle_dir) -> dict:
    guard = json.loads((bundle_dir / "manifest.json").read_text())["guard"]
    return next(d for d in guard["detectors"] if d["name"] == "mia-vote")


def _mia_scores(bundle_dir, x: np.ndarray) -> np.ndarray:
    """mia-vote's scores on `x`, through the calibration scorer (as at export)."""
    from serving.guard.registry import create_detector
    from serving.engine import OnnxModel
    from training.export.calibrate import detector_scores

    detector = create_detector("mia-vote", {"file": "mia.onnx"}, bundle_dir, ONE_THREAD)
    return detector_scores(OnnxModel.load(bundle_dir / "model.onnx", ONE_THREAD), x, [detector])[:, 0]


def test_bundle_lists_the_graph_with_its_sha256(mia_bundle):
    bundle = load_bundle(mia_bundle)
    [graph] = bundle.models_with_role("detector")
    assert graph.file == "mia.onnx" and graph.sha256 == sha256_file(mia_bundle / "mia.onnx")
    assert graph.outputs == "logits,votes,adversarial_score" and graph.extra["members"] == 3
    assert graph.extra["parity"]["votes_equal"]
    assert [d["name"] for d in bundle.guard["detectors"]] == ["feature-squeezing", "low-confidence", "mia-vote"]
    assert _entry(mia_bundle)["options"] == {"file": "mia.onnx"}


def test_scores_are_the_pytorch_ensembles_adversarial_vote_share(mia_bundle, mia_run, images):
    from training.checkpoint import load_model

    ensemble, _ = load_model(mia_run.out)
    with torch.no_grad():
        votes, _ = ensemble.vote(torch.from_numpy(images))
    expected = (votes[:, -1] / len(ensemble.members)).numpy()
    scores = _mia_scores(mia_bundle, images)
    np.testing.assert_array_equal(scores, expected)
    assert np.isin(scores, np.arange(4, dtype=np.float32) / 3).all()
    assert scores[200:].mean() > scores[:200].mean() + 0.3  # the attacked half gets the votes


def test_calibration_is_as_near_the_target_as_the_vote_allows(mia_bundle, fmnist_small):
    entry = _entry(mia_bundle)
    calibration = fmnist_small.val.x.numpy()  # the primary run's validation split, as at export
    scores = _mia_scores(mia_bundle, calibration)
    assert entry["calibration"]["images"] == len(calibration) == 1000
    share = entry["target_fpr"]  # the detector's own rate: its share of the verdict's 5% (joint calibration)
    assert 0 < share <= TARGET
    rate = float(np.mean(scores > entry["threshold"]))
    assert rate == entry["calibration"]["measured_fpr"] <= share
    lower = [s for s in np.unique(scores) if s < entry["threshold"]]
    if lower:  # one vote share less would exceed its share: the closest rate at or below it
        assert np.mean(scores > lower[-1]) > share
    fresh = _mia_scores(mia_bundle, fmnist_small.test.x.numpy())
    assert abs(float(np.mean(fresh > entry["threshold"])) - rate) <= 0.025  # holds on unseen clean images


def test_pipeline_reports_the_mia_vote(mia_bundle, images):
    from serving.guard import Verdict
    from serving.pipeline import Pipeline

    result = Pipeline.load(mia_bundle, ONE_THREAD).run(images)
    [outcome] = [o for o in result.guard.outcomes if o.name == "mia-vote"]
    np.testing.assert_array_equal(outcome.scores, _mia_scores(mia_bundle, images))
    assert outcome.threshold == _entry(mia_bundle)["threshold"]
    assert outcome.target_fpr == pytest.approx(_entry(mia_bundle)["target_fpr"])
    np.testing.assert_array_equal(outcome.flagged, outcome.scores > outcome.threshold)
    assert (result.guard.verdicts[outcome.flagged] == Verdict.ADVERSARIAL).all()  # policy 'any'
    assert outcome.flagged[200:].mean() > outcome.flagged[:200].mean() + 0.3


def test_a_missing_graph_is_refused_naming_it(mia_bundle, tmp_path):
    from serving.pipeline import Pipeline

    copy = tmp_path / "bundle"
    shutil.copytree(mia_bundle, copy)
    (copy / "mia.onnx").unlink()
    with pytest.raises(BundleError, match="manifest names mia.onnx, which is missing"):
        Pipeline.load(copy, ONE_THREAD)


def test_a_graph_the_manifest_does_not_verify_is_refused(mia_bundle, tmp_path):
    from serving.pipeline import Pipeline

    copy = tmp_path / "bundle"
    shutil.copytree(mia_bundle, copy)
    shutil.copy(copy / "mia.onnx", copy / "other.onnx")
    manifest = json.loads((copy / "manifest.json").read_text())
    next(d for d in manifest["guard"]["detectors"] if d["name"] == "mia-vote")["options"]["file"] = "other.onnx"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="mia-vote' uses other.onnx, which the manifest's models do not list"):
        Pipeline.load(copy, ONE_THREAD)
