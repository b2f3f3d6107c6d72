"""The run's adversarial sets (stage 2 of `mia`): shards on disk, checked, assembled, cached.

`out/adversarial/pool.json` defines the pool (attacks with their budgets, seed, sizes, shard
size, the source model's hash); `out/adversarial/<set>/<a>-<attack>/NNNNN.pt` hold the shards
(`training.defenses.mia.craft`); `out/adversarial.pt` is the assembled cache that later stages,
`training.defenses.mia.eval` and the tests read. On resume a pool.json that differs from the
run's is refused (resuming would mix two pools); without --resume the shards are made afresh.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch
from torch import nn

from training.checkpoint import model_sha256, save_atomic, write_json
from training.data import Splits
from training.defenses.mia.config import MIAConfig
from training.defenses.mia.craft import craft_per_attack, craft_pool
from training.defenses.mia.data import AdversarialSet, adversarial_count

log = logging.getLogger(__name__)
POOL_FILE, CACHE_FILE, SHARD_DIR = "pool.json", "adversarial.pt", "adversarial"
POOL_SETS = ("train", "val", "test")


def pool_sizes(cfg: MIAConfig, splits: Splits) -> dict[str, int]:
    """Adversarial images per set: the train and val pools (for the largest share) and the test
    images attacked by each attack."""
    top = max((*cfg.shares, cfg.share))
    val = min(cfg.val_size, len(splits.val)) if cfg.val_size else len(splits.val)
    test = min(cfg.eval_size, len(splits.test)) if cfg.eval_size else len(splits.test)
    return {"train": adversarial_count(len(splits.train), top), "val": adversarial_count(val, top),
            "test_per_attack": test}


def pool_definition(cfg: MIAConfig, splits: Splits, seed: int, source_sha256: str) -> dict:
    return {"attacks": [str(s) for s in cfg.attack_specs()], "seed": seed, "shard_size": cfg.shard_size,
            "attack_batch": cfg.attack_batch, "sizes": pool_sizes(cfg, splits),
            "clean": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
            "source_sha256": source_sha256}


def _check_definition(folder: Path, definition: dict, resume: bool) -> None:
    path = folder / POOL_FILE
    if resume and path.exists():
        existing = json.loads(path.read_text())
        if existing != definition:
            changed = sorted(k for k in definition if existing.get(k) != definition[k])
            raise ValueError(f"{path} describes another pool (differs in: {', '.join(changed)}); resume with the "
                             f"options of the run that made it, or remove {folder} to make a new pool")
        return
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    write_json(path, definition)


def adversarial_sets(cfg: MIAConfig, out: Path, source: nn.Module, splits: Splits, resume: bool,
                     seed: int, need: tuple[str, ...] = POOL_SETS) -> dict[str, AdversarialSet]:
    """The train/val pools and the per-attack test sets (those in `need`), made (or resumed)
    shard by shard; each set is made with its own seed, so making a subset changes nothing."""
    folder, cache = Path(out) / SHARD_DIR, Path(out) / CACHE_FILE
    definition = pool_definition(cfg, splits, seed, model_sha256(source))
    _check_definition(folder, definition, resume)
    if resume and cache.exists():
        state = torch.load(cache, map_location="cpu", weights_only=True)
        if state.get("definition") == definition and all(key in state for key in need):
            return {key: AdversarialSet.from_state(state[key]) for key in need}
    attacks, sizes = cfg.attack_specs(), definition["sizes"]
    common = {"batch_size": cfg.attack_batch, "shard_size": cfg.shard_size}
    make = {
        "train": lambda: craft_pool(source, splits.train, attacks, sizes["train"], seed, folder=folder / "train",
                                    label="train", **common),
        "val": lambda: craft_pool(source, splits.val.take(cfg.val_size) if cfg.val_size else splits.val, attacks,
                                  sizes["val"], seed + 1, folder=folder / "val", label="val", **common),
        "test": lambda: craft_per_attack(source, splits.test.take(sizes["test_per_attack"]), attacks, seed + 2,
                                         folder=folder / "test", label="test", **common),
    }
    sets = {key: make[key]() for key in POOL_SETS if key in need}
    save_atomic({"definition": definition, **{key: value.state() for key, value in sets.items()}}, cache)
    log.info("adversarial pool: %s (%s)", ", ".join(f"{key} {len(value)}" for key, value in sets.items()),
             ", ".join(definition["attacks"]))
    return sets
