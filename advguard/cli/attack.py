"""`advguard attack`: attack a trained model on test images; save images, predictions, success.

Besides the attack's own config fields, `--option` takes two CLI-level keys:
`targets=random|least-likely|<class>` (targeted attacks; default random) and `fit_images=N`
(training images the adversarial patch is fitted on; default 2000). Building the full parser
imports `training.attacks` (torch) to list the registered attacks.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING

from advguard.cli._args import add_data_args, data_config

if TYPE_CHECKING:
    import torch

HELP = "attack a trained model and save the adversarial images"

CLI_OPTIONS = ("targets", "fit_images")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from training.attacks import known_attacks

    p.add_argument("--attack", default="pgd", choices=known_attacks(), metavar="NAME",
                   help="registered attack (default pgd): %(choices)s")
    p.add_argument("--model", required=True, help="run folder or checkpoint file")
    p.add_argument("--eps", type=float, default=None)
    p.add_argument("--n", type=int, default=1000, help="test images to attack")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="attack config field, repeatable (e.g. --option steps=40); also "
                        "targets=random|least-likely|<class> (targeted attacks; default random) and "
                        "fit_images=N (training images the patch is fitted on; default 2000)")
    p.add_argument("--out", required=True, help=".npz with images, labels, predictions, success")
    p.add_argument("--grid", default=None, help="PNG of clean / adversarial / difference triples")
    add_data_args(p)


def _config(name: str, options: dict[str, str], eps: float | None, seed: int):
    from training.attacks import attack_class
    from training.options import build_config

    cls = attack_class(name).Config
    fields = {f.name for f in dataclasses.fields(cls)}
    if eps is not None and "eps" not in fields:
        raise ValueError(f"--eps does not apply to {name!r} (its fields: {', '.join(sorted(fields))})")
    options.setdefault("seed", str(seed))
    return build_config(cls, options, eps=eps)


def _predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    import torch

    with torch.no_grad():
        return torch.cat([model(chunk).argmax(dim=1) for chunk in x.split(batch_size)])


def _norms(x: torch.Tensor, x_adv: torch.Tensor) -> dict[str, float]:
    d = (x_adv - x).flatten(1)
    return {"linf_mean": d.abs().max(dim=1).values.mean().item(), "l2_mean": d.norm(dim=1).mean().item(),
            "l0_mean": (d.abs() > 1e-6).sum(dim=1).float().mean().item()}


def write_grid(path: Path, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor,
               clean_pred: torch.Tensor, adv_pred: torch.Tensor, rows: int = 8) -> Path:
    """PNG of clean / adversarial / difference triples (difference centred on grey, amplified)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = min(rows, len(x))
    fig, axes = plt.subplots(rows, 3, figsize=(6, 2 * rows), squeeze=False)
    for i in range(rows):
        diff = x_adv[i] - x[i]
        scale = max(diff.abs().max().item(), 1e-12)
        panels = [(x[i], f"clean y={int(y[i])} pred={int(clean_pred[i])}"),
                  (x_adv[i], f"adv pred={int(adv_pred[i])}"),
                  (0.5 + diff / (2 * scale), f"diff x{0.5 / scale:.1f}")]
        for ax, (img, title) in zip(axes[i], panels):
            img = img.permute(1, 2, 0).cpu().numpy()
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from tqdm import tqdm

    from training.attacks import AdversarialPatch, GMA, attack_class, save_png, select_targets
    from training.checkpoint import load_model, write_json
    from training.data import load_splits
    from training.options import parse_options

    started = time.perf_counter()
    options = parse_options(args.option)
    cli = {k: options.pop(k) for k in CLI_OPTIONS if k in options}
    config = _config(args.attack, options, args.eps, args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, spec = load_model(args.model, map_location=str(device))
    config_data = data_config(args)
    splits = load_splits(config_data)
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    x, y = splits.test.x[: args.n].to(device), splits.test.y[: args.n].to(device)
    attack = attack_class(args.attack)(model, config)
    targets = None
    if config.targeted:
        targets = select_targets(cli.get("targets", "random"), model, x, y, spec.num_classes, config.seed)
    if isinstance(attack, AdversarialPatch):
        k = int(cli.get("fit_images", 2000))
        fx, fy = splits.train.x[:k].to(device), splits.train.y[:k].to(device)
        if config.targeted:
            fy = select_targets(cli.get("targets", "random"), model, fx, fy, spec.num_classes, config.seed)
        print(f"fitting a patch on {len(fx)} training images ...")
        attack = attack.fit(fx, fy)
    goal = targets if targets is not None else y
    chunks, gma_parts = [], []
    for i in tqdm(range(0, len(x), args.batch_size), desc=args.attack, unit="batch", disable=None):
        xb, gb = x[i:i + args.batch_size], goal[i:i + args.batch_size]
        if isinstance(attack, GMA):
            part = attack.run(xb, gb)
            gma_parts.append(part)
            chunks.append(attack.smallest_fooling(part, gb))
        else:
            chunks.append(attack(xb, gb))
    x_adv = torch.cat(chunks)
    clean_pred = _predict(model, x, args.batch_size)
    adv_pred = _predict(model, x_adv, args.batch_size)
    success = (adv_pred == targets) if targets is not None else (adv_pred != y)
    results = {"clean_accuracy": (clean_pred == y).float().mean().item(),
               "adversarial_accuracy": (adv_pred == y).float().mean().item(),
               "success_rate": success.float().mean().item(), **_norms(x, x_adv),
               "wall_seconds": time.perf_counter() - started}

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"x_adv": x_adv.cpu().numpy().astype(np.float32), "labels": y.cpu().numpy(),
              "clean_pred": clean_pred.cpu().numpy(), "adv_pred": adv_pred.cpu().numpy(),
              "success": success.cpu().numpy()}
    if targets is not None:
        arrays["targets"] = targets.cpu().numpy()
    np.savez_compressed(out, **arrays)
    record = {"attack": args.attack, "config": dataclasses.asdict(config), "cli_options": cli,
              "model": str(args.model), "data": dataclasses.asdict(config_data), "n": len(x),
              "device": str(device), "results": results}
    if gma_parts:
        record["gma"] = attack.merge(gma_parts).to_dict()
        for size in record["gma"]["sizes"]:
            verdict = "success" if size["success"] else "no success"
            print(f"  eps {size['eps']:.1e}: accuracy {size['accuracy']:.4f}, fooled {size['fooled']:.4f}, "
                  f"tries {size['tries']}, {verdict} ({size['case']} case)")
    if isinstance(attack, AdversarialPatch):
        record["patch_png"] = str(save_png(attack.patch, out.with_suffix(".patch.png")))
        print(f"patch written: {record['patch_png']}")
    write_json(out.with_suffix(".json"), record)
    if args.grid:
        write_grid(Path(args.grid), x.cpu(), x_adv.cpu(), y.cpu(), clean_pred.cpu(), adv_pred.cpu())
        print(f"grid written: {args.grid}")
    print(f"{args.attack} on {len(x)} images: accuracy {results['clean_accuracy']:.4f} -> "
          f"{results['adversarial_accuracy']:.4f}, success {results['success_rate']:.4f} "
          f"({'targeted' if targets is not None else 'untargeted'}), mean Linf {results['linf_mean']:.4f}, "
          f"L2 {results['l2_mean']:.4f}, L0 {results['l0_mean']:.1f}; "
          f"{results['wall_seconds']:.0f} s -> {out}")
    return 0
