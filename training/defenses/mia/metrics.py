"""What the MIA ensemble is judged by, reported separately (SEEDS.md's caution: the paper's
"accuracy" mixes clean classification and detection):

- clean accuracy: the decision equals the true class on clean test images (10 classes; a clean
  image voted "adversarial" counts as wrong), and the same among the images not flagged;
- false-positive rate: share of clean test images voted "adversarial";
- true-positive rate per attack: share of that attack's images voted "adversarial" (all of
  them, and only those that fooled the source model);
- slipped-through accuracy: among an attack's images *not* flagged, the share classified as
  their true class (what a user gets when the detector misses);
- the 11-way accuracy and macro-F1 on clean + that attack's images (paper 002, Tables 5-6).
"""
from __future__ import annotations

import torch
from torch import nn

from training.data import Split
from training.defenses.mia.data import AdversarialSet


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    was = model.training
    model.eval()
    out = [model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)]
    model.train(was)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def macro_f1(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """Mean F1 over the classes present in `target` or `pred`."""
    scores = []
    for c in range(num_classes):
        tp = ((pred == c) & (target == c)).sum().item()
        fp = ((pred == c) & (target != c)).sum().item()
        fn = ((pred != c) & (target == c)).sum().item()
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores) if scores else 0.0


def _share(mask: torch.Tensor) -> float | None:
    return float(mask.float().mean()) if len(mask) else None


def detection_report(model: nn.Module, clean: Split, adversarial: AdversarialSet, adversarial_class: int) -> dict:
    """The figures above for `model` (any classifier with an adversarial class)."""
    clean_pred = predict(model, clean.x)
    clean_flag = clean_pred == adversarial_class
    report = {
        "clean_accuracy": _share(clean_pred == clean.y),
        "false_positive_rate": _share(clean_flag),
        "clean_accuracy_unflagged": _share((clean_pred == clean.y)[~clean_flag]),
        "clean_size": len(clean),
        "attacks": {},
    }
    for name in adversarial.names:
        subset = adversarial.of(name)
        pred = predict(model, subset.x)
        flag = pred == adversarial_class
        slipped = ~flag
        target = torch.cat([clean.y, torch.full((len(subset),), adversarial_class, dtype=clean.y.dtype)])
        both = torch.cat([clean_pred, pred])
        report["attacks"][name] = {
            "size": len(subset),
            "fooled_source": _share(subset.fooled),
            "true_positive_rate": _share(flag),
            "true_positive_rate_on_fooled": _share(flag[subset.fooled]),
            "slipped_through": int(slipped.sum()),
            "slipped_accuracy": _share((pred == subset.y)[slipped]),
            "accuracy_11way": _share(both == target),
            "f1_11way": macro_f1(both, target, adversarial_class + 1),
        }
    return report


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def eat_table(rows: list[dict], attacks: tuple[str, ...]) -> str:
    """Markdown like paper 002's Table 5: one row per (model, cycle), accuracy and F1 per attack."""
    head = "| EAT model | cycle (adv. share) | " + " | ".join(f"{a} acc | {a} F1" for a in attacks) + " |"
    sep = "|" + "---|" * (2 + 2 * len(attacks))
    lines = [head, sep]
    for row in rows:
        cells = []
        for a in attacks:
            r = row["report"]["attacks"].get(a, {})
            cells += [pct(r.get("accuracy_11way")), pct(r.get("f1_11way"))]
        lines.append(f"| {row['model']} | {row['cycle']} ({100 * row['share']:.0f}%) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def detection_table(report: dict) -> str:
    """Markdown: one row per attack (TPR, TPR on fooled, slipped-through accuracy)."""
    lines = [f"clean accuracy (10 classes) {pct(report['clean_accuracy'])}%, false-positive rate "
             f"{pct(report['false_positive_rate'])}%, clean accuracy when not flagged "
             f"{pct(report['clean_accuracy_unflagged'])}% ({report['clean_size']} clean test images)",
             "",
             "| attack | images | fooled source % | TPR % | TPR on fooled % | slipped through | "
             "accuracy on slipped % |",
             "|---|---|---|---|---|---|---|"]
    for name, r in report["attacks"].items():
        lines.append(f"| {name} | {r['size']} | {pct(r['fooled_source'])} | {pct(r['true_positive_rate'])} | "
                     f"{pct(r['true_positive_rate_on_fooled'])} | {r['slipped_through']} | "
                     f"{pct(r['slipped_accuracy'])} |")
    return "\n".join(lines)
