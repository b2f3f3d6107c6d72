"""Issue 17: volumized variants beside the undefended model and paper 004's per-image design,
under N-pixel and universal patch attacks, resumable, with certified accuracy for slice votes.

    python -m training.defenses.volumized.variants --out runs/vv-eval --n 1000 \\
        --model undefended=runs/vv-undefended --model reference=runs/vv-reference \\
        --model slices-vote=runs/vv-slices-occ@vote --model slices-trim=runs/vv-slices-occ@trimmed_mean

`LABEL=RUN[@AGGREGATION[:ABSTAIN]]` loads a run and, with @, swaps the aggregation of the same
weights (`vote:0.6`: slices less than 60% sure abstain).
Per model, on the first --n test images: clean accuracy, N-pixel (Su et al.'s differential
evolution, black-box, `--npixel-options`) for each N, and a universal patch (Brown et al.) for
each area share, trained on --patch-train training images against the model itself, or for a
vote (whose count has no gradient) against the same weights with mean log-probability
aggregation (a transfer attack; the certificate below bounds what any patch can do).
delta = acc_clean - acc_attack; beta = share of clean-correct images the attack does not flip.
Every (model, attack, chunk of --chunk images) result is cached under OUT/cache as it is done,
keyed by the model's weights (SHA-256): rerunning the same command resumes, in another checkout
too when OUT is a committed folder and the weights are the same (kept with `training.keep`). Writes results.json, results.md, npixel.png, patch.png and,
for models whose slices are independent, certified.png (certified accuracy vs patch area).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import logging
import time
from pathlib import Path

import torch

from training.attacks import AdversarialPatch, NPixel
from training.checkpoint import load_model, model_sha256, read_json, save_atomic, write_json
from training.data import DataConfig, load_splits
from training.defenses.mia.metrics import predict
from training.defenses.volumized.aggregate import AGGREGATIONS
from training.defenses.volumized.certify import certified_curve, plot_curve
from training.defenses.volumized.eval import _options, _pixels, _plot, _table, summarize as paper_metrics
from training.defenses.volumized.ordering import order_flips
from training.options import build_config

log = logging.getLogger(__name__)


def load_variant(text: str):
    """'LABEL=RUN[@AGGREGATION[:ABSTAIN]]' -> (label, run, model in eval mode)."""
    label, _, rest = text.partition("=")
    if not label or not rest:
        raise ValueError(f"--model takes LABEL=RUN[@AGGREGATION[:ABSTAIN]], got {text!r}")
    run, _, choice = rest.partition("@")
    aggregation, _, abstain = choice.partition(":")
    model, _ = load_model(run)
    if aggregation:
        if aggregation not in AGGREGATIONS or not hasattr(model, "aggregation"):
            raise ValueError(f"{text}: @{aggregation} needs a volumized run and one of {', '.join(AGGREGATIONS)}")
        model.aggregation, model.abstain = aggregation, float(abstain or 0.0)
    return label, run, model.eval()


def summarize(clean_ok: torch.Tensor, adv_ok: torch.Tensor) -> dict:
    return {"n": len(adv_ok), **paper_metrics(clean_ok, adv_ok)}


class Cache:
    """JSON files under OUT/cache/LABEL/WEIGHTS/: one per finished unit of work, WEIGHTS the first
    16 hex digits of the model's SHA-256 (`model_sha256`), so results are reused only for the
    very weights that made them (a retrained model starts a cache of its own)."""

    def __init__(self, root: Path, label: str, weights: str) -> None:
        self.dir = Path(root) / "cache" / label / weights[:16]
        self.dir.mkdir(parents=True, exist_ok=True)

    def get(self, key: str) -> dict | None:
        path = self.dir / f"{key}.json"
        return read_json(path) if path.exists() else None

    def put(self, key: str, value: dict) -> dict:
        write_json(self.dir / f"{key}.json", value)
        return value


def _tag(options: str) -> str:
    """A short name for an attack's options (cache entries of other settings are not reused)."""
    return hashlib.sha256(options.encode()).hexdigest()[:8]


def npixel(model, x, y, n_pixels: int, options: str, cache: Cache, chunk: int,
           cached_only: bool = False) -> tuple[torch.Tensor, float] | None:
    """adv_ok (N,) and CPU seconds (summed over chunks, cached ones included); None when
    `cached_only` and a chunk is not cached yet."""
    config = build_config(NPixel.Config, {**_options(options, "npixel"), "pixels": str(n_pixels)})
    ok, seconds = [], 0.0
    for start in range(0, len(x), chunk):
        key = f"npixel{n_pixels}-{_tag(options)}-{start}-{min(start + chunk, len(x))}"
        done = cache.get(key)
        if done is None and cached_only:
            return None
        if done is None:
            t0, w0 = time.process_time(), time.time()
            x_adv = NPixel(model, config)(x[start:start + chunk], y[start:start + chunk])
            adv_ok = predict(model, x_adv) == y[start:start + chunk]
            done = cache.put(key, {"adv_ok": adv_ok.tolist(), "cpu_seconds": time.process_time() - t0,
                                   "wall_seconds": time.time() - w0})
            log.info("N=%d images %s: %d/%d still right, %.0f CPU-s", n_pixels, key, int(adv_ok.sum()),
                     len(adv_ok), done["cpu_seconds"])
        ok.append(torch.tensor(done["adv_ok"]))
        seconds += done["cpu_seconds"]
    return torch.cat(ok), seconds


def patch(model, x, y, x_train, y_train, scale: float, options: str, cache: Cache,
          cached_only: bool = False) -> tuple[torch.Tensor, float] | None:
    """adv_ok (N,) under a universal patch of `scale`, and the CPU seconds of fitting it."""
    key = f"patch{scale:.2f}-{_tag(options)}-{len(x)}-{len(x_train)}"
    done = cache.get(key)
    if done is None and cached_only:
        return None
    if done is None:
        config = build_config(AdversarialPatch.Config, {**_options(options, "patch"), "scale": str(scale)})
        target = model
        if getattr(model, "aggregation", None) == "vote":  # no gradient through a count: fit on the soft twin
            target = copy.deepcopy(model)
            target.aggregation = "mean_log_prob"
        t0 = time.process_time()
        fitted = AdversarialPatch(target, config).fit(x_train, y_train)
        attack = AdversarialPatch(model, config, patch=fitted.patch)
        adv_ok = predict(model, attack(x, y)) == y
        done = cache.put(key, {"adv_ok": adv_ok.tolist(), "cpu_seconds": time.process_time() - t0,
                               "fit_on": "mean_log_prob twin" if target is not model else "model"})
        save_atomic(fitted.patch, cache.dir / f"{key}.pt")
    return torch.tensor(done["adv_ok"]), done["cpu_seconds"]


def evaluate_variant(label: str, model, x, y, x_train, y_train, args) -> dict:
    cache = Cache(Path(args.out), label, model_sha256(model))
    clean_ok = predict(model, x) == y
    out = {"acc_clean": float(clean_ok.float().mean()), "npixel": {}, "patch": {}}
    for n in _pixels(args.pixels):
        done = npixel(model, x, y, n, args.npixel_options, cache, args.chunk, args.cached_only)
        if done is None:
            continue
        out["npixel"][n] = {**summarize(clean_ok, done[0]), "cpu_seconds": done[1]}
        log.info("%s N=%d: %s", label, n, out["npixel"][n])
    for scale in [float(v) for v in args.patch_scales.split(",") if v]:
        done = patch(model, x, y, x_train, y_train, scale, args.patch_options, cache, args.cached_only)
        if done is None:
            continue
        out["patch"][scale] = {**summarize(clean_ok, done[0]), "cpu_seconds": done[1]}
        log.info("%s patch %.2f: %s", label, scale, out["patch"][scale])
    if hasattr(model, "volumizer"):
        out["order_flips"] = order_flips(model.volumizer, x[:200])
        if model.slices_independent and model.aggregation == "vote":  # the certificate is the vote's
            out["certified"] = certified_curve(model, x, y)
    return out


def report(results: dict, args, n: int) -> str:
    lines = [f"{n} test images; N-pixel {args.npixel_options}; patch {args.patch_options}, fit on "
             f"{args.patch_train} training images", "", _table(results, "npixel", "N"), "",
             _table(results, "patch", "patch area"), ""]
    for label, res in results.items():
        if "order_flips" in res:
            f = res["order_flips"]
            lines.append(f"- {label}: random one-pixel changes re-order the slices of "
                         f"{100 * f['reordered_share']:.1f}% of {f['trials']} trials")
        if "certified" in res:
            c = res["certified"]
            lines.append(f"- {label}: vote accuracy {100 * c['vote_accuracy']:.1f}%; certified "
                         + ", ".join(f"{k} px {100 * v:.1f}%" for k, v in c["pixels"].items()) + "; patch "
                         + ", ".join(f"{100 * p['area']:.1f}% ({p['slices']} slices) {100 * p['certified']:.1f}%"
                                     for p in c["patch"].values() if p["certified"] > 0 or p["slices"] <= 4))
    return "\n".join(lines) + "\n"


def progress(out: Path) -> list[dict]:
    """What OUT/cache holds of the N-pixel work so far, per model label, weights and N: images done,
    how many stayed right under attack, CPU seconds (for a run spread over sessions)."""
    totals: dict[tuple, dict] = {}
    for path in sorted(Path(out).glob("cache/*/*/npixel*.json")):
        n_pixels = int(path.name.split("-")[0].removeprefix("npixel"))
        done = read_json(path)
        row = totals.setdefault((path.parts[-3], path.parts[-2], n_pixels),
                                {"images": 0, "still_right": 0, "cpu_seconds": 0.0})
        row["images"] += len(done["adv_ok"])
        row["still_right"] += int(sum(done["adv_ok"]))
        row["cpu_seconds"] += done["cpu_seconds"]
    return [{"label": label, "weights": weights, "pixels": n, **row} for (label, weights, n), row in totals.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", help="LABEL=RUN[@AGGREGATION[:ABSTAIN]], repeatable")
    parser.add_argument("--n", type=int, default=1000, help="test images")
    parser.add_argument("--pixels", default="1,3,5")
    parser.add_argument("--patch-scales", default="0.05,0.10,0.15,0.20,0.25")
    parser.add_argument("--patch-train", type=int, default=2000)
    parser.add_argument("--npixel-options", default="popsize=400;steps=100", help="NPixel fields (Su et al.'s budget)")
    parser.add_argument("--patch-options", default="epochs=5")
    parser.add_argument("--chunk", type=int, default=50, help="images per cached N-pixel unit")
    parser.add_argument("--cached-only", action="store_true",
                        help="report what OUT/cache holds; run no attack (a table of finished work)")
    parser.add_argument("--progress", action="store_true",
                        help="print the N-pixel work OUT/cache holds so far (no model needed) and exit")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.progress:
        lines = ["| model | weights | N | images done | accuracy under attack on them | CPU per image |",
                 "|---|---|---|---|---|---|"]
        lines += [f"| {r['label']} | {r['weights']} | {r['pixels']} | {r['images']:,} | "
                  f"{r['still_right'] / r['images']:.1%} | {r['cpu_seconds'] / r['images']:.1f} CPU-s |"
                  for r in progress(Path(args.out))]
        log.info("N-pixel work in %s/cache so far:\n%s", args.out, "\n".join(lines))
        return 0
    if not args.model:
        parser.error("--model LABEL=RUN is required (at least one), unless --progress")

    variants = [load_variant(text) for text in args.model]
    data = read_json(Path(variants[0][1]) / "config.json").get("data", {})
    splits = load_splits(DataConfig(name=data.get("name", "fashion-mnist"), data_dir=data.get("data_dir"),
                                    seed=data.get("seed", 0), limit_test=args.n))
    x, y = splits.test.x, splits.test.y
    x_train, y_train = splits.train.x[:args.patch_train], splits.train.y[:args.patch_train]
    results = {}
    for label, run, model in variants:
        results[label] = {"run": run, **evaluate_variant(label, model, x, y, x_train, y_train, args)}
    out = Path(args.out)
    write_json(out / "results.json", {"n": len(x), "npixel_options": args.npixel_options,
                                      "patch_options": args.patch_options, "patch_train": len(x_train),
                                      "results": results})
    _plot(results, "npixel", "N (pixels changed)", out / "npixel.png")
    _plot(results, "patch", "patch area (% of the image)", out / "patch.png")
    curves = {label: res["certified"] for label, res in results.items() if "certified" in res}
    if curves:
        plot_curve(curves, out / "certified.png")
    text = report(results, args, len(x))
    (out / "results.md").write_text(text)
    log.info("written %s:\n%s", out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
