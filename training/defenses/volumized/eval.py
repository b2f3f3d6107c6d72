"""Volumized 3D CNN against the undefended model under localized attacks (paper 004's metrics).

    python -m training.defenses.volumized.eval --defended runs/volumized --undefended runs/fmnist-cnn \\
        --n 1000 --pixels 1-16 --patch-scales 0.05,0.10,0.15,0.20,0.25 --out docs/results/volumized

Per model, on the first --n test images: acc_clean; N-pixel (Su et al., differential evolution,
black-box) for each N; a universal patch (Brown et al., trained against that model on
--patch-train training images, pasted at random places) for each area share. Per attack:
acc_attack, delta = acc_clean - acc_attack, and beta = share of attacks defended (among the
images the model classifies correctly when clean, the share the attack does not flip).
Writes results.json, results.md, npixel.png and patch.png into --out.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from training.attacks import AdversarialPatch, NPixel
from training.checkpoint import load_model, read_json, write_json
from training.data import DataConfig, load_splits
from training.defenses.mia.data import parse_attacks
from training.defenses.mia.metrics import predict
from training.defenses.volumized.ordering import order_flips
from training.models import count_parameters
from training.options import build_config

log = logging.getLogger(__name__)


def summarize(clean_ok: torch.Tensor, adv_ok: torch.Tensor) -> dict:
    """Paper 004's metrics from per-image correctness: acc_clean, acc_attack, delta = their
    difference, beta = share of the clean-correct images the attack does not flip (None if none)."""
    acc_clean, acc_attack = float(clean_ok.float().mean()), float(adv_ok.float().mean())
    beta = float(adv_ok[clean_ok].float().mean()) if clean_ok.any() else None
    return {"acc_clean": acc_clean, "acc_attack": acc_attack, "delta": acc_clean - acc_attack, "beta": beta}


def _scores(model, x, y, x_adv) -> dict:
    return summarize(predict(model, x) == y, predict(model, x_adv) == y)


def order_sensitivity(model, x: torch.Tensor, trials: int = 20, seed: int = 0) -> dict:
    """How often one random pixel (random place, random value) changes the volumizer's slice
    order: the ranking is content-dependent, so a localized change can move whole slices."""
    return order_flips(model.volumizer, x, trials, seed)


def _options(text: str, name: str) -> dict:
    return dict(parse_attacks(f"{name}:{text}")[0].options) if text else {}


def evaluate(model, x, y, x_train, y_train, pixels: list[int], scales: list[float], npixel_opts: str,
             patch_opts: str, batch_size: int = 100) -> dict:
    out = {"parameters": count_parameters(model), "npixel": {}, "patch": {}}
    for n in pixels:
        config = build_config(NPixel.Config, {**_options(npixel_opts, "npixel"), "pixels": str(n)})
        attack = NPixel(model, config)
        x_adv = torch.cat([attack(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)])
        out["npixel"][n] = _scores(model, x, y, x_adv)
        log.info("N=%d: %s", n, out["npixel"][n])
    for scale in scales:
        config = build_config(AdversarialPatch.Config, {**_options(patch_opts, "patch"), "scale": str(scale)})
        attack = AdversarialPatch(model, config).fit(x_train, y_train)
        out["patch"][scale] = _scores(model, x, y, attack(x, y))
        log.info("patch %.2f: %s", scale, out["patch"][scale])
    return out


def _plot(results: dict, key: str, xlabel: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for label, res in results.items():
        xs = sorted(res[key], key=float)
        line, = ax.plot([float(v) * (100 if key == "patch" else 1) for v in xs],
                        [100 * res[key][v]["acc_attack"] for v in xs], marker="o", label=label)
        if xs:
            ax.axhline(100 * res[key][xs[0]]["acc_clean"], color=line.get_color(), linestyle="--",
                       linewidth=1, label=f"{label}, clean")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy under attack (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")  # beside the axes, off the curves
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _table(results: dict, key: str, unit: str) -> str:
    lines = [f"| model | {unit} | acc_clean % | acc_attack % | delta (pts) | beta % |", "|---|---|---|---|---|---|"]
    for label, res in results.items():
        for v in sorted(res[key], key=float):
            r = res[key][v]
            beta = "-" if r["beta"] is None else f"{100 * r['beta']:.1f}"
            shown = f"{100 * float(v):.0f}%" if key == "patch" else str(v)
            lines.append(f"| {label} | {shown} | {100 * r['acc_clean']:.1f} | {100 * r['acc_attack']:.1f} | "
                         f"{100 * r['delta']:.1f} | {beta} |")
    return "\n".join(lines)


def _pixels(text: str) -> list[int]:
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(v) for v in text.split(",") if v]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--defended", required=True, help="run folder of `advguard train --defense volumized`")
    parser.add_argument("--undefended", required=True, help="run folder of the undefended 2D model")
    parser.add_argument("--n", type=int, default=1000, help="test images")
    parser.add_argument("--pixels", default="1-16", help="N values: '1-16' or '1,2,4'")
    parser.add_argument("--patch-scales", default="0.05,0.10,0.15,0.20,0.25")
    parser.add_argument("--patch-train", type=int, default=2000, help="training images the patch is fit on")
    parser.add_argument("--npixel-options", default="popsize=400;steps=100", help="NPixel fields, 'k=v;k=v'")
    parser.add_argument("--patch-options", default="epochs=5", help="AdversarialPatch fields, 'k=v;k=v'")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    data = read_json(Path(args.defended) / "config.json").get("data", {})
    splits = load_splits(DataConfig(name=data.get("name", "fashion-mnist"), data_dir=data.get("data_dir"),
                                    seed=data.get("seed", 0), limit_test=args.n))
    x, y = splits.test.x, splits.test.y
    x_train, y_train = splits.train.x[:args.patch_train], splits.train.y[:args.patch_train]
    pixels = _pixels(args.pixels)
    scales = [float(v) for v in args.patch_scales.split(",") if v]
    results = {}
    for label, run in (("volumized", args.defended), ("undefended", args.undefended)):
        model, spec = load_model(run)
        log.info("evaluating %s (%s)", label, spec.name)
        results[label] = {"run": str(run), "arch": spec.name,
                          **evaluate(model, x, y, x_train, y_train, pixels, scales,
                                     args.npixel_options, args.patch_options)}
        if hasattr(model, "volumizer"):
            results[label]["order_sensitivity"] = order_sensitivity(model, x)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", {"n": len(x), "npixel_options": args.npixel_options,
                                      "patch_options": args.patch_options, "patch_train": len(x_train),
                                      "results": results})
    _plot(results, "npixel", "N (pixels changed)", out / "npixel.png")
    _plot(results, "patch", "patch area (% of the image)", out / "patch.png")
    text = (f"{len(x)} test images; N-pixel {args.npixel_options}; patch {args.patch_options}, fit on "
            f"{len(x_train)} training images\n\n" + _table(results, "npixel", "N") + "\n\n"
            + _table(results, "patch", "patch area"))
    sens = results["volumized"].get("order_sensitivity")
    if sens:
        text += (f"\n\nrandom 1-pixel changes that reorder the volumizer's slices: "
                 f"{100 * sens['reordered_share']:.1f}% of {sens['trials']} (mean "
                 f"{sens['mean_positions_moved']:.2f} of {sens['depth']} depth positions moved)")
    (out / "results.md").write_text(text + "\n")
    log.info("written %s (results.json, results.md, npixel.png, patch.png):\n%s", out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
