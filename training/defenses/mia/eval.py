"""Evaluate a trained `mia` run beyond its training attacks.

    python -m training.defenses.mia.eval --run runs/mia \\
        --unseen "square:eps=0.1;max_queries=1000,npixel:pixels=3;popsize=100;steps=30" \\
        --adaptive-eps 0.1 --adaptive-steps 40 --out runs/mia/eval

- seen attacks: the run's own test sets (adversarial.pt, made against the source model);
- unseen attacks (never in the augmented set): made against the source model on the same
  clean test images, so their true-positive rates compare with the seen ones;
- adaptive: an attacker who knows the ensemble runs targeted PGD on its differentiable
  surrogate (log of the mean member probability) toward the most likely *wrong, non-adversarial*
  class; success = the vote gives a wrong class that is not "adversarial".
Writes eval.json and eval.md (the tables) into --out. The unseen attacks' images are kept in
shards under --out/unseen/ (1,000 images each), so a stopped evaluation resumes where it stopped;
a different --unseen or --n asks for a fresh --out instead of mixing shards. `--craft-only`
processes beside it (same arguments) share the shards, one per free core; with `--n` they can
start as soon as the run's source model exists, before its pool and ensemble.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from training.checkpoint import load_model, read_json, write_json
from training.data import DataConfig, Split, load_splits
from training.defenses.mia.craft import craft_per_attack
from training.defenses.mia.data import AdversarialSet, parse_attacks
from training.defenses.mia.ensemble import MIAEnsemble, SoftEnsemble
from training.defenses.mia.metrics import detection_report, detection_table, pct, predict

log = logging.getLogger(__name__)


def _merge(a: AdversarialSet, b: AdversarialSet) -> AdversarialSet:
    return AdversarialSet(torch.cat([a.x, b.x]), torch.cat([a.y, b.y]),
                          torch.cat([a.source_index, b.source_index]),
                          torch.cat([a.attack, b.attack + len(a.names)]), torch.cat([a.fooled, b.fooled]),
                          a.names + b.names)


def adaptive_attack(ensemble: MIAEnsemble, clean: Split, adv_class: int, eps: float, steps: int,
                    batch_size: int = 256) -> dict:
    """Targeted PGD on the soft ensemble toward the best wrong non-adversarial class."""
    from training.attacks import PGD

    surrogate = SoftEnsemble(ensemble).eval()
    xs = []
    for i in range(0, len(clean), batch_size):
        x, y = clean.x[i:i + batch_size], clean.y[i:i + batch_size]
        with torch.no_grad():
            scores = surrogate(x)
        scores[torch.arange(len(y)), y] = -torch.inf
        scores[:, adv_class] = -torch.inf
        target = scores.argmax(1)
        xs.append(PGD(surrogate, eps=eps, alpha=2.5 * eps / steps, steps=steps, targeted=True)(x, target))
    x_adv = torch.cat(xs)
    pred = predict(ensemble, x_adv)
    fooled = (pred != clean.y) & (pred != adv_class)
    return {"eps": eps, "steps": steps, "images": len(clean), "success_rate": float(fooled.float().mean()),
            "flagged_rate": float((pred == adv_class).float().mean()),
            "accuracy": float((pred == clean.y).float().mean())}


def unseen_folder(folder: Path, attacks: str, n: int) -> Path:
    """`folder` for the unseen attacks' shards, stamped with what made them; shards of other
    attacks or another image count are refused, never silently reused."""
    stamp = {"unseen": attacks, "clean_images": n}
    path = folder / "made-by.json"
    if path.exists() and read_json(path) != stamp:
        raise SystemExit(f"{folder} holds shards of {read_json(path)}, not {stamp}: "
                         f"pass another --out or delete {folder}")
    write_json(path, stamp)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run folder written by `advguard train --defense mia`")
    parser.add_argument("--unseen", default="square:eps=0.1;max_queries=1000,npixel:pixels=3;popsize=100;steps=30",
                        help="attacks the ensemble never saw, 'name:field=value;...' separated by ','")
    parser.add_argument("--n", type=int, default=0, help="clean test images (0: those of the run's test sets)")
    parser.add_argument("--adaptive-eps", type=float, default=0.1, help="0 skips the adaptive attack")
    parser.add_argument("--adaptive-steps", type=int, default=40)
    parser.add_argument("--out", default=None, help="folder for eval.json and eval.md (default RUN/eval)")
    parser.add_argument("--craft-only", action="store_true",
                        help="only make the unseen attacks' shards and exit: run it beside the full evaluation "
                             "with the same --run, --n and --out, once per free core, to share the work")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    run = Path(args.run)
    out = Path(args.out) if args.out else run / "eval"
    config = read_json(run / "config.json")
    source_run = config.get("defense_config", {}).get("source_run") or run / "source"
    source, _ = load_model(source_run)
    pool = run / "adversarial.pt"
    if pool.exists():
        seen = AdversarialSet.from_state(torch.load(pool, weights_only=True)["test"])
        n_test = int(seen.source_index.max()) + 1 if len(seen) else 0
    elif args.craft_only and args.n:  # the unseen attacks need only the source model: craft them early
        seen, n_test = None, 0
    else:
        raise SystemExit(f"{pool} is missing: the run has not finished its adversarial pool (`make mia-full` "
                         "resumes it); `--craft-only --n N` makes the unseen attacks' shards before that")
    n = args.n or n_test
    data = config.get("data", {})
    splits = load_splits(DataConfig(name=data.get("name", "fashion-mnist"), data_dir=data.get("data_dir"),
                                    seed=data.get("seed", 0), val_size=100, limit_train=100,
                                    limit_test=max(n, n_test)))
    clean = splits.test.take(n)
    unseen = craft_per_attack(source, clean, parse_attacks(args.unseen), seed=11,
                              folder=unseen_folder(out / "unseen", args.unseen, n))
    if args.craft_only:
        log.info("unseen attacks' shards made in %s", out / "unseen")
        return 0
    ensemble, _ = load_model(run)
    seen = seen.select(seen.source_index < n)
    report = detection_report(ensemble, clean, _merge(seen, unseen), len(splits.labels))
    for name in unseen.names:
        report["attacks"][name]["unseen"] = True
    result = {"run": str(run), "clean_images": n, "unseen": args.unseen, "detection": report}
    text = detection_table(report)
    if args.adaptive_eps > 0:
        result["adaptive"] = adaptive_attack(ensemble, clean, len(splits.labels), args.adaptive_eps,
                                             args.adaptive_steps)
        a = result["adaptive"]
        text += (f"\n\nadaptive (targeted PGD-{a['steps']} on the soft ensemble, eps={a['eps']}, toward the "
                 f"best wrong non-adversarial class): success {pct(a['success_rate'])}%, flagged "
                 f"{pct(a['flagged_rate'])}%, still correct {pct(a['accuracy'])}% ({a['images']} images)")
    write_json(out / "eval.json", result)
    (out / "eval.md").write_text(f"unseen attacks (made against the source model): {', '.join(unseen.names)}\n\n"
                                 + text + "\n")
    log.info("written %s and %s:\n%s", out / "eval.json", out / "eval.md", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
