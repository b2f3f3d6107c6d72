"""Issue 4's defences table, from scratch (run by `advguard reproduce defenses --scale full`).

Trains standard, mixed-fgsm, pgd-at, fast-at, trades, filter-finetune (from the standard run)
and distill on Fashion-MNIST, then evaluates each on the test split: clean accuracy and L-inf
PGD-40 (step 0.01, 5 restarts) at eps=0.1; for distill also PGD with the CW margin on the
logits, PGD on logits / T and Square (black-box), so a masked gradient shows; for
filter-finetune also paper 000's setting (PGD images made once against the *base* model).
Writes OUT/<run>/ (checkpoints, metrics, eval/report.*) and OUT/results.{json,md}. A run
whose metrics.json exists is not trained again, so an interrupted reproduction resumes.
`--scale reduced` is the same pipeline on a subset with a smaller model: its numbers are
not the full-size table.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from training.attacks import PGD
from training.checkpoint import load_model, read_json, write_json
from training.data import DataConfig, Splits, load_splits
from training.evaluate import AttackSpec, evaluate
from training.trainer import TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scale:
    """Everything a reproduction's size depends on."""

    data: DataConfig
    model: str
    train: TrainConfig
    train_steps: int  # PGD / TRADES inner steps while training
    finetune_epochs: int
    per_class: int  # Algorithm 1 images per class
    distill_model: str
    distill_paper_schedule: bool
    eval_n: int
    restarts: int = 5
    square_queries: int = 5000
    eps: float = 0.1
    temperature: float = 100.0


SCALES = {
    "full": Scale(DataConfig("fashion-mnist", val_size=5000), "fmnist-cnn",
                  TrainConfig(epochs=10, batch_size=128, lr=2e-3), train_steps=10, finetune_epochs=3,
                  per_class=100, distill_model="distill-cnn", distill_paper_schedule=True, eval_n=10000),
    # all of Fashion-MNIST, sized for a 2-core CPU in about an hour: the serving-speed model
    # (fmnist-fast, ~2M multiply-adds per image) for every run, PGD-5 / TRADES-5 training and
    # the evaluation on the first 2,000 test images
    "full-fast": Scale(DataConfig("fashion-mnist", val_size=5000, limit_test=2000), "fmnist-fast",
                       TrainConfig(epochs=10, batch_size=128, lr=2e-3), train_steps=5, finetune_epochs=3,
                       per_class=50, distill_model="fmnist-fast", distill_paper_schedule=False, eval_n=2000,
                       square_queries=1000),
    "reduced": Scale(DataConfig("fashion-mnist", val_size=1000, limit_train=10000, limit_test=500),
                     "mnist-base", TrainConfig(epochs=4, batch_size=128, lr=2e-3), train_steps=5,
                     finetune_epochs=2, per_class=20, distill_model="mnist-base",
                     distill_paper_schedule=False, eval_n=500, square_queries=1000),
    "tiny": Scale(DataConfig("fashion-mnist", val_size=200, limit_train=500, limit_test=100),
                  "mnist-shallow", TrainConfig(epochs=1, batch_size=64, lr=3e-3), train_steps=2,
                  finetune_epochs=1, per_class=2, distill_model="mnist-shallow",
                  distill_paper_schedule=False, eval_n=100, restarts=2, square_queries=50),
}


@dataclass(frozen=True)
class RunSpec:
    name: str
    defense: str
    model: str
    options: dict
    train: TrainConfig


def plan(scale: Scale, out: Path) -> list[RunSpec]:
    eps, t = str(scale.eps), scale.train
    inner = {"eps": eps, "steps": str(scale.train_steps)}
    finetune = replace(t, epochs=scale.finetune_epochs, lr=1e-3)
    return [
        RunSpec("standard", "standard", scale.model, {}, t),
        RunSpec("mixed-fgsm", "mixed-fgsm", scale.model, {"eps": eps}, t),
        RunSpec("pgd-at", "pgd-at", scale.model, inner, t),
        RunSpec("fast-at", "fast-at", scale.model, {"eps": eps}, t),
        RunSpec("trades", "trades", scale.model, {**inner, "beta": "6"}, t),
        RunSpec("filter-finetune", "filter-finetune", scale.model,
                {**inner, "base_run": str(out / "standard"), "fraction": "0.1", "attack": "pgd",
                 "per_class": str(scale.per_class), "overlap_eps": "0.05,0.2,0.3"}, finetune),
        RunSpec("distill", "distill", scale.distill_model,
                {"temperature": str(scale.temperature), "paper_schedule": str(scale.distill_paper_schedule)}, t),
    ]


def train_run(spec: RunSpec, splits: Splits, data: DataConfig, out: Path) -> dict:
    """Train one run unless OUT/<name>/metrics.json exists; return its metrics."""
    run_dir = out / spec.name
    if (run_dir / "metrics.json").exists():
        log.info("%s: already trained, reusing %s", spec.name, run_dir)
        return read_json(run_dir / "metrics.json")
    record = {"data": asdict(data), "defense": spec.defense, "options": spec.options}
    if spec.defense == "standard":
        from training.defenses.common import build_model
        from training.trainer import fit

        model, model_spec = build_model(spec.model, splits, spec.train.seed)
        return fit(model, model_spec, splits, spec.train, run_dir, run_config=record, resume=True)
    from training.defenses import create_defense

    return create_defense(spec.defense, spec.options).fit(spec.model, splits, spec.train, run_dir,
                                                          run_config=record, resume=True)


def suite_for(spec: RunSpec, scale: Scale) -> tuple[AttackSpec, ...]:
    pgd = {"eps": scale.eps, "alpha": 0.01, "steps": 40, "restarts": scale.restarts}
    rows = [AttackSpec(f"PGD-40 x{scale.restarts}", "pgd", pgd)]
    if spec.defense == "distill":
        rows += [AttackSpec("PGD-40 margin (logits)", "pgd", {**pgd, "loss": "margin"}),
                 AttackSpec("PGD-40 logits/T", "pgd", pgd, logit_scale=scale.temperature),
                 AttackSpec(f"Square {scale.square_queries}q", "square",
                            {"eps": scale.eps, "max_queries": scale.square_queries}, white_box=False)]
    return tuple(rows)


def transfer_accuracy(base_dir: Path, run_dir: Path, test, scale: Scale) -> dict:
    """Paper 000's setting: PGD-40 images made once against the base model, fed to the
    fine-tuned one (accuracy over all images, as the paper reports)."""
    base, _ = load_model(base_dir)
    tuned, _ = load_model(run_dir)
    attack = PGD(base, eps=scale.eps, alpha=0.01, steps=40, restarts=scale.restarts)
    x_adv = torch.cat([attack(test.x[i:i + 256], test.y[i:i + 256]) for i in range(0, len(test), 256)])
    with torch.no_grad():
        return {"base_on_base_images": (base(x_adv).argmax(1) == test.y).float().mean().item(),
                "tuned_on_base_images": (tuned(x_adv).argmax(1) == test.y).float().mean().item()}


def evaluate_run(spec: RunSpec, splits: Splits, scale: Scale, out: Path, metrics: dict) -> dict:
    run_dir = out / spec.name
    model, _ = load_model(run_dir)
    test = splits.test.take(scale.eval_n)
    report = evaluate(model, test, suite_for(spec, scale), name=spec.name)
    report.save(run_dir / "eval")
    row = {"run": spec.name, "model": spec.model, "n": report.n, "clean": report.clean_accuracy,
           "attacks": {r.label: r.robust_accuracy for r in report.attacks},
           "worst_case": report.worst_case_accuracy, "masking_suspected": report.gradient_masking_suspected,
           "train_seconds": metrics["wall_seconds"], "epochs_run": len(metrics.get("history", []))}
    if spec.defense == "filter-finetune":
        row["transfer"] = transfer_accuracy(out / "standard", run_dir, test, scale)
        row["trainable"] = metrics.get("trainable")
    return row


def to_markdown(rows: list[dict], scale_name: str) -> str:
    lines = [f"Scale `{scale_name}`; robust accuracy counts images classified correctly both clean "
             "and under attack.", "",
             "| run | model | clean | PGD-40 (CE) | other attacks | worst case | train s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        labels = list(r["attacks"])
        other = [f"{k}: {v:.1%}" for k, v in list(r["attacks"].items())[1:]]
        if "transfer" in r:
            other.append(f"paper 000 setting (PGD-40 made on base): {r['transfer']['tuned_on_base_images']:.1%} "
                         f"(base itself: {r['transfer']['base_on_base_images']:.1%})")
        lines.append(f"| {r['run']} | {r['model']} | {r['clean']:.1%} | {r['attacks'][labels[0]]:.1%} | "
                     f"{'; '.join(other) or '-'} | {r['worst_case']:.1%} | {r['train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def reproduce_defenses(scale_name: str, out: Path, only: list[str] | None = None) -> list[dict]:
    scale = SCALES[scale_name]
    splits = load_splits(scale.data)
    rows = []
    for spec in plan(scale, out):
        if only and spec.name not in only and not (spec.name == "standard" and "filter-finetune" in only):
            continue
        metrics = train_run(spec, splits, scale.data, out)
        rows.append(evaluate_run(spec, splits, scale, out, metrics))
        write_json(out / "results.json", {"scale": scale_name, "rows": rows})
        (out / "results.md").write_text(to_markdown(rows, scale_name))
        log.info("%s done: %s", spec.name, json.dumps({k: rows[-1][k] for k in ("clean", "attacks")}))
    return rows


def reproduce_filters(scale_name: str, out: Path, eps: tuple[float, ...] = (0.1, 0.05, 0.2, 0.3)) -> dict:
    """Algorithm 1 on OUT/standard at several eps: dominant sets, overlap across classes and
    with the first eps's set (writes OUT/dominant_filters_eps.json)."""
    from training.defenses.dominant_filters import eps_overlap, find_dominant_filters

    scale = SCALES[scale_name]
    splits = load_splits(scale.data)
    model, spec = load_model(out / "standard")
    found = [find_dominant_filters(model, splits.val, spec.num_classes, 0.1, scale.per_class, e, 20) for e in eps]
    result = {"dominant": {f["eps"]: {k: v["dominant"] for k, v in f["layers"].items()} for f in found},
              "class_overlap": {f["eps"]: {k: round(v["class_overlap"], 3) for k, v in f["layers"].items()}
                                for f in found},
              f"eps_overlap_vs_{eps[0]}": eps_overlap(found[0], found[1:])}
    write_json(out / "dominant_filters_eps.json", result)
    return result
