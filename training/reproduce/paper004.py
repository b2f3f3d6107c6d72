"""Paper 004: the volumized 3D CNN against localized attacks (`volumized` defence), with the
paper's metrics: acc_clean, acc_attack, robustness delta and defence success rate beta, and our
best volumized variant (`fixed-occ`: `--option ranking=fixed --option occlusion=0.5`) beside it.

The per-image volumizer, 3D CNN, PAL and curriculum are `training.defenses.volumized`; the
attacks and metrics are `training.defenses.volumized.eval.evaluate` (N-pixel by differential
evolution, a universal patch). On Fashion-MNIST (CIFAR-10 is not on this machine).
At `quick` the three models (paper 004's design, the undefended CNN and fixed-occ) are trained
on a tiny subset and evaluated alike. At `full-cpu`, measured results are read where they exist
(this reproduction's own OUT/004/runs/eval/results.json, then `runs/volumized-eval/results.json`,
then the copy in docs/results/volumized-full-train/); otherwise the two models are trained (or
reused from runs/volumized and runs/fmnist-cnn-default) and evaluated at the attack budget of
RESULTS.md; fixed-occ's figures (with the undefended model and the undefended-occ control measured
beside it) are read from `VARIANTS`, a `python -m training.defenses.volumized.variants` results.json,
or reported as not measured. The verdict is about paper 004's design; `_paper004_table` builds
the table and one sentence on the variant.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from training.checkpoint import load_model, read_json, write_json
from training.data import DataConfig, load_splits
from training.defenses.volumized.eval import _plot, evaluate, order_sensitivity
from training.reproduce._common import Context, describe_data, train, write_results
from training.reproduce._paper004_table import VARIANT, VARIANT_NOTE, VARIANT_OPTIONS, Variant, read_variant, table
from training.reproduce.defenses import RunSpec
from training.trainer import TrainConfig

log = logging.getLogger(__name__)
TITLE = "volumization and a 3D CNN against localized attacks"
MEASURED = (Path("runs/volumized-eval/results.json"), Path("docs/results/volumized-full-train/results.json"))
MEASURED_NOTE = ("docs/RESULTS.md, 'Volumized 3D CNN vs the undefended model': both models on all 55,000 training "
                 "images; attacks on the first 200 test images, DE population 50 x 20 generations; "
                 "2026-11-22 05:40-07:11 UTC, commit 4233e00")
VARIANTS = Path("docs/results/volumized-variants/full-data/results.json")


@dataclass(frozen=True)
class Scale:
    data: DataConfig
    epochs_volumized: int
    epochs_undefended: int
    n: int
    pixels: tuple[int, ...]
    patch_scales: tuple[float, ...]
    patch_train: int
    npixel_options: str
    patch_options: str
    order_images: int = 5000  # training images fixed-occ's slice order is computed from


SCALES = {
    "quick": Scale(DataConfig("fashion-mnist", val_size=100, limit_train=300, limit_test=20), 1, 1, 20, (1,), (0.1,),
                   100, "popsize=8;steps=2", "epochs=1", order_images=300),
    "full-cpu": Scale(DataConfig("fashion-mnist", val_size=5000, limit_test=200), 10, 4, 200, (1, 2, 4, 8, 16),
                      (0.05, 0.10, 0.15, 0.20, 0.25), 10000, "popsize=50;steps=20", "epochs=3"),
}


def _plan(ctx: Context, s: Scale) -> list[tuple[str, RunSpec, Path | None]]:
    """(label, run, finished run reused at full-cpu): paper 004's design and the undefended CNN;
    at `quick` also fixed-occ (at full-cpu its figures are read from `VARIANTS`)."""
    plan = [("volumized", RunSpec("volumized", "volumized", "fmnist-cnn", {}, TrainConfig(epochs=s.epochs_volumized)),
             Path("runs/volumized")),
            ("undefended", RunSpec("undefended", "standard", "fmnist-cnn", {}, TrainConfig(epochs=s.epochs_undefended)),
             Path("runs/fmnist-cnn-default"))]
    if ctx.quick:
        options = {**VARIANT_OPTIONS, "order_images": str(s.order_images)}
        plan.append((VARIANT, RunSpec(VARIANT, "volumized", "fmnist-cnn", options,
                                      TrainConfig(epochs=s.epochs_volumized)), None))
    return plan


def _measure(run: Path, data: tuple, s: Scale, trials: int) -> dict:
    """One model's entry: `evaluate`'s figures, and for a volumized model its slice-order
    sensitivity (and fixed order, where it has one)."""
    model, spec = load_model(run)
    out = {"run": str(run), "arch": spec.name,
           **evaluate(model, *data, list(s.pixels), list(s.patch_scales), s.npixel_options, s.patch_options)}
    if hasattr(model, "volumizer"):
        out["order_sensitivity"] = order_sensitivity(model, data[0], trials=trials)
        if model.volumizer.config.ranking == "fixed":
            out["fixed_order"] = list(model.volumizer.config.fixed_order)
    return out


def _evaluated(ctx: Context, s: Scale) -> tuple[dict, str]:
    """(results, where they come from): read where measured, else train/reuse and evaluate
    (models missing from an earlier evaluation of this reproduction are added to it)."""
    own = ctx.run_dir("eval") / "results.json"
    done = read_json(own) if own.exists() else None
    plan = _plan(ctx, s)
    if done is not None and all(label in done["results"] for label, _, _ in plan):
        return done, str(own)
    if done is None and not ctx.quick:
        for path in MEASURED:
            if path.exists():
                return read_json(path), f"{path} ({MEASURED_NOTE})"
    splits = load_splits(s.data)
    data = (splits.test.x[:s.n], splits.test.y[:s.n], splits.train.x[:s.patch_train], splits.train.y[:s.patch_train])
    results = dict(done["results"]) if done is not None else {}
    for label, spec, shared in plan:
        if label in results:
            continue
        if shared is not None and not ctx.quick and (shared / "metrics.json").exists():
            run = shared
        else:
            train(ctx, spec, splits, s.data)
            run = ctx.run_dir(spec.name)
        results[label] = _measure(run, data, s, trials=2 if ctx.quick else 20)
    out = {"n": len(data[0]), "npixel_options": s.npixel_options, "patch_options": s.patch_options,
           "patch_train": len(data[2]), "data": describe_data(s.data, splits), "results": results}
    write_json(own, out)
    return read_json(own), str(own)


def _variant(res: dict) -> Variant:
    """fixed-occ as measured in this evaluation (`quick`), else as read from `VARIANTS`."""
    if VARIANT in res["results"]:
        return Variant("measured in the same evaluation", res["results"][VARIANT])
    return read_variant(VARIANTS, {k: res[k] for k in ("n", "npixel_options", "patch_options", "patch_train")})


def reproduce(ctx: Context) -> dict:
    s = SCALES[ctx.scale]
    res, source = _evaluated(ctx, s)
    variant = _variant(res)
    where = (f"Fashion-MNIST (not CIFAR-10), {res['n']} test images; N-pixel {res['npixel_options']}, patch "
             f"{res['patch_options']}; from {source}; `{ctx.scale}`")
    rows, verdict, why = table(res["results"], variant, where, ctx.command())
    beside = {label: model for label, model in variant.beside().items() if label not in res["results"]}
    plotted = {**res["results"], **beside}
    _plot(plotted, "npixel", "N (pixels changed)", ctx.out / "npixel.png")
    _plot(plotted, "patch", "patch area (% of the image)", ctx.out / "patch.png")
    measured = {"source": source, **res,
                "variant": {"label": VARIANT, "options": VARIANT_OPTIONS, "source": variant.source,
                            "measured": variant.results is not None, "results": beside}}
    return write_results(ctx, TITLE, rows, verdict, why, measured, plots=["npixel.png", "patch.png"],
                         notes=["beta = share of the images a model gets right that the attack does not flip; "
                                "delta = acc_clean - acc_attack.",
                                "Both attacks are black-box; the strong column is the largest N and patch measured.",
                                VARIANT_NOTE])
