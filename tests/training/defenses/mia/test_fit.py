"""`mia` end to end on a small subset: stages, resume, checkpoint, ONNX parity, detection."""
import pytest
import torch

from training.checkpoint import load_model, read_json
from training.defenses import create_defense
from training.defenses.mia.ensemble import MIAEnsemble

# `mia_run`: tests/conftest.py
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread_module")]


def test_stages_and_tables_are_written(mia_run):
    out, metrics = mia_run.out, mia_run.metrics
    for stage in ("source", "eat/eat1/share-25", "eat/eat2/share-50", "members/0-eat1", "members/1-eat2",
                  "members/2-eat1"):
        assert (out / stage / "model.pt").exists(), stage
    assert len(metrics["eat_cycles"]) == 4
    table = (out / "eat_table.md").read_text()
    assert "| eat2 | 2 (50%) |" in table and "pgd F1" in table
    assert metrics["adversarial_pool"]["train"] == 1000  # 50% share of 1,000 clean images


def test_ensemble_detects_attacks_beyond_its_false_alarms(mia_run):
    report = mia_run.metrics["detection"]
    assert report["clean_size"] == 200 and set(report["attacks"]) == {"fgsm", "pgd"}
    fpr = report["false_positive_rate"]
    for name in ("fgsm", "pgd"):
        assert report["attacks"][name]["true_positive_rate"] > fpr + 0.3, (name, report)
    assert report["clean_accuracy"] > 0.5


def test_checkpoint_reloads_the_ensemble_and_resume_reuses_every_stage(mia_run):
    run = mia_run
    model, spec = load_model(run.out)
    assert isinstance(model, MIAEnsemble) and spec.num_classes == 11 and len(model.members) == 3
    again = create_defense("mia", run.options).fit("mia-target", run.splits, run.config, run.out, resume=True)
    assert again["detection"] == run.metrics["detection"]
    assert read_json(run.out / "metrics.json")["detection"] == run.metrics["detection"]


def test_onnx_graph_with_vote_matches_the_trained_ensemble(mia_run, tmp_path):
    from training.defenses.mia.export import export_mia_onnx, mia_onnx_parity

    model, _ = load_model(mia_run.out)
    adversarial = torch.load(mia_run.out / "adversarial.pt", weights_only=True)["test"]["x"][:100]
    images = torch.cat([mia_run.splits.test.x, adversarial])
    parity = mia_onnx_parity(model, export_mia_onnx(model, tmp_path / "mia.onnx", (1, 28, 28)), images)
    assert parity["decisions_equal"] == 1.0 and parity["votes_equal"]
    assert parity["max_abs_logit_diff"] < 1e-4
