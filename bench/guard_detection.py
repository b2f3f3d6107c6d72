"""`python -m bench.guard_detection`: how often the served guard flags FGSM and PGD examples.

White-box L-inf attacks (FGSM, PGD, paper 002's GMA) on the bundle's primary model (the PyTorch weights it was exported
from; the attacker does not know about the detectors), on Fashion-MNIST test images, which were
used neither in training nor in calibration. The guard runs exactly as the server runs it (the
bundle's ONNX model and calibrated thresholds). Reports, per detector and for the policy:
the clean false-positive rate; the detection rate on all adversarial images and on the
successful ones (those that change the prediction); and the share of images where the attack
succeeded and nothing was flagged (what gets through).
Example:
    python -m bench.guard_detection --run runs/fmnist-cnn-default --bundle model_store/fmnist-cnn/1
    python -m bench.guard_detection --run runs/fmnist-cnn-std --bundle model_store/fmnist-mia-full-cpu/1 \
        --bundle model_store/fmnist-best/1 --n 500 --attacks gma
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np


ATTACKS = {"fgsm": "FGSM", "pgd": "PGD-40 (step eps/10, random start)",
           "gma": "GMA (paper 002: Tr(eps) 1e-7..0.3, 3 tries; the smallest size that fools, --eps unused)"}


def attack_images(model, x, y, name: str, eps: float, batch_size: int = 250):
    import torch

    from training.attacks import FGSM, GMA, PGD

    attack = {"fgsm": lambda: FGSM(model, eps=eps), "pgd": lambda: PGD(model, eps=eps, alpha=eps / 10, steps=40),
              "gma": lambda: GMA(model, tries=3)}[name]()
    return torch.cat([attack(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def rates(pipeline, x: np.ndarray, y: np.ndarray, clean_primary: np.ndarray | None = None) -> dict:
    """Served accuracy, and per detector and for the policy: flagged on all images, flagged among
    the successful attacks (the primary right on the clean image and wrong on this one, as on the
    robustness card) and the share of successful attacks nobody flagged."""
    from serving.guard import Verdict

    result = pipeline.run(x)
    primary = pipeline.run(x, guard=False).classes
    success = np.zeros(len(y), dtype=bool) if clean_primary is None else (primary != y) & (clean_primary == y)
    flags = {o.name: o.flagged for o in result.guard.outcomes}
    flags["policy"] = result.guard.verdicts == Verdict.ADVERSARIAL
    row = {"accuracy": float(np.mean(result.classes == y)), "success": float(np.mean(success))}
    for name, flagged in flags.items():
        row[name] = (float(np.mean(flagged)), float(np.mean(flagged[success])) if success.any() else float("nan"),
                     float(np.mean(success & ~flagged)))
    return row


def table(bundle: str, pipeline, x: np.ndarray, y: np.ndarray, adversarial: dict, eps: float) -> None:
    """One bundle's table: the clean row, then one row per attack (images made once, on the primary)."""
    clean_primary = pipeline.run(x, guard=False).classes
    clean = rates(pipeline, x, y)
    names = [d.detector.name for d in pipeline.detectors] + ["policy"]
    policy = f"{pipeline.policy.combine}, {pipeline.policy.action}"
    print(f"\nbundle {bundle}; {len(y)} Fashion-MNIST test images; eps={eps} (L-inf); "
          f"thresholds: " + ", ".join(f"{d.detector.name} > {d.threshold:.4g} (target FPR {d.target_fpr:.0%})"
                                      for d in pipeline.detectors) + f"; policy: {policy}")
    print("\n| input | served accuracy | successful attacks (primary fooled) | " + " | ".join(
        f"{n}: flagged (all / successful) | {n}: got through" for n in names) + " |")
    print("|" + "---|" * (3 + 2 * len(names)))
    print(f"| clean | {clean['accuracy']:.1%} | - | " + " | ".join(
        f"{clean[n][0]:.1%} (false positives) | -" for n in names) + " |")
    for attack, (x_adv, seconds) in adversarial.items():
        r = rates(pipeline, x_adv, y, clean_primary)
        print(f"| {ATTACKS[attack]} | {r['accuracy']:.1%} | {r['success']:.1%} | " + " | ".join(
            f"{r[n][0]:.1%} / {r[n][1]:.1%} | {r[n][2]:.1%}" for n in names) + f" |  <!-- attack {seconds:.0f} s -->")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run folder of the bundles' primary (the attacked weights)")
    p.add_argument("--bundle", required=True, action="append",
                   help="bundle version folder (with calibrated detectors); repeat it to answer the same "
                        "adversarial images with several bundles of that primary")
    p.add_argument("--n", type=int, default=1000, help="test images")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--attacks", default="fgsm,pgd", help=f"comma-separated of {', '.join(ATTACKS)}; "
                   "'none': clean images only")
    args = p.parse_args(argv)
    unknown = sorted(set(args.attacks.split(",")) - {*ATTACKS, "none"})
    if unknown:
        p.error(f"unknown attack(s) {', '.join(unknown)}; known: {', '.join(ATTACKS)} or none")
    import torch

    from serving.pipeline import Pipeline
    from training.checkpoint import load_model
    from training.data import DataConfig, load_splits

    torch.manual_seed(0)
    model, _ = load_model(args.run)
    test = load_splits(DataConfig(name="fashion-mnist", limit_train=1, limit_test=args.n)).test
    adversarial = {}
    for attack in [a for a in args.attacks.split(",") if a in ATTACKS]:
        began = time.perf_counter()
        adversarial[attack] = (attack_images(model, test.x, test.y, attack, args.eps).numpy(),
                               time.perf_counter() - began)
    for bundle in args.bundle:
        table(bundle, Pipeline.load(bundle), test.x.numpy(), test.y.numpy(), adversarial, args.eps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
