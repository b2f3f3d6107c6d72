"""Paper 004's table rows, verdict and reason, with our best volumized variant (`VARIANT`)
beside paper 004's design, from model results in either of two shapes:

- `training.defenses.volumized.eval.evaluate`'s (paper 004's own evaluation): "npixel" and
  "patch" entries {acc_clean, acc_attack, delta, beta}, plus "arch", "parameters" and, for a
  volumized model, "order_sensitivity";
- `training.defenses.volumized.variants`' results.json: the same entries with "n" and
  "cpu_seconds", a top-level "acc_clean" and "order_flips" instead of "order_sensitivity".

Keys of "npixel" and "patch" are JSON strings ("1", "0.1"). A figure not measured reads
"not measured"; no number is made up.

Example: `rows, verdict, why = table(models, read_variant(VARIANTS), where, command)`
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from training.checkpoint import read_json
from training.reproduce._common import pct

VARIANT = "fixed-occ"
CONTROL = "undefended-occ"
BESIDE = "undefended (variants run)"  # the undefended model a variants file measured beside VARIANT
VARIANT_OPTIONS = {"ranking": "fixed", "occlusion": "0.5"}
VARIANT_COMMAND = ("advguard train --defense volumized --model fmnist-cnn --option ranking=fixed "
                   "--option occlusion=0.5")
VARIANT_NOTE = (f"{VARIANT} = our best volumized variant (`{VARIANT_COMMAND}`; docs/results/volumized-variants.md): "
                "one slice order for every image from training-set statistics, and random pixel/patch occlusion "
                f"of training images; {CONTROL} = the 2D CNN trained with the same occlusion (the control).")


@dataclass(frozen=True)
class Variant:
    """Our best volumized variant as measured, and what it is compared with.

    Args:
        source: where its figures come from, or why there are none.
        results: its model entry (either shape); None when not measured.
        undefended: the undefended model measured beside it (None: the table's own undefended
            model, measured in the same evaluation).
        control: `CONTROL`, where measured.
    """

    source: str
    results: dict | None = None
    undefended: dict | None = None
    control: dict | None = None

    def beside(self) -> dict[str, dict]:
        """The models it brings to the table and plots, by label (none when not measured)."""
        found = {VARIANT: self.results, BESIDE: self.undefended, CONTROL: self.control}
        return {label: model for label, model in found.items() if model is not None}


def read_variant(path: Path, budget: dict | None = None) -> Variant:
    """`VARIANT`, 'undefended' and (where present) `CONTROL` from a results.json of
    `python -m training.defenses.volumized.variants`; not measured when the file or a label is
    missing. `budget` ({n, npixel_options, patch_options, patch_train} of the figures the variant
    goes beside): a file measured otherwise says so in its source note."""
    if not path.exists():
        return Variant(f"not measured ({path} does not exist)")
    data = read_json(path)
    models = data.get("results", {})
    if VARIANT not in models or "undefended" not in models:
        return Variant(f"not measured ({path} holds no {VARIANT!r} and 'undefended' pair)")
    source = (f"{path} (`python -m training.defenses.volumized.variants`, {data['n']} test images; N-pixel "
              f"{data['npixel_options']}; patch {data['patch_options']}, fit on {data['patch_train']} training images)")
    if budget and any(data.get(k) != v for k, v in budget.items()):
        source += ", not the test images and attack budget of paper 004's figures beside it"
    return Variant(source, models[VARIANT], models["undefended"], models.get(CONTROL))


def entry(model: dict, kind: str, key: float) -> dict | None:
    """`model`'s result for attack `kind` ('npixel' | 'patch') at N or area `key`; None when not measured."""
    return next((r for k, r in model.get(kind, {}).items() if abs(float(k) - key) < 1e-9), None)


def clean(model: dict) -> float | None:
    """Clean accuracy: the top-level figure (variants shape), else any attack entry's."""
    if "acc_clean" in model:
        return model["acc_clean"]
    first = next(iter([*model.get("npixel", {}).values(), *model.get("patch", {}).values()]), None)
    return None if first is None else first["acc_clean"]


def beta(model: dict, kind: str, key: float) -> float | None:
    """beta (share of clean-correct images the attack does not flip) at `key`; None when not measured."""
    r = entry(model, kind, key)
    return None if r is None else r["beta"]


def cell(model: dict, kind: str, key: float) -> str:
    """'acc_attack (delta, beta)' of one model and attack, or 'not measured'."""
    r = entry(model, kind, key)
    if r is None:
        return "not measured"
    return f"{pct(r['acc_attack'])} (delta {100 * r['delta']:.1f} pts, beta {pct(r['beta'])})"


def _beside(variant: Variant, show: Callable[[dict], str]) -> str:
    """'; fixed-occ (our best variant) ...' and the models measured beside it, each by `show(model)`."""
    if variant.results is None:
        return f"; {VARIANT} (our best variant) not measured"
    text = f"; {VARIANT} (our best variant) {show(variant.results)}"
    if variant.undefended is not None:
        text += f"; {BESIDE} {show(variant.undefended)}"
    if variant.control is not None:
        text += f"; {CONTROL} (control) {show(variant.control)}"
    return text


def _points(a: float | None, b: float | None) -> str:
    return "not measured" if a is None or b is None else f"{100 * (a - b):+.1f} pts"


def variant_sentence(variant: Variant, undefended: dict) -> str:
    """One sentence: the variant's beta at 1 pixel and under a 10% patch against the undefended
    model measured beside it (`undefended` when the variant brings none), and clean accuracies."""
    if variant.results is None:
        return f"Our best variant, {VARIANT}: {variant.source}."
    v, u = variant.results, variant.undefended or undefended
    pixel = beta(v, "npixel", 1), beta(u, "npixel", 1)
    patch = beta(v, "patch", 0.10), beta(u, "patch", 0.10)
    text = (f"Our best variant, {VARIANT} (fixed slice order, occlusion training), defends beta {pct(pixel[0])} at "
            f"1 pixel and {pct(patch[0])} under a 10% patch against {pct(pixel[1])} and {pct(patch[1])} for the "
            f"undefended model measured with it ({_points(*pixel)} and {_points(*patch)}), at clean accuracy "
            f"{pct(clean(v))} against {pct(clean(u))}")
    if variant.control is not None:
        c = variant.control
        text += (f"; the {CONTROL} control defends {pct(beta(c, 'npixel', 1))} and {pct(beta(c, 'patch', 0.10))} "
                 f"at clean accuracy {pct(clean(c))}")
    return text + "."


def table(models: dict, variant: Variant, where: str, command: str) -> tuple[list[dict], str, str]:
    """(rows, verdict, why) of paper 004's table: 'volumized' (paper 004's design) against
    'undefended' in `models`, which decide the verdict, and `variant` beside them."""
    vol, und = models["volumized"], models["undefended"]
    data = f"{where}; {VARIANT}: {variant.source}"

    def attack(kind: str, key: float) -> str:
        shown = f"{key:g} pixel(s)" if kind == "npixel" else f"patch {100 * key:.0f}%"
        return (f"{shown}: volumized {cell(vol, kind, key)}; undefended {cell(und, kind, key)}"
                + _beside(variant, lambda m: cell(m, kind, key)))

    most_n, big_patch = max(float(k) for k in vol["npixel"]), max(float(k) for k in vol["patch"])
    sens = vol.get("order_sensitivity")
    flips = None if variant.results is None else (variant.results.get("order_sensitivity")
                                                  or variant.results.get("order_flips"))
    reorders = ((f"; random 1-pixel changes reorder the slices of {pct(sens['reordered_share'])} of images"
                 if sens else "") + (f" ({VARIANT}: {pct(flips['reordered_share'])})" if sens and flips else ""))
    rows = [
        {"paper": "clean (CIFAR-10): volumized 96.3% vs undefended 99%",
         "ours_paper_setting": f"volumized {pct(clean(vol))} vs undefended {pct(clean(und))}"
         + _beside(variant, lambda m: pct(clean(m))),
         "ours_strong": "-", "data": f"{data}; `{command}`"},
        {"paper": "1-pixel: volumized 91.3% vs undefended 43.2%", "ours_paper_setting": attack("npixel", 1),
         "ours_strong": attack("npixel", most_n) + reorders, "data": data},
        {"paper": "patch: volumized 61.6% vs undefended 44.3%", "ours_paper_setting": attack("patch", 0.10),
         "ours_strong": attack("patch", big_patch), "data": data},
    ]
    beta_v, beta_u = beta(vol, "npixel", 1) or 0.0, beta(und, "npixel", 1) or 0.0
    patch_v, patch_u = entry(vol, "patch", 0.10)["acc_attack"], entry(und, "patch", 0.10)["acc_attack"]
    verdict = "reproduced" if beta_v > beta_u and patch_v > patch_u else "not reproduced"
    why = (f"At 1 pixel the volumized model defends beta {pct(beta_v)} of its correct images against the undefended "
           f"model's {pct(beta_u)}; under a 10% patch it keeps {pct(patch_v)} against {pct(patch_u)}. "
           + variant_sentence(variant, und))
    return rows, verdict, why
