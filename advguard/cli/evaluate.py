"""`advguard evaluate`: run an attack suite against a trained model and write the report.

Building the full parser imports `training.evaluate` (torch) to list the suites.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from advguard.cli._args import add_data_args, process_count

HELP = "robustness report: clean, per-attack and worst-case accuracy"
DISTILL = "distill"  # built by `distill_suite`, which needs a temperature: not in SUITES
CARD = "card"  # a bundle's robustness card (training.evaluate.card), not a model suite


def _suites() -> dict[str, str]:
    """Suite name -> the first sentence of its builder's docstring."""
    from training.evaluate import SUITES, distill_suite

    builders = {**SUITES, DISTILL: distill_suite}
    first = {name: " ".join((fn.__doc__ or name).split()).split(". ")[0].rstrip(".")
             for name, fn in sorted(builders.items())}
    return {name: text[:1].lower() + text[1:] for name, text in first.items()}


def add_arguments(p: argparse.ArgumentParser) -> None:
    suites = _suites()
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--model", help="run folder or checkpoint file")
    target.add_argument("--bundle", help="bundle version folder (model_store/NAME/VERSION), with --suite card")
    p.add_argument("--suite", default="standard", choices=[*suites, CARD], metavar="NAME",
                   help="; ".join(f"{name}: {text}" for name, text in suites.items())
                   + f"; {CARD}: a bundle's robustness card, adaptive attacks included (with --bundle) (default standard)")
    p.add_argument("--profile", choices=["quick", "full", "detection", "cw-gma"], default="quick",
                   help="card profile: quick (500 test images), full (all 10,000, more restarts and steps), "
                        "detection (all 10,000, only the full card's FGSM and PGD rows at eps: a detector's "
                        "detection rate, not a card) or cw-gma (all 10,000, the quick card's CW-L2 and paper "
                        "002's GMA: not a card)")
    p.add_argument("--work-dir", default=None,
                   help="card: folder for finished shards, so an interrupted card resumes (default OUT/shards)")
    p.add_argument("--jobs", type=process_count, default=1,
                   help="card: processes sharing the shards (default 1; up to one per free core; same card)")
    p.add_argument("--partial", action="store_true",
                   help="card: build the card from the shards already finished in --work-dir, evaluate nothing new")
    p.add_argument("--eps", type=float, default=0.1, help="L-inf radius (pixels in [0, 1])")
    p.add_argument("--restarts", type=int, default=5, help="PGD restarts (standard/distill/pgd40 suites)")
    p.add_argument("--temperature", type=float, default=None,
                   help="distill suite: T (default: the run's defence config)")
    p.add_argument("--n", type=int, default=1000, help="test images (first N of the test split)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--out", required=True, help="folder for report.json, report.md and report.png")
    add_data_args(p)


def run_card(args: argparse.Namespace) -> int:
    """`--bundle DIR --suite card`: the card of that bundle, written to OUT (card.json, card.md,
    card.png); the bundle itself is never changed (its manifest's card comes from `advguard bundle`)."""
    import json
    from dataclasses import replace

    from advguard.cli.card import card_table, plot
    from training.data import DataConfig, load_splits
    from training.evaluate.card import PROFILES, evaluate_bundle

    manifest = json.loads((Path(args.bundle) / "manifest.json").read_text())
    splits = load_splits(DataConfig(name=args.dataset or manifest["dataset"], data_dir=args.data_dir))
    config = PROFILES[args.profile]
    if args.n != 1000:  # --n given: override the profile's image count
        config = replace(config, n=args.n)
    out = Path(args.out)
    card = evaluate_bundle(Path(args.bundle), splits.test.x, splits.test.y, config, profile=args.profile,
                           work_dir=Path(args.work_dir) if args.work_dir else out / "shards", partial=args.partial,
                           jobs=args.jobs)
    out.mkdir(parents=True, exist_ok=True)
    (out / "card.json").write_text(json.dumps(card, indent=2))
    table = card_table({**manifest, "robustness": card})
    (out / "card.md").write_text(table + "\n")
    plot({**manifest, "robustness": card}, out / "card.png")
    print(table)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.suite == CARD or args.bundle:
        if not args.bundle or args.suite != CARD:
            raise ValueError("a bundle is evaluated with --bundle DIR --suite card; a run with --model RUN")
        return run_card(args)
    from training.checkpoint import load_model, read_json, write_json
    from training.data import DataConfig, load_splits
    from training.evaluate import SUITES, distill_suite, evaluate, quick_suite

    model, _ = load_model(args.model)
    run_dir = Path(args.model) if Path(args.model).is_dir() else Path(args.model).parent
    config = read_json(run_dir / "config.json") if (run_dir / "config.json").exists() else {}
    data = config.get("data", {})
    splits = load_splits(DataConfig(name=args.dataset or data.get("name", "fashion-mnist"),
                                    data_dir=args.data_dir or data.get("data_dir"),
                                    seed=data.get("seed", 0), limit_test=args.n))
    if args.suite == "quick":
        suite = quick_suite(args.eps)
    elif args.suite == DISTILL:
        temperature = args.temperature or float(config.get("options", {}).get("temperature", 0) or 0)
        if not temperature:
            raise ValueError("--suite distill needs --temperature (the run's config has none)")
        suite = distill_suite(temperature, args.eps, args.restarts)
    else:  # standard, pgd40: (eps, restarts)
        suite = SUITES[args.suite](args.eps, args.restarts)
    report = evaluate(model, splits.test, suite, batch_size=args.batch_size, name=str(run_dir.name))
    out = Path(args.out)
    report.save(out)
    write_json(out / "config.json", {"model": str(args.model), "suite": args.suite, "eps": args.eps,
                                     "restarts": args.restarts, "n": len(splits.test),
                                     "temperature": args.temperature})
    print(report.to_markdown())
    return 0
