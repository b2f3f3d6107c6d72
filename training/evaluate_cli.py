"""`advguard evaluate`: run an attack suite against a trained model and write the report."""
from __future__ import annotations

import argparse
from pathlib import Path

from training.checkpoint import load_model, read_json, write_json
from training.data import DataConfig, load_splits
from training.evaluate import SUITES, distill_suite, evaluate, quick_suite


def run_evaluate(args: argparse.Namespace) -> int:
    model, spec = load_model(args.model)
    run_dir = Path(args.model) if Path(args.model).is_dir() else Path(args.model).parent
    config = read_json(run_dir / "config.json") if (run_dir / "config.json").exists() else {}
    data = config.get("data", {})
    splits = load_splits(DataConfig(name=args.dataset or data.get("name", "fashion-mnist"),
                                    data_dir=args.data_dir or data.get("data_dir"),
                                    seed=data.get("seed", 0), limit_test=args.n))
    if args.suite == "quick":
        suite = quick_suite(args.eps)
    elif args.suite == "distill":
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
