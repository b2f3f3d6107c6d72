import json

import torch
from torch import nn

from training.evaluate import AttackSpec, ScaledLogits, evaluate, quick_suite


def test_quick_suite_reports_drop_and_worst_case(trained_model, fmnist_small, tmp_path):
    model, _ = trained_model
    report = evaluate(model, fmnist_small.test.take(200), quick_suite(0.1), name="small")
    by_label = {r.label: r for r in report.attacks}
    assert report.clean_accuracy > 0.75
    assert by_label["PGD-10 CE"].robust_accuracy < 0.2 < report.clean_accuracy
    assert all(r.max_linf <= 0.1 + 1e-6 for r in report.attacks)
    assert report.worst_case_accuracy <= min(r.robust_accuracy for r in report.attacks)
    assert not report.gradient_masking_suspected  # an undefended model masks nothing
    report.save(tmp_path)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["clean_accuracy"] == report.clean_accuracy
    assert (tmp_path / "report.png").stat().st_size > 1000
    assert "worst case" in (tmp_path / "report.md").read_text()


class Saturated(nn.Module):
    """A model whose logits are scaled by 1e4: softmax saturates and CE gradients vanish,
    as at T=1 after defensive distillation."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x) * 1e4


def test_logit_scaling_unmasks_a_saturated_softmax(trained_model, fmnist_small):
    model, _ = trained_model
    masked = Saturated(model).eval()
    params = {"eps": 0.1, "alpha": 0.025, "steps": 10, "random_start": False}
    suite = (AttackSpec("PGD CE", "pgd", params),
             AttackSpec("PGD CE on logits/1e4", "pgd", params, logit_scale=1e4))
    report = evaluate(masked, fmnist_small.test.take(200), suite)
    plain, scaled = report.attacks
    assert scaled.robust_accuracy < plain.robust_accuracy - 0.3
    assert report.gradient_masking_suspected
    x = fmnist_small.test.x[:4]
    assert torch.allclose(ScaledLogits(masked, 1e4)(x), model(x), atol=1e-3)
