import json

import pytest
import torch
import torch.nn.functional as F

from training.checkpoint import load_model
from training.defenses import create_defense
from training.defenses.common import build_model
from training.defenses.distill import SOFT_LABELS_FILE, TEACHER_DIR, soft_labels
from training.trainer import TrainConfig

T = 20.0


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, defense_splits, one_thread):
    out = tmp_path_factory.mktemp("distill")
    config = TrainConfig(epochs=2, batch_size=64, lr=3e-3)
    with one_thread():
        metrics = create_defense("distill", {"temperature": str(T), "paper_schedule": "false"}).fit(
            "mnist-shallow", defense_splits, config, out)
    return out, metrics


def kl(p: torch.Tensor, logits: torch.Tensor) -> float:
    return F.kl_div(F.log_softmax(logits, 1), p, reduction="batchmean").item()


@pytest.mark.slow
def test_soft_labels_are_the_teachers_softmax_at_t(distilled, defense_splits):
    out, metrics = distilled
    teacher, _ = load_model(out / TEACHER_DIR)
    soft = torch.load(out / SOFT_LABELS_FILE, weights_only=True)
    with torch.no_grad():
        expected = F.softmax(teacher(defense_splits.train.x) / T, dim=1)
    assert torch.allclose(soft, expected, atol=1e-6)
    assert soft.max(1).values.mean() < 0.9  # soft, not one-hot
    assert json.loads((out / "config.json").read_text())["defense_config"]["temperature"] == T
    assert metrics["temperature"] == T and metrics["teacher_test_accuracy"] > 0.6


@pytest.mark.slow
def test_student_learns_the_soft_labels_at_t_and_is_deployed_at_1(distilled, defense_splits, standard_run):
    out, metrics = distilled
    soft = torch.load(out / SOFT_LABELS_FILE, weights_only=True)
    student, _ = load_model(out)
    untrained, _ = build_model("mnist-shallow", defense_splits, 1)
    x = defense_splits.train.x
    with torch.no_grad():
        logits, start = student(x), untrained.eval()(x)
    assert kl(soft, logits / T) < 0.25 * kl(soft, start / T)  # trained on the soft labels at T
    assert kl(soft, logits / T) < 0.25 * kl(soft, logits)  # at T = 1 its softmax is far sharper
    # deployed at T = 1 its softmax saturates: more confident than the standard model's
    standard, _ = load_model(standard_run)
    confidence = soft_labels(student, x, 1.0).max(1).values.mean()
    assert confidence > soft_labels(standard, x, 1.0).max(1).values.mean() + 0.1
    assert metrics["test_accuracy"] > 0.6
