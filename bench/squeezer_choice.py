"""`python -m bench.squeezer_choice`: pick feature squeezing's bit depth on validation data only.

Calibrates each (bits, median) setting to a 5% false-positive rate on the first 4,000 images of
the run's validation split, then measures how many FGSM and PGD-40 (eps=0.1) examples made from
the next 500 validation images it flags. Test images are not touched, so the chosen setting can
be reported on them without having been tuned on them.
Example:
    python -m bench.squeezer_choice --run runs/fmnist-cnn-default --bundle model_store/fmnist-cnn/3
"""
from __future__ import annotations

import argparse
import sys

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--bundle", required=True, help="bundle folder whose model.onnx is scored")
    p.add_argument("--eps", type=float, default=0.1)
    args = p.parse_args(argv)
    import torch

    from bench.guard_detection import attack_images
    from serving.engine import OnnxModel
    from serving.guard import threshold_for_fpr
    from serving.guard.squeezing import FeatureSqueezing
    from training.checkpoint import load_model
    from training.data import DataConfig, load_splits
    from training.export.calibrate import detector_scores

    torch.manual_seed(0)
    model, _ = load_model(args.run)
    val = load_splits(DataConfig(name="fashion-mnist", val_size=5000, limit_train=1, limit_test=1)).val
    calibration = val.x[:4000].numpy()
    x, y = val.x[4000:4500], val.y[4000:4500]
    adversarial = {name: attack_images(model, x, y, name, args.eps).numpy() for name in ("fgsm", "pgd")}
    onnx = OnnxModel.load(f"{args.bundle}/model.onnx")
    print("| bits | median 2x2 | threshold (5% FPR) | FGSM flagged | PGD-40 flagged |\n|---|---|---|---|---|")
    for bits in (1, 2, 3, 4, 5):
        for median in (2, 0):
            detector = FeatureSqueezing(bits=bits, median=median)
            threshold = threshold_for_fpr(detector_scores(onnx, calibration, [detector])[:, 0], 0.05)
            flagged = [np.mean(detector_scores(onnx, a, [detector])[:, 0] > threshold) for a in adversarial.values()]
            print(f"| {bits} | {'on' if median else 'off'} | {threshold:.3f} | {flagged[0]:.1%} | {flagged[1]:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
