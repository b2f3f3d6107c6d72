"""The robustness evaluator: `evaluate(model, split, suite) -> Report`.

Per sample it records which attacks broke it, so the report gives each attack's robust
accuracy and the worst case over all of them (a sample counts as robust only if every attack
failed). When a black-box attack beats the white-box ones, the report says so: the gradients
the white-box attacks follow are masked, and their figure is not a robustness figure.
"""
from __future__ import annotations

import logging
import time

import torch
from torch import nn
from tqdm import tqdm

from training.attacks import create_attack
from training.data import Split
from training.evaluate.report import AttackResult, Report
from training.evaluate.suite import AttackSpec

log = logging.getLogger(__name__)


class ScaledLogits(nn.Module):
    """logits / scale: the model an attacker sees when attacking at temperature `scale`."""

    def __init__(self, model: nn.Module, scale: float) -> None:
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) / self.scale


def masking_suspected(results: list[AttackResult], margin: float) -> bool:
    """True when the plain gradient attacks (cross-entropy on the deployed logits) are beaten by
    more than `margin` by an attack that needs no such gradient: a black-box attack, the CW
    margin loss, or the same attack on rescaled logits. Their figure then measures a masked
    (saturated or obfuscated) gradient, not robustness."""
    plain = [r.robust_accuracy for r in results
             if r.white_box and r.logit_scale == 1.0 and r.params.get("loss", "ce") == "ce"]
    others = [r.robust_accuracy for r in results
              if not r.white_box or r.logit_scale != 1.0 or r.params.get("loss", "ce") != "ce"]
    return bool(plain and others and min(others) < min(plain) - margin)


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(dim=1)


def evaluate(model: nn.Module, split: Split, suite: tuple[AttackSpec, ...], batch_size: int = 256,
             name: str = "model", masking_margin: float = 0.02) -> Report:
    """Run every attack of `suite` on `split` (pixels in [0, 1]) against `model`.

    Args:
        masking_margin: a black-box attack beating the best white-box one by more than this
            (fraction of samples) marks the white-box figures as gradient-masked.
    Example: `report = evaluate(model, splits.test.take(1000), standard_suite())`
    """
    model.eval()
    clean_correct = torch.cat([_predict(model, split.x[i:i + batch_size]) == split.y[i:i + batch_size]
                               for i in range(0, len(split), batch_size)])
    robust_all = clean_correct.clone()
    results = []
    for spec in suite:
        target = model if spec.logit_scale == 1.0 else ScaledLogits(model, spec.logit_scale)
        attack = create_attack(spec.attack, target, **spec.params)
        began = time.perf_counter()
        correct = torch.zeros(len(split), dtype=torch.bool)
        max_linf = 0.0
        for i in tqdm(range(0, len(split), batch_size), desc=spec.label, unit="batch", leave=False,
                      mininterval=30.0):
            x, y = split.x[i:i + batch_size], split.y[i:i + batch_size]
            x_adv = attack(x, y)
            max_linf = max(max_linf, float((x_adv - x).abs().max()))
            correct[i:i + batch_size] = _predict(model, x_adv) == y
        correct &= clean_correct
        robust_all &= correct
        seconds = time.perf_counter() - began
        results.append(AttackResult(label=spec.label, attack=spec.attack, params=spec.params,
                                    logit_scale=spec.logit_scale, white_box=spec.white_box,
                                    robust_accuracy=correct.float().mean().item(), max_linf=max_linf,
                                    seconds=round(seconds, 2)))
        log.info("%s: robust accuracy %.4f (%.0f s)", spec.label, results[-1].robust_accuracy, seconds)
    masked = masking_suspected(results, masking_margin)
    return Report(name=name, n=len(split), clean_accuracy=clean_correct.float().mean().item(),
                  attacks=results, worst_case_accuracy=robust_all.float().mean().item(),
                  gradient_masking_suspected=masked)
