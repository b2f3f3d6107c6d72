"""`advguard data`: load a data set and print its splits."""
from __future__ import annotations

import argparse

from advguard.cli._args import add_data_args, data_config

HELP = "load a data set and print its splits"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_data_args(p)


def run(args: argparse.Namespace) -> int:
    from training.data import load_splits

    splits = load_splits(data_config(args))
    print(f"{splits.name}: train {len(splits.train)}, val {len(splits.val)}, test {len(splits.test)}, "
          f"input {splits.input_shape}, labels {', '.join(splits.labels)}")
    return 0
