"""Helper processes for one card (`evaluate_bundle(jobs=N)`, `advguard evaluate --jobs N`,
`advguard bundle --card-jobs N`): N - 1 spawned processes on the card's shard folder, each
claiming and evaluating the shards no one holds (`card_shards`' claims), each with its share of
the torch threads; the calling process starts its own shards once every helper has claimed its
first one, so how the shards split does not depend on how long a helper takes to start.

Example: `helpers = start_helpers(path, x, y, config, "test", work_dir, count=1, threads=1)`
"""
from __future__ import annotations

import logging
import multiprocessing
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from training.evaluate.card import CardConfig

log = logging.getLogger(__name__)


def _helper(path: str, x: torch.Tensor, y: torch.Tensor, config: CardConfig, split: str, work_dir: Path,
            threads: int, started) -> None:
    """A helper process of `evaluate_bundle(jobs=N)`: evaluates the shards no one has claimed."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s [card helper]: %(message)s")
    torch.set_num_threads(threads)
    from training.evaluate.card import evaluate_bundle  # the card imports this module

    evaluate_bundle(path, x, y, config, split=split, work_dir=work_dir, started=started)


def start_helpers(path: Path | str, x: torch.Tensor, y: torch.Tensor, config: CardConfig, split: str,
                  work_dir: Path, count: int, threads: int) -> list:
    """`count` helper processes (spawned, daemonic: they end with this one) on the same shard folder;
    returns once each has claimed its first shard (or found none left), so the shards split the
    same way however long a helper takes to start."""
    ctx = multiprocessing.get_context("spawn")
    helpers = []
    for i in range(count):
        started = ctx.Event()
        helper = ctx.Process(target=_helper, args=(str(path), x, y, config, split, work_dir, threads, started),
                             daemon=True, name=f"card helper {i + 1}")
        helper.start()
        while not started.wait(1.0):
            if not helper.is_alive():  # it failed to start: this process does its shards
                log.warning("%s exited with code %s before it claimed a shard", helper.name, helper.exitcode)
                break
        helpers.append(helper)
    return helpers
