"""`advguard train`: standard training, or a registered defence.

Building the full parser imports `training.models` and `training.defenses` (torch) to list the
registered names; `advguard.cli.main` builds it only when `train` runs.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from advguard.cli._args import add_data_args, data_config, known

HELP = "train a model (standard or with a defence)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from training.defenses import known_defenses
    from training.models import known_models
    from training.trainer import OPTIMIZERS, SCHEDULES

    p.add_argument("--model", default="fmnist-fast", metavar="NAME",
                   help=f"registered model (default fmnist-fast); {known(known_models())}")
    p.add_argument("--defense", default="standard", choices=["standard", *known_defenses()], metavar="NAME",
                   help="standard (default) or a registered defence: %(choices)s")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--optimizer", default="adam", choices=OPTIMIZERS)
    p.add_argument("--schedule", default="onecycle", choices=SCHEDULES)
    p.add_argument("--out", required=True, help="run folder (checkpoint, config.json, metrics.json)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt (every stage of a defence)")
    p.add_argument("--plan", action="store_true",
                   help="print the defence's stages, their estimated cost here and what OUT already holds; "
                        "train nothing (defences with stages: mia)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="defence option, repeatable (e.g. --option eps=0.1)")
    add_data_args(p)


def run(args: argparse.Namespace) -> int:
    from training.data import load_splits
    from training.models import create_model, model_spec_for
    from training.options import parse_options
    from training.trainer import TrainConfig, fit

    config_data = data_config(args)
    splits = load_splits(config_data)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         optimizer=args.optimizer, schedule=args.schedule, seed=args.seed)
    options = parse_options(args.option)
    run_config = {"data": config_data.__dict__, "defense": args.defense, "options": options}
    out = Path(args.out)
    if args.defense == "standard":
        if args.plan:
            raise ValueError("--plan applies to defences with stages (mia)")
        if options:
            raise ValueError("--option applies to defences; standard training takes none")
        spec = model_spec_for(args.model, splits)
        metrics = fit(create_model(spec), spec, splits, config, out, run_config=run_config, resume=args.resume)
    else:
        from training.defenses import create_defense

        defense = create_defense(args.defense, options)
        if args.plan:
            if not hasattr(defense, "plan"):
                raise ValueError(f"--plan: defence {args.defense!r} has no stages to plan (mia has)")
            print(defense.plan(args.model, splits, config, out))
            return 0
        metrics = defense.fit(args.model, splits, config, out, run_config=run_config, resume=args.resume)
    print(f"test accuracy {metrics['test_accuracy']:.4f} ({metrics['test_size']} images), "
          f"wall {metrics['wall_seconds']:.0f} s -> {out}")
    return 0
