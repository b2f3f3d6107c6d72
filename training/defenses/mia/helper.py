"""A helper process for a `mia` training run: it makes the run's adversarial shards beside it.

    OMP_NUM_THREADS=1 python -m training.defenses.mia.helper --run runs/mia-full-cpu

The adversarial pool (stage 2) is most of a run's cost and is cut into shards that processes
claim one at a time (`training.defenses.mia.craft`). A helper reads the run's config.json
(written by `advguard train --defense mia` as it starts), loads the same data and the finished
source model, waits for the training process to define the pool (adversarial/pool.json), then
makes the shards nobody holds: the train and val pools and the test sets, in the training
process's order, with the same seeds, so the pool is the one a lone process would make. The
training process waits for shards a helper holds and goes on to the EAT stages once all exist.
A helper never writes pool.json: a run whose pool differs from its config stops it with the
difference named. It exits when the pool is complete; start one per free core.
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

log = logging.getLogger(__name__)
POLL_SECONDS = 10.0


def run_config(run: Path) -> tuple[MIAConfig, DataConfig, int]:
    """The run's MIA config, data config and seed, from the config.json its training wrote."""
    path = run / "config.json"
    config = read_json(path)
    if config.get("defense") != "mia" or "data" not in config:
        raise ValueError(f"{path} is not the config of an `advguard train --defense mia` run")
    known = {f.name for f in fields(MIAConfig)}
    mia = MIAConfig(**{k: tuple(v) if isinstance(v, list) else v
                       for k, v in config["defense_config"].items() if k in known})
    data = {k: v for k, v in config["data"].items() if k in DataConfig.__dataclass_fields__}
    return mia, DataConfig(**data), int(config["train"]["seed"])


def wait_for(paths: list[Path], timeout: float) -> None:
    """Block until every path exists (the training process gets there), or raise after timeout."""
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        if time.monotonic() > deadline:
            missing = ", ".join(str(p) for p in paths if not p.exists())
            raise TimeoutError(f"{missing} did not appear within {timeout:.0f} s: start the training "
                               "(`make mia-full` or `advguard train --defense mia --out RUN ...`), then the helper")
        time.sleep(POLL_SECONDS)


def help_run(run: Path, timeout: float = 24 * 3600.0) -> None:
    """Wait for the training to define the pool (it writes pool.json after config.json and the
    source model), make the shards nobody holds, return when the pool is complete."""
    wait_for([run / SHARD_DIR / POOL_FILE], timeout)
    cfg, data, seed = run_config(run)
    source, _ = load_model(Path(cfg.source_run) if cfg.source_run else run / "source")
    sets = adversarial_sets(cfg, run, source.eval(), cfg.used_splits(load_splits(data)), resume=True, seed=seed)
    log.info("pool complete: train %d, val %d, test %d", *(len(sets[k]) for k in ("train", "val", "test")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="the run folder of an `advguard train --defense mia` run")
    parser.add_argument("--timeout", type=float, default=24 * 3600.0,
                        help="seconds to wait for the training to start, finish its source model and define the pool")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s [helper]: %(message)s")
    help_run(Path(args.run), args.timeout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
