"""A helper process for a `mia` training run: it makes the run's adversarial shards and trains
its EAT cycles and members beside it.

    OMP_NUM_THREADS=1 python -m training.defenses.mia.helper --run runs/mia-full-cpu

The adversarial pool (stage 2) is cut into shards that processes claim one at a time
(`training.defenses.mia.craft`). A helper reads the run's config.json (written by `advguard
train --defense mia` as it starts), loads the same data and the finished source model, waits for
the training process to define the pool (adversarial/pool.json), then makes the shards nobody
holds: the train and val pools and the test sets, in the training process's order, with the
same seeds, so the pool is the one a lone process would make. Once the pool is complete it
trains the EAT cycles and members that nobody holds (`training.defenses.mia.stages`), from the
last, with the run's seeds and epochs; the training process trains the others, loads the
helper's and builds the ensemble. A helper never writes pool.json: a run whose pool differs from
its config stops it with the difference named. It exits when every stage is finished; start one
per free core.
"""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import fields
from pathlib import Path

from training.checkpoint import load_model, read_json
from training.data import DataConfig, load_splits
from training.defenses.mia.config import MIAConfig
from training.defenses.mia.pool import POOL_FILE, SHARD_DIR, adversarial_sets
from training.defenses.mia.stages import Stages, pool_needed
from training.trainer import TrainConfig

log = logging.getLogger(__name__)
POLL_SECONDS = 10.0


def run_config(run: Path) -> tuple[MIAConfig, DataConfig, TrainConfig, dict]:
    """The run's MIA config, data config, training config and the record its stages carry (the
    config.json that `advguard train --defense mia` wrote, less its training config)."""
    path = run / "config.json"
    config = read_json(path)
    if config.get("defense") != "mia" or "data" not in config:
        raise ValueError(f"{path} is not the config of an `advguard train --defense mia` run")
    known = {f.name for f in fields(MIAConfig)}
    mia = MIAConfig(**{k: tuple(v) if isinstance(v, list) else v
                       for k, v in config["defense_config"].items() if k in known})
    data = {k: v for k, v in config["data"].items() if k in DataConfig.__dataclass_fields__}
    train = TrainConfig(**config["train"])
    return mia, DataConfig(**data), train, {k: v for k, v in config.items() if k != "train"}


def wait_for(paths: list[Path], timeout: float) -> None:
    """Block until every path exists (the training process gets there), or raise after timeout."""
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        if time.monotonic() > deadline:
            missing = ", ".join(str(p) for p in paths if not p.exists())
            raise TimeoutError(f"{missing} did not appear within {timeout:.0f} s: start the training "
                               "(`make mia-full` or `advguard train --defense mia --out RUN ...`), then the helper")
        time.sleep(POLL_SECONDS)


def help_run(run: Path, timeout: float = 24 * 3600.0, stages: bool = True) -> list[str]:
    """Wait for the training to define the pool (it writes pool.json after config.json and the
    source model), make the shards nobody holds, then (`stages`) train the EAT cycles and members
    nobody holds until all are finished; returns the tasks trained here."""
    wait_for([run / SHARD_DIR / POOL_FILE], timeout)
    cfg, data, train, record = run_config(run)
    source, _ = load_model(Path(cfg.source_run) if cfg.source_run else run / "source")
    splits = cfg.used_splits(load_splits(data))
    sets = adversarial_sets(cfg, run, source.eval(), splits, resume=True, seed=train.seed, need=pool_needed(cfg, run))
    log.info("pool complete: %s", ", ".join(f"{key} {len(value)}" for key, value in sets.items()))
    if not stages:
        return []
    made = [str(task) for task in Stages(cfg, run, splits, sets, train, record).work(helper=True)]
    log.info("trained here: %s", ", ".join(made) or "nothing (all held or done)")
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="the run folder of an `advguard train --defense mia` run")
    parser.add_argument("--timeout", type=float, default=24 * 3600.0,
                        help="seconds to wait for the training to start, finish its source model and define the pool")
    parser.add_argument("--pool-only", action="store_true",
                        help="exit once the pool is complete instead of training EAT cycles and members")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s [helper]: %(message)s")
    help_run(Path(args.run), args.timeout, stages=not args.pool_only)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
