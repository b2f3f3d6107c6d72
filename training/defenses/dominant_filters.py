"""Paper 000's Algorithm 1: the "dominant" filters of every conv layer, those whose outputs an
attack moves most often, with the histogram per layer and how stable the set is across classes
and across eps."""
from __future__ import annotations

import math
from itertools import combinations
from pathlib import Path

import torch
from torch import nn

from training.attacks import PGD, eval_mode
from training.data import Split
from training.defenses.common import auto_alpha


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def targeted_pairs(model: nn.Module, split: Split, per_class: int, num_classes: int, eps: float,
                   steps: int, seed: int = 0, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step 1: the first `per_class` images of each class, each attacked (targeted L-inf PGD)
    toward every other class. Returns (x, x_adv, true labels), (num_classes - 1) rows per image."""
    picks = [torch.nonzero(split.y == c).squeeze(1)[:per_class] for c in range(num_classes)]
    idx = torch.cat(picks).repeat_interleave(num_classes - 1)
    y = split.y[idx]
    shift = torch.arange(1, num_classes).repeat(len(idx) // (num_classes - 1))
    targets = (y + shift) % num_classes
    attack = PGD(model, eps=eps, alpha=auto_alpha(0.0, eps, steps), steps=steps, targeted=True, seed=seed)
    x = split.x[idx]
    x_adv = torch.cat([attack(x[s:s + batch_size], targets[s:s + batch_size]) for s in range(0, len(x), batch_size)])
    return x, x_adv, y


@torch.no_grad()
def rms_differences(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor,
                    batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Step 2: per layer, per pair and per filter, the RMS over positions of the difference
    between the layer's outputs on x_adv and on x. Returns {layer: N x filters}."""
    layers = conv_layers(model)
    captured: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out))
             for name, m in layers]
    result: dict[str, list[torch.Tensor]] = {name: [] for name, _ in layers}
    try:
        with eval_mode(model):
            for s in range(0, len(x), batch_size):
                model(x[s:s + batch_size])
                clean = dict(captured)
                model(x_adv[s:s + batch_size])
                for name, _ in layers:
                    diff = captured[name] - clean[name]
                    result[name].append(diff.pow(2).mean(dim=(2, 3)).sqrt())
    finally:
        for hook in hooks:
            hook.remove()
    return {name: torch.cat(parts) for name, parts in result.items()}


def top_share(count: int, fraction: float) -> int:
    """How many of `count` filters make up `fraction` of them (at least one; rounded up)."""
    return max(1, math.ceil(fraction * count - 1e-9))


def top_membership(diff: torch.Tensor, top_fraction: float) -> torch.Tensor:
    """Step 3: for each pair, which filters are among its top `top_fraction` by RMS difference."""
    k = top_share(diff.shape[1], top_fraction)
    member = torch.zeros_like(diff, dtype=torch.bool)
    return member.scatter_(1, diff.topk(k, dim=1).indices, True)


def most_frequent(counts: torch.Tensor, fraction: float) -> list[int]:
    """Step 4: the `fraction` most frequently affected filters (ties: lower filter id)."""
    order = sorted(range(len(counts)), key=lambda i: (-int(counts[i]), i))
    return sorted(order[:top_share(len(counts), fraction)])


def jaccard(a: list[int], b: list[int]) -> float:
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def chance_jaccard(k: int, n: int) -> float:
    """Expected Jaccard index of two independent random k-subsets of n filters."""
    shared = k * k / n
    return shared / (2 * k - shared)


def find_dominant_filters(model: nn.Module, split: Split, num_classes: int, fraction: float = 0.1,
                          per_class: int = 100, eps: float = 0.3, steps: int = 20,
                          top_fraction: float = 0.1, seed: int = 0) -> dict:
    """Algorithm 1 on every conv layer of `model`.

    Returns {"eps", "pairs", "layers": {name: {"filters", "counts", "class_counts",
    "dominant", "class_dominant", "class_overlap", "class_vs_all", "chance"}}}.
    Example: `find_dominant_filters(model, splits.val, 10, fraction=0.1, eps=0.3)`
    """
    x, x_adv, y = targeted_pairs(model, split, per_class, num_classes, eps, steps, seed)
    layers = {}
    for name, diff in rms_differences(model, x, x_adv).items():
        member = top_membership(diff, top_fraction)
        counts = member.sum(0)
        class_counts = torch.stack([member[y == c].sum(0) for c in range(num_classes)])
        dominant = most_frequent(counts, fraction)
        present = [c for c in range(num_classes) if (y == c).any()]
        class_dominant = {c: most_frequent(class_counts[c], fraction) for c in present}
        pairs = list(combinations(present, 2))
        layers[name] = {
            "filters": diff.shape[1],
            "counts": counts.tolist(),
            "class_counts": class_counts.tolist(),
            "dominant": dominant,
            "class_dominant": {str(c): v for c, v in class_dominant.items()},
            "class_overlap": sum(jaccard(class_dominant[a], class_dominant[b]) for a, b in pairs) / max(len(pairs), 1),
            "class_vs_all": sum(jaccard(v, dominant) for v in class_dominant.values()) / max(len(present), 1),
            "chance": chance_jaccard(len(dominant), diff.shape[1]),
        }
    return {"eps": eps, "pairs": len(x), "per_class": per_class, "steps": steps,
            "fraction": fraction, "top_fraction": top_fraction, "layers": layers}


def eps_overlap(main: dict, others: list[dict]) -> dict[str, dict[str, float]]:
    """Jaccard index of each layer's dominant set at other eps with the set at the main eps."""
    return {name: {str(o["eps"]): jaccard(layer["dominant"], o["layers"][name]["dominant"]) for o in others}
            for name, layer in main["layers"].items()}


def plot_histograms(result: dict, out_dir: Path) -> list[Path]:
    """One PNG per layer: how often each filter is in a pair's top set (dominant in red), and
    the same counts per class (rows) to show whether the classes agree."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, layer in result["layers"].items():
        fig, (top, grid) = plt.subplots(2, 1, figsize=(max(6.0, layer["filters"] * 0.12), 6),
                                        gridspec_kw={"height_ratios": [2, 1]})
        colors = ["tab:red" if i in layer["dominant"] else "tab:gray" for i in range(layer["filters"])]
        top.bar(range(layer["filters"]), layer["counts"], color=colors)
        top.set_title(f"conv layer {name}: how often each filter is in a pair's top "
                      f"{result['top_fraction']:.0%}\n(eps={result['eps']}, {result['pairs']} pairs; "
                      f"red: the {result['fraction']:.0%} dominant)", fontsize=9)
        top.set(xlabel="filter id", ylabel="frequency")
        grid.imshow(torch.tensor(layer["class_counts"]).float(), aspect="auto", cmap="viridis")
        grid.set(xlabel="filter id", ylabel="class")
        fig.tight_layout()
        path = out_dir / f"layer-{name.replace('.', '_')}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
