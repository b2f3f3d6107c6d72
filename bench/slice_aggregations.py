"""Issue 17: accuracy of one volumized run's slice scores under every aggregation, on validation
images (to choose the vote's abstention threshold without touching the test set).

    python -m bench.slice_aggregations --run runs/vv-slices-occ --n 2000
"""
from __future__ import annotations

import argparse

import torch

import training.defenses  # noqa: F401  (registers 'volumetric')
from training.checkpoint import load_model, read_json
from training.data import DataConfig, load_splits
from training.defenses.volumized.aggregate import aggregate

CHOICES = [("mean_log_prob", 0.0), ("mean_prob", 0.0), ("trimmed_mean", 0.0), ("vote", 0.0),
           ("vote", 0.5), ("vote", 0.7), ("vote", 0.8), ("vote", 0.9)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--n", type=int, default=2000, help="validation images")
    args = parser.parse_args(argv)
    data = read_json(f"{args.run}/config.json").get("data", {})
    splits = load_splits(DataConfig(name=data.get("name", "fashion-mnist"), seed=data.get("seed", 0),
                                    limit_train=data.get("limit_train")))
    x, y = splits.val.x[:args.n], splits.val.y[:args.n]
    model, _ = load_model(args.run)
    with torch.no_grad():
        scores = torch.cat([model.eval().slice_logits(x[i:i + 500]) for i in range(0, len(x), 500)])
    print(f"{args.run}: {len(x)} validation images; one slice alone right: "
          f"{100 * (scores.argmax(-1) == y[:, None]).float().mean():.1f}%")
    print("| aggregation | abstain | accuracy % |\n|---|---|---|")
    for name, abstain in CHOICES:
        acc = (aggregate(scores, name, model.trim, abstain).argmax(1) == y).float().mean()
        print(f"| {name} | {abstain:g} | {100 * acc:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
