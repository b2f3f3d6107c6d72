"""`advguard export`: a training run -> ONNX in a versioned bundle, with a calibrated guard.

Building the full parser imports `serving.guard` (no torch) to list the detectors; running it
imports `training.export` (torch).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from advguard.cli._args import known

HELP = "export a run to ONNX in a versioned bundle"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from serving.guard import known_detectors

    p.add_argument("--run", required=True, help="run folder written by `advguard train`")
    p.add_argument("--name", required=True, help="bundle name (model_store/<name>/<version>/)")
    p.add_argument("--store", default="model_store")
    p.add_argument("--version", default=None, help="default: one past the highest existing")
    p.add_argument("--parity-images", type=int, default=256, help="test images for the ONNX parity check")
    p.add_argument("--torchserve", action="store_true",
                   help="also write <name>.mar (TorchServe archive with advguard's handler) into the bundle")
    p.add_argument("--detectors", default="feature-squeezing,low-confidence",
                   help="guard detectors, comma-separated, calibrated on the run's validation split "
                        "(default feature-squeezing,low-confidence; 'none': no guard; mia-vote needs --mia-run); "
                        f"{known(known_detectors())}")
    p.add_argument("--mia-run", default=None, metavar="DIR",
                   help="an `advguard train --defense mia` run: its ensemble goes into the bundle as mia.onnx, "
                        "the graph of the mia-vote detector (name mia-vote in --detectors)")
    p.add_argument("--target-fpr", type=float, default=0.05, help="clean false-positive rate per detector")
    p.add_argument("--guard-policy", default="any", choices=["any", "majority"])
    p.add_argument("--guard-action", default="flag", choices=["flag", "reject", "fallback"])
    p.add_argument("--squeeze-bits", type=int, default=2, help="feature squeezing's bit depth (1..7)")
    p.add_argument("--calibration-images", type=int, default=None,
                   help="validation images to calibrate on (default: all)")


def run(args: argparse.Namespace) -> int:
    from training.export import export_bundle
    from training.export.calibrate import GuardSpec

    detectors = tuple(d for d in args.detectors.split(",") if d and d != "none")
    guard = GuardSpec(detectors=detectors, target_fpr=args.target_fpr, policy=args.guard_policy,
                      action=args.guard_action, options={"feature-squeezing": {"bits": args.squeeze_bits}},
                      max_images=args.calibration_images) if detectors else None
    path = export_bundle(Path(args.run), name=args.name, store=Path(args.store), version=args.version,
                         dataset_limit=args.parity_images, guard=guard, torchserve=args.torchserve,
                         mia_run=Path(args.mia_run) if args.mia_run else None)
    print(f"bundle written: {path}")
    return 0
