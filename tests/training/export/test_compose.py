"""`advguard bundle` composition: roles, SHA-256, parity, twins, a guard calibrated jointly, and
bundles missing a model the guard needs refused at build and at load, naming it."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from serving.bundle import BundleError, load_bundle, sha256_file


def manifest(bundle) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def test_roles_files_and_hashes(defended_bundle):
    m = manifest(defended_bundle)
    roles = {e["role"]: e["file"] for e in m["models"]}
    assert roles == {"primary": "model.onnx", "fallback": "fallback.onnx", "reference": "fallback.onnx"}
    for entry in m["models"]:
        assert sha256_file(defended_bundle / entry["file"]) == entry["sha256"]
        assert entry["extra"]["parity_max_abs_diff"] <= 1e-4
    twins = {t["of"]: t for t in m["twins"]}
    assert set(twins) == {"model.onnx", "fallback.onnx"}
    for twin in twins.values():
        assert sha256_file(defended_bundle / twin["file"]) == twin["sha256"]
    assert m["composition"]["action"] == "fallback"
    load_bundle(defended_bundle)  # verifies every hash


def test_guard_calibrated_jointly_and_holds_on_fresh_images(defended_bundle):
    guard = manifest(defended_bundle)["guard"]
    assert [d["name"] for d in guard["detectors"]] == ["disagreement", "feature-squeezing"]
    verdict = guard["verdict"]
    assert verdict["target_fpr"] == 0.05
    assert verdict["calibration"]["images"] == 1000 and verdict["calibration"]["measured_fpr"] <= 0.05
    # a fresh clean split (all 10,000 test images, never used to calibrate) within 2 points
    assert verdict["fresh"]["images"] == 10_000
    assert abs(verdict["fresh"]["measured_fpr"] - 0.05) <= 0.02, verdict
    for d in guard["detectors"]:
        assert d["fresh"]["measured_fpr"] <= verdict["fresh"]["measured_fpr"] + 1e-9


def test_missing_models_refused_at_build(trained_run):
    from training.export.compose import BundleConfig, DetectorEntry

    with pytest.raises(ValueError, match="action 'fallback' needs a fallback run"):
        BundleConfig(name="x", primary=trained_run, reference=trained_run, action="fallback")
    with pytest.raises(ValueError, match="detector 'disagreement' needs a reference run"):
        BundleConfig(name="x", primary=trained_run, fallback=trained_run, detectors=(DetectorEntry("disagreement"),))
    with pytest.raises(ValueError, match="unknown bundle config key.*primery"):
        BundleConfig.from_dict({"name": "x", "primery": str(trained_run)})


@pytest.mark.parametrize("role, message", [("reference", "detector 'disagreement' compares the primary with a model "
                                                         "of role 'reference'"),
                                            ("fallback", "action is 'fallback' but the bundle has no model of role "
                                                         "'fallback'")])
def test_missing_models_refused_at_load(defended_bundle, tmp_path, role, message):
    from serving.pipeline import Pipeline

    copy = tmp_path / "copy"
    shutil.copytree(defended_bundle, copy)
    m = manifest(copy)
    m["models"] = [e for e in m["models"] if e["role"] != role]
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=message):
        Pipeline.load(copy)


def test_fallback_answers_flagged_images(defended_bundle, fmnist_small):
    """Flagged images are answered by the fallback (its probabilities, `answered_by`); the rest
    by the primary."""
    from serving.engine import OnnxModel, softmax
    from serving.pipeline import Pipeline
    from training.attacks import create_attack
    from training.checkpoint import load_model

    pipeline = Pipeline.load(defended_bundle)
    primary, _ = load_model(defended_bundle / "twins" / "model.pt")
    x, y = fmnist_small.test.x[:64], fmnist_small.test.y[:64]
    x_adv = create_attack("pgd", primary, eps=0.1, steps=10, alpha=0.025)(x, y).numpy()
    result = pipeline.run(x_adv)
    flagged = result.guard.verdicts == 3
    clean_flagged = (pipeline.run(x.numpy()).guard.verdicts == 3).mean()
    # PGD on the primary alone: the robust reference disagrees far more often than on clean images
    # (this fixture's reference is a 2-epoch fast-at model: 34% against 6% on these 64 images)
    assert flagged.mean() > 3 * clean_flagged
    assert set(result.answered_by[flagged]) == {"fallback.onnx"}
    assert set(result.answered_by[~flagged]) <= {"model.onnx"}
    fallback = OnnxModel.load(defended_bundle / "fallback.onnx")
    np.testing.assert_allclose(result.probs[flagged], softmax(fallback.logits(x_adv[flagged])), atol=1e-5)
    # served answers under that attack beat the primary's own
    primary_acc = (pipeline.primary.logits(x_adv).argmax(axis=1) == y.numpy()).mean()
    assert (result.classes == y.numpy()).mean() > primary_acc + 0.2


def test_card_shards_folder_from_config_and_flag(trained_run, tmp_path):
    """`card_shards` (YAML key or --card-shards) names where the card's shards live; a path."""
    import argparse
    from pathlib import Path

    from advguard.cli.bundle import add_arguments, config_from_args
    from training.export.compose import BundleConfig

    config = BundleConfig.from_dict({"name": "x", "primary": str(trained_run), "fallback": str(trained_run),
                                     "reference": str(trained_run), "card_shards": "results/shards"})
    assert config.card_shards == Path("results/shards")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--name", "x", "--primary", str(trained_run), "--fallback", str(trained_run),
                              "--reference", str(trained_run), "--card-shards", str(tmp_path / "s")])
    assert config_from_args(args).card_shards == tmp_path / "s"
