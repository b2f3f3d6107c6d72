"""Control for issue 17: the undefended 2D CNN trained with the same random occlusion as the
volumized variants (`training.defenses.volumized.augment`), so that a gain can be attributed to
the volumizer or to the augmentation.

    python -m bench.occluded_baseline --out runs/vv-undefended-occ --limit-train 10000 --epochs 6

Writes a normal run folder (`training.defenses.volumized.variants --model LABEL=RUN` loads it).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from training.data import DataConfig, load_splits
from training.defenses.volumized.augment import OcclusionConfig, occlude
from training.models import create_model, model_spec_for
from training.trainer import TrainConfig, fit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="fmnist-cnn")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--limit-train", type=int, default=None)
    parser.add_argument("--occlusion", type=float, default=0.5, help="share of training images occluded")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data = DataConfig(name="fashion-mnist", limit_train=args.limit_train, seed=args.seed)
    splits = load_splits(data)
    spec = model_spec_for(args.model, splits)
    config = OcclusionConfig(prob=args.occlusion)
    torch.manual_seed(args.seed)
    fit(create_model(spec), spec, splits, TrainConfig(epochs=args.epochs, seed=args.seed), Path(args.out),
        batch_loss=lambda model, x, y: F.cross_entropy(model(occlude(x, config)), y),
        run_config={"data": {"name": "fashion-mnist", "data_dir": None, "seed": args.seed,
                             "limit_train": args.limit_train},
                    "defense": "standard+occlusion", "occlusion": args.occlusion}, resume=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
