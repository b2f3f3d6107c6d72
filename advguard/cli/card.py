"""`advguard card BUNDLE`: print a bundle's robustness card as a table (`--png`: a plot of
served-answer accuracy and flag rate against eps per attack). Torch-free: it reads the manifest."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "print a bundle's robustness card (what it defends against, measured)"
# what a card of a partial row set (`advguard evaluate --profile detection|cw-gma`) is not
ROW_NOTES = {"detection": "rows: detection only (FGSM and PGD; no adaptive attack, no Square): not a robustness card",
             "cw-gma": "rows: CW-L2 and GMA only (the attacker ignores the guard; no adaptive attack, no Square): "
                       "not a robustness card"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="bundle folder (model_store/<name>/<version>) or model_store/<name> (latest)")
    p.add_argument("--png", default=None, help="also write a plot to this file")
    p.add_argument("--json", action="store_true", help="print the card as JSON")


def resolve(path: Path) -> Path:
    """A version folder, or the latest version of a bundle folder."""
    if (path / "manifest.json").exists():
        return path
    from serving.bundle import version_dirs

    versions = version_dirs(path.parent, path.name)
    if not versions:
        raise FileNotFoundError(f"{path}: no manifest.json and no version folders; build one with `advguard bundle`")
    return versions[-1]


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def card_table(manifest: dict) -> str:
    card = manifest.get("robustness") or {}
    name = f"{manifest['name']} version {manifest['version']}"
    if not card:
        return f"{name}: no robustness card (build the bundle with `advguard bundle --card quick|full`)"
    guard = manifest.get("guard", {})
    roles = ", ".join(f"{m['role']} {m['file']}" for m in manifest.get("models", []))
    verdict = guard.get("verdict", {})
    lines = [f"{name}: {roles}",
             f"guard: {', '.join(d['name'] for d in guard.get('detectors', [])) or 'none'} "
             f"(policy {guard.get('policy')}, action {guard.get('action')}); verdict FPR target "
             f"{_pct(verdict.get('target_fpr'))}, measured {_pct(verdict.get('calibration', {}).get('measured_fpr'))} "
             f"on calibration and {_pct(verdict.get('fresh', {}).get('measured_fpr'))} on "
             f"{verdict.get('fresh', {}).get('images', '?')} fresh test images",
             f"card: {card['profile']} profile, {card['n']} {card['split']} images"
             + ("" if card.get("complete", True) else f" (PARTIAL: {card['n']} of {card.get('images_planned')})")
             + f", L-inf eps {card['eps']}, "
             f"{card['date']} ({card.get('machine', '')}), {card.get('seconds', '?')} s",
             "",
             "| attack | kind | served accuracy | flagged | detected among successful | right or flagged |",
             "|---|---|---|---|---|---|",
             f"| clean | - | {_pct(card['clean']['served_accuracy'])} | {_pct(card['clean']['verdict_fpr'])} | - | - |"]
    for r in card["attacks"]:
        lines.append(f"| {r['label']} | {r['kind']} | {_pct(r['served_accuracy'])} | {_pct(r['flagged'])} | "
                     f"{_pct(r['detected_among_successful'])} | {_pct(r['right_or_flagged'])} |")
    rows = card.get("config", {}).get("rows", "all")
    worst = card["worst_case_accuracy"]
    lines += ["", "adaptive worst case (per image, every adaptive variant): "
              + (_pct(card["adaptive_worst_case_accuracy"]) if card["adaptive_worst_case_accuracy"] is not None
                 else "not measured"),
              f"worst case over every L-inf {'attack' if rows == 'all' else 'row'} at eps {card['eps']}: "
              + (_pct(worst) if worst is not None else "not measured (no L-inf row at this eps)"),
              "gradient masking suspected (Square beats the white-box attacks): "
              + {True: "YES", False: "no", None: "not measured (no Square row)"}[card["gradient_masking_suspected"]]]
    if rows in ROW_NOTES:
        lines.append(ROW_NOTES[rows])
    return "\n".join(lines)


def plot(manifest: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    card = manifest["robustness"]
    families: dict[str, list[tuple[float, float, float]]] = {}
    for r in card["attacks"]:
        eps = r["params"].get("eps")
        if eps is None:
            continue
        family = r["label"].split(" eps=")[0]
        families.setdefault(family, []).append((eps, r["served_accuracy"], r["flagged"]))
    fig, (ax_acc, ax_flag) = plt.subplots(1, 2, figsize=(11, 4.2))
    for family, points in sorted(families.items()):
        points.sort()
        eps, acc, flag = zip(*points)
        style = "o-" if len(points) > 1 else "s"
        ax_acc.plot(eps, acc, style, label=family)
        ax_flag.plot(eps, flag, style, label=family)
    for ax, title in ((ax_acc, "served-answer accuracy"), (ax_flag, "share flagged")):
        ax.axhline(card["clean"]["served_accuracy" if ax is ax_acc else "verdict_fpr"], color="grey", ls=":",
                   label="clean")
        ax.set_xlabel("L-inf eps"), ax.set_title(title), ax.set_ylim(0, 1.02), ax.grid(alpha=0.3)
    ax_flag.legend(fontsize=7, loc="best")
    fig.suptitle(f"{manifest['name']} v{manifest['version']}: robustness card ({card['n']} {card['split']} images)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def print_card(path: Path, png: str | None = None, as_json: bool = False) -> None:
    folder = resolve(Path(path))
    manifest = json.loads((folder / "manifest.json").read_text())
    print(json.dumps(manifest.get("robustness", {}), indent=2) if as_json else card_table(manifest))
    if png and manifest.get("robustness"):
        plot(manifest, Path(png))
        print(f"plot written: {png}")


def run(args: argparse.Namespace) -> int:
    print_card(Path(args.bundle), args.png, args.json)
    return 0
