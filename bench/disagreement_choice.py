"""Which disagreement score (and detector set) detects the most attacks at a 5% verdict FPR?

Measured on *validation* images (never the test images the card reports on): PGD-40 on the
primary alone and the adaptive `evade` attack on the whole bundle, for each score of the
`disagreement` detector (margin, doubt, tv), alone and with feature squeezing, all calibrated
jointly to the same 5% verdict rate on clean validation images.

    python -m bench.disagreement_choice --primary runs/fmnist-fast-std --robust runs/fmnist-fast-fastat --n 1000
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from training.attacks import create_attack
from training.data import DataConfig, load_splits
from training.evaluate.adaptive import adaptive_pgd
from training.evaluate.card import served
from training.evaluate.twin import BundleTwin
from training.export.compose import BundleConfig, DetectorEntry, compose_bundle

VARIANTS = {
    "margin": [DetectorEntry("disagreement", {"score": "margin"})],
    "doubt": [DetectorEntry("disagreement", {"score": "doubt"})],
    "tv": [DetectorEntry("disagreement", {"score": "tv"})],
    "margin+squeezing": [DetectorEntry("disagreement", {"score": "margin"}), DetectorEntry("feature-squeezing")],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--primary", required=True)
    parser.add_argument("--robust", required=True)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--eps", type=float, default=0.1)
    args = parser.parse_args()
    splits = load_splits(DataConfig(name="fashion-mnist"))
    x, y = splits.val.x[-args.n:], splits.val.y[-args.n:]  # the last n: calibration uses all, noted
    rows = []
    with tempfile.TemporaryDirectory() as store:
        for name, detectors in VARIANTS.items():
            bundle = compose_bundle(BundleConfig(name=name.replace("+", "-"), primary=Path(args.primary),
                                                 fallback=Path(args.robust), reference=Path(args.robust),
                                                 detectors=tuple(detectors), card="none"), Path(store))
            from serving.pipeline import Pipeline

            pipeline, twin = Pipeline.load(bundle), BundleTwin.load(bundle)
            clean = served(pipeline, x.numpy(), y.numpy(), 500)
            pgd = create_attack("pgd", twin.primary, eps=args.eps, alpha=2.5 * args.eps / 40, steps=40)
            x_pgd = torch.cat([pgd(x[i:i + 500], y[i:i + 500]) for i in range(0, len(x), 500)])
            s_pgd = served(pipeline, x_pgd.numpy(), y.numpy(), 500)
            x_ad = torch.cat([adaptive_pgd(twin, x[i:i + 500], y[i:i + 500], "evade", args.eps, 100, penalty=10.0)
                              for i in range(0, len(x), 500)])
            s_ad = served(pipeline, x_ad.numpy(), y.numpy(), 500)
            fooled = clean.primary_correct & ~s_pgd.primary_correct
            rows.append({"detectors": name, "clean_served": float(clean.correct.mean()),
                         "clean_flagged": float(clean.flagged.mean()),
                         "pgd_served": float(s_pgd.correct.mean()),
                         "pgd_detected": float(s_pgd.flagged[fooled].mean()),
                         "evade_served": float(s_ad.correct.mean())})
            print(json.dumps(rows[-1]), flush=True)
    print("| detectors | clean served | clean flagged | PGD served | PGD detected | adaptive evade served |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['detectors']} | {r['clean_served']:.3f} | {r['clean_flagged']:.3f} | {r['pgd_served']:.3f} | "
              f"{r['pgd_detected']:.3f} | {r['evade_served']:.3f} |")


if __name__ == "__main__":
    main()
