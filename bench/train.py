"""`python -m bench.train`: paper 000's efficiency claim, measured. Selective fine-tuning of the
dominant filters (`filter-finetune`) against full PGD adversarial training (`pgd-at`) from
one run, side by side: wall time (Algorithm 1 and the adversarial set included), trainable
parameters, clean accuracy, white-box PGD-40 robust accuracy, and paper 000's setting (PGD-40
images made once against the base model). A `finetune-all` row fine-tunes every layer on the
same data for the same epochs, to separate "which filters" from "fine-tuning at all".

Runs live under OUT (default: the reproduction's folder for the scale), so runs already made
by `advguard reproduce defenses --scale S` are reused with their measured times.
Example:
    python -m bench.train --scale reduced --threads 1
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path


def bench_plan(scale, out: Path, fractions: list[float]):
    from training.reproduce import plan

    runs = {spec.name: spec for spec in plan(scale, out)}
    base_ff = runs["filter-finetune"]
    specs = [runs["standard"], runs["pgd-at"]]
    for fraction in fractions:
        name = "filter-finetune" if fraction == 0.1 else f"filter-finetune-{round(fraction * 100)}"
        specs.append(replace(base_ff, name=name, options={**base_ff.options, "fraction": str(fraction)}))
    specs.append(replace(base_ff, name="finetune-all",
                         options={**base_ff.options, "fraction": "1.0", "train_dense": "true"}))
    return specs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", default="reduced", help="full | reduced | tiny (training.reproduce.SCALES)")
    p.add_argument("--out", default=None, help="default: runs/reproduce-defenses-<scale>")
    p.add_argument("--fractions", default="0.1,0.5", help="dominant-filter fractions to fine-tune")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: default)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    from training.checkpoint import load_model, read_json
    from training.data import load_splits
    from training.models import count_parameters
    from training.reproduce import SCALES, evaluate_run, train_run, transfer_accuracy

    if args.threads:
        torch.set_num_threads(args.threads)
    scale = SCALES[args.scale]
    out = Path(args.out or f"runs/reproduce-defenses-{args.scale}")
    splits = load_splits(scale.data)
    rows = []
    for spec in bench_plan(scale, out, [float(f) for f in args.fractions.split(",")]):
        metrics = train_run(spec, splits, scale.data, out)
        row = evaluate_run(spec, splits, scale, out, metrics)
        if spec.name == "standard":
            continue
        if "transfer" not in row:
            row["transfer"] = transfer_accuracy(out / "standard", out / spec.name, splits.test.take(scale.eval_n), scale)
        metrics = read_json(out / spec.name / "metrics.json")
        total = count_parameters(load_model(out / spec.name)[0])
        row["trainable_parameters"] = metrics.get("trainable", {}).get("trainable_parameters", total)
        row["parameters"] = total
        row["detail"] = {k: metrics[k] for k in ("identify_seconds", "adversarial_set_seconds", "finetune_seconds")
                         if k in metrics}
        rows.append(row)
    reference = next(r for r in rows if r["run"] == "pgd-at")
    pgd_label = next(iter(reference["attacks"]))
    print(f"\nscale {args.scale}: {scale.model}, {splits.train.x.shape[0]} training images, "
          f"eps {scale.eps}, {rows[0]['n']} test images\n")
    print("| run | wall s | x pgd-at time | trainable params | clean | white-box PGD-40 | "
          "paper 000 setting (made on base) | wall-time breakdown |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["train_seconds"] / reference["train_seconds"]
        detail = ", ".join(f"{k.replace('_seconds', '')} {v:.0f}" for k, v in r["detail"].items()) or "training"
        print(f"| {r['run']} | {r['train_seconds']:.0f} | {ratio:.2f} | {r['trainable_parameters']:,} / "
              f"{r['parameters']:,} | {r['clean']:.1%} | {r['attacks'][pgd_label]:.1%} | "
              f"{r['transfer']['tuned_on_base_images']:.1%} | {detail} |")
    base_acc = rows[0]["transfer"]["base_on_base_images"]
    print(f"\nbase model on its own PGD-40 images: {base_acc:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
