"""`advguard bundle`: compose one defended bundle from several training runs.

A YAML config (`--config bundle.yaml`, see training/export/compose.py and deploy/bundles/) or
flags for the common case; flags override the config's keys. Building the full parser imports
the detector registry (no torch); running it imports training (torch).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from advguard.cli._args import process_count

HELP = "compose a defended bundle (primary, fallback, reference, detectors) with its robustness card"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from serving.guard import known_detectors

    p.add_argument("--config", default=None, help="YAML bundle config (keys as the flags below, with _ for -)")
    p.add_argument("--name", default=None, help="bundle name (model_store/<name>/<version>/)")
    p.add_argument("--store", default="model_store")
    p.add_argument("--version", default=None, help="default: one past the highest existing")
    p.add_argument("--primary", default=None, help="run that answers (an `advguard train` folder)")
    p.add_argument("--fallback", default=None, help="run that answers flagged inputs (action fallback)")
    p.add_argument("--reference", default=None, help="run the disagreement detector compares the primary with")
    p.add_argument("--mia-run", default=None, help="`advguard train --defense mia` run: the mia-vote detector's graph")
    p.add_argument("--detectors", default=None,
                   help=f"comma-separated, in guard order (default disagreement); known: {', '.join(known_detectors())}")
    p.add_argument("--target-fpr", type=float, default=None,
                   help="clean false-positive rate of the verdict (default 0.05), thresholds chosen jointly")
    p.add_argument("--policy", choices=["any", "majority"], default=None, help="default any")
    p.add_argument("--action", choices=["flag", "reject", "fallback"], default=None, help="default fallback")
    p.add_argument("--card", choices=["none", "quick", "full"], default=None,
                   help="robustness card: quick (500 test images, default), full (all), none")
    p.add_argument("--card-shards", default=None,
                   help="folder of the card's finished shards (default <store>/<name>/.card-<card>); a card "
                        "resumes from the shards there that measured the same models and config")
    p.add_argument("--card-jobs", type=process_count, default=1,
                   help="processes sharing the card's shards (default 1; up to one per free core)")
    p.add_argument("--torchserve", action="store_true", default=None, help="also write <name>.mar")


def config_from_args(args: argparse.Namespace):
    from training.export.compose import BundleConfig

    overrides = {"name": args.name, "primary": args.primary, "fallback": args.fallback, "reference": args.reference,
                 "mia_run": args.mia_run, "target_fpr": args.target_fpr, "policy": args.policy,
                 "action": args.action, "card": args.card, "card_shards": args.card_shards,
                 "torchserve": args.torchserve, "version": args.version}
    if args.detectors is not None:
        overrides["detectors"] = [d for d in args.detectors.split(",") if d and d != "none"]
    if args.config:
        return BundleConfig.from_yaml(Path(args.config), **overrides)
    if not args.name or not args.primary:
        raise ValueError("give --config bundle.yaml, or at least --name and --primary")
    return BundleConfig.from_dict({}, **overrides)


def run(args: argparse.Namespace) -> int:
    from training.export.compose import compose_bundle

    path = compose_bundle(config_from_args(args), Path(args.store), card_jobs=args.card_jobs)
    print(f"bundle written: {path}")
    from advguard.cli.card import print_card

    print_card(path)
    return 0
