"""`python -m bench.guard_detection`: how often the served guard flags FGSM and PGD examples.

White-box L-inf attacks on the bundle's primary model (the PyTorch weights it was exported
from; the attacker does not know about the detectors), on Fashion-MNIST test images, which were
used neither in training nor in calibration. The guard runs exactly as the server runs it (the
bundle's ONNX model and calibrated thresholds). Reports, per detector and for the policy:
the clean false-positive rate; the detection rate on all adversarial images and on the
successful ones (those that change the prediction); and the share of images where the attack
succeeded and nothing was flagged (what gets through).
Example:
    python -m bench.guard_detection --run runs/fmnist-cnn-default --bundle model_store/fmnist-cnn/1
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def attack_images(model, x, y, name: str, eps: float, batch_size: int = 250):
    import torch

    from training.attacks import FGSM, PGD

    attack = FGSM(model, eps=eps) if name == "fgsm" else PGD(model, eps=eps, alpha=eps / 10, steps=40)
    return torch.cat([attack(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def rates(pipeline, x: np.ndarray, y: np.ndarray, clean_pred: np.ndarray | None = None) -> dict:
    from serving.guard import Verdict

    result = pipeline.run(x)
    pred = result.classes
    success = pred != y if clean_pred is None else (pred != y) & (clean_pred == y)
    flags = {o.name: o.flagged for o in result.guard.outcomes}
    flags["policy"] = result.guard.verdicts == Verdict.ADVERSARIAL
    row = {"accuracy": float(np.mean(pred == y)), "success": float(np.mean(success))}
    for name, flagged in flags.items():
        row[name] = (float(np.mean(flagged)), float(np.mean(flagged[success])) if success.any() else float("nan"),
                     float(np.mean(success & ~flagged)))
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run folder the bundle was exported from")
    p.add_argument("--bundle", required=True, help="bundle version folder (with calibrated detectors)")
    p.add_argument("--n", type=int, default=1000, help="test images")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--attacks", default="fgsm,pgd", help="comma-separated; 'none': clean images only")
    args = p.parse_args(argv)
    import torch

    from serving.pipeline import Pipeline
    from training.checkpoint import load_model
    from training.data import DataConfig, load_splits

    torch.manual_seed(0)
    model, _ = load_model(args.run)
    pipeline = Pipeline.load(args.bundle)
    test = load_splits(DataConfig(name="fashion-mnist", limit_train=1, limit_test=args.n)).test
    y = test.y.numpy()
    clean = rates(pipeline, test.x.numpy(), y)
    clean_pred = pipeline.run(test.x.numpy(), guard=False).classes
    names = [d.detector.name for d in pipeline.detectors] + ["policy"]
    policy = f"{pipeline.policy.combine}, {pipeline.policy.action}"
    print(f"bundle {args.bundle}; {args.n} Fashion-MNIST test images; eps={args.eps} (L-inf); "
          f"thresholds: " + ", ".join(f"{d.detector.name} > {d.threshold:.4g} (target FPR {d.target_fpr:.0%})"
                                      for d in pipeline.detectors) + f"; policy: {policy}")
    print("\n| input | model accuracy | attack success | " + " | ".join(
        f"{n}: flagged (all / successful) | {n}: got through" for n in names) + " |")
    print("|" + "---|" * (3 + 2 * len(names)))
    print(f"| clean | {clean['accuracy']:.1%} | - | " + " | ".join(
        f"{clean[n][0]:.1%} (false positives) | -" for n in names) + " |")
    for attack in [a for a in args.attacks.split(",") if a in ("fgsm", "pgd")]:
        began = time.perf_counter()
        x_adv = attack_images(model, test.x, test.y, attack, args.eps).numpy()
        r = rates(pipeline, x_adv, y, clean_pred)
        label = "FGSM" if attack == "fgsm" else "PGD-40 (step eps/10, random start)"
        print(f"| {label} | {r['accuracy']:.1%} | {r['success']:.1%} | " + " | ".join(
            f"{r[n][0]:.1%} / {r[n][1]:.1%} | {r[n][2]:.1%}" for n in names) + f" |  <!-- {time.perf_counter() - began:.0f} s -->")
    return 0


if __name__ == "__main__":
    sys.exit(main())
