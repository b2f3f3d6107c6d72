"""`mia`: paper 002's Model Integration Approach, an ensemble with an "adversarial" class.

`advguard train --defense mia --model mia-target --epochs 5 --out runs/mia [--resume]` runs, each
stage in its own folder of the run, every one resumable (`--resume` continues where it stopped;
a stop, kill -9 included, loses at most the shard or the epoch in flight):
1. source/    the model the adversarial samples are made against (paper: the "target model",
              `--model`, trained on clean data), or a trained run (`--option source_run=DIR`);
2. adversarial/  the adversarial pool (train; val) and every attack on the test images, in
              shards per attack (`training.defenses.mia.craft`), checked against pool.json (the
              attacks, seeds, sizes and the source model's hash); assembled into adversarial.pt;
3. eat/<arch>/share-NN/  EAT: each member architecture trained in cycles on the augmented set
              with a growing adversarial share (15, 25, 40, 50%; the model carries over from
              one cycle to the next), with eat_table.md (accuracy and F1 per attack per cycle);
4. members/<i>-<arch>/  bagging: bootstrap i of the chosen share's augmented set (40% by
              default) trains member i (architecture members[i mod 3], initialized from its
              EAT model at that share);
5. model.pt   the ensemble (ModelSpec 'mia-ensemble', 11 outputs, majority vote) and
              metrics.json / detection.md: clean accuracy, FPR, TPR per attack, slipped-through
              accuracy on the test images (attacks made against the source model, as the paper),
              and the cost profile used.
Stages 1, 3 and 4 resume from the trainer's last.pt (one per epoch); every stage is seeded from
`--seed`, so a resumed run gives the same ensemble as an uninterrupted one.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from tqdm import tqdm

from training.checkpoint import LAST_FILE, MODEL_FILE, load_model, read_json, save_model, write_json
from training.data import Split, Splits
from training.defenses.base import Defense
from training.defenses.mia.config import MIAConfig
from training.defenses.mia.data import adversarial_count, augmented, bootstrap_indices
from training.defenses.mia.ensemble import MIAEnsemble
from training.defenses.mia.metrics import detection_report, detection_table, eat_table
from training.defenses.mia.pool import adversarial_sets
from training.models import ModelSpec, create_model, model_spec_for
from training.trainer import TrainConfig, fit

log = logging.getLogger(__name__)


def stage_done(out: Path) -> bool:
    return (Path(out) / MODEL_FILE).exists() and (Path(out) / "metrics.json").exists()


def _trained(out: Path, model: torch.nn.Module, spec: ModelSpec, splits: Splits, config: TrainConfig,
             resume: bool, record: dict) -> dict:
    """trainer.fit, or (on resume) the finished stage's weights and metrics."""
    if resume and stage_done(out):
        try:
            metrics = read_json(out / "metrics.json")
            model.load_state_dict(torch.load(out / MODEL_FILE, map_location="cpu", weights_only=True)["state_dict"])
            return metrics
        except ValueError:  # metrics.json cut short by a stop: finish the stage from last.pt
            log.warning("%s: unreadable metrics.json, finishing the stage from %s", out, LAST_FILE)
    last = out / LAST_FILE
    if resume and last.exists():
        try:
            torch.load(last, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, OSError) as err:  # written by the trainer in place: a stop mid-write
            log.warning("%s is unreadable (%s): the stage restarts from its first epoch", last, err)
            last.unlink()
    return fit(model, spec, splits, config, out, run_config=record, resume=resume)


def stage_paths(cfg: MIAConfig) -> dict[str, list[str]]:
    """The training stages' folders, in order: source, eat cycles, members."""
    eat = [f"eat/{arch}/share-{round(100 * share):02d}" for arch in dict.fromkeys(cfg.members) for share in cfg.shares]
    members = [f"members/{i}-{cfg.members[i % len(cfg.members)]}" for i in range(cfg.n_bootstraps)]
    return {"source": [] if cfg.source_run else ["source"], "eat": eat, "members": members}


def stage_work(cfg: MIAConfig, n_train: int, default_epochs: int, model_name: str) -> dict[str, tuple[str, int, int]]:
    """Each training stage's folder -> (architecture, training images, epochs)."""
    paths, chosen = stage_paths(cfg), n_train + adversarial_count(n_train, cfg.share)
    work = {p: (model_name, n_train, cfg.epochs("source", default_epochs)) for p in paths["source"]}
    for p, (arch, share) in zip(paths["eat"], [(a, s) for a in dict.fromkeys(cfg.members) for s in cfg.shares]):
        work[p] = (arch, n_train + adversarial_count(n_train, share), cfg.epochs("eat", default_epochs))
    for i, p in enumerate(paths["members"]):
        work[p] = (cfg.members[i % len(cfg.members)], max(1, int(round(cfg.bootstrap_fraction * chosen))),
                   cfg.epochs("member", default_epochs))
    return work


class _StageBar:
    """One progress bar over the EAT and member stages, in image-epochs (ETA from finished ones)."""

    def __init__(self, out: Path, work: dict[str, tuple[str, int, int]], resume: bool) -> None:
        self.size = {p: n * e for p, (_, n, e) in work.items() if p != "source"}
        self.counted = {p for p in self.size if resume and stage_done(out / p)}
        self.bar = tqdm(total=sum(self.size.values()), initial=sum(self.size[p] for p in self.counted),
                        desc="mia training stages", unit="img-epoch", unit_scale=True, dynamic_ncols=True,
                        mininterval=1.0 if sys.stderr.isatty() else 60.0)

    def done(self, path: str) -> None:
        if path not in self.counted:
            self.counted.add(path)
            self.bar.update(self.size[path])

    def close(self) -> None:
        self.bar.close()


class MIADefense(Defense):
    """EAT cycles + bagged EAT members + majority vote (paper 002). See `MIAConfig`."""

    Config = MIAConfig

    def fit(self, model_name: str, splits: Splits, train: TrainConfig, out_dir: Path,
            run_config: dict | None = None, resume: bool = False) -> dict:
        cfg, out, began = self.config, Path(out_dir), time.perf_counter()
        splits = cfg.used_splits(splits)
        out.mkdir(parents=True, exist_ok=True)
        budget = cfg.budget()
        record = {**(run_config or {}), **self.describe(), "profile": cfg.profile, "budget": asdict(budget),
                  "attack_specs": [str(s) for s in cfg.attack_specs()]}
        write_json(out / "config.json", {"train": asdict(train), **record})
        k = len(splits.labels)
        log.info("MIA profile %s: %s; attacks %s", cfg.profile, budget, record["attack_specs"])

        def epochs(stage: str) -> TrainConfig:
            return replace(train, epochs=cfg.epochs(stage, train.epochs))

        if cfg.source_run:
            source, _ = load_model(cfg.source_run)
        else:
            spec = model_spec_for(model_name, splits)
            torch.manual_seed(train.seed)
            source = create_model(spec)
            _trained(out / "source", source, spec, splits, epochs("source"), resume, record)
        source.eval()

        adv = adversarial_sets(cfg, out, source, splits, resume, train.seed)
        test_clean = splits.test.take(cfg.eval_size) if cfg.eval_size else splits.test
        labels = (*splits.labels, "adversarial")
        val_by_share: dict[float, Split] = {}
        test = Split(torch.cat([test_clean.x, adv["test"].x]),
                     torch.cat([test_clean.y, torch.full((len(adv["test"]),), k)]))

        def augmented_splits(share: float, train_split: Split) -> Splits:
            if share not in val_by_share:
                val_by_share[share] = augmented(splits.val, adv["val"], share, k, cfg.only_fooled)
            return Splits(train_split, val_by_share[share], test, labels, splits.name)

        paths = stage_paths(cfg)
        bar = _StageBar(out, stage_work(cfg, len(splits.train), train.epochs, model_name), resume)
        eat_rows, eat_models = [], {}
        for arch in dict.fromkeys(cfg.members):
            spec = model_spec_for(arch, splits, num_classes=k + 1)
            torch.manual_seed(train.seed)
            model = create_model(spec)
            for cycle, share in enumerate(cfg.shares, 1):
                aug = augmented(splits.train, adv["train"], share, k, cfg.only_fooled)
                stage = f"eat/{arch}/share-{round(100 * share):02d}"
                _trained(out / stage, model, spec, augmented_splits(share, aug), epochs("eat"), resume, record)
                bar.done(stage)
                del aug
                report = detection_report(model, test_clean, adv["test"], k)
                eat_rows.append({"model": arch, "cycle": cycle, "share": share, "report": report})
                if share == cfg.share:
                    eat_models[arch] = {n: t.clone() for n, t in model.state_dict().items()}
        (out / "eat_table.md").write_text(eat_table(eat_rows, adv["test"].names) + "\n")

        chosen = augmented(splits.train, adv["train"], cfg.share, k, cfg.only_fooled)
        members, member_specs, member_metrics = [], [], []
        samples = bootstrap_indices(len(chosen), cfg.n_bootstraps, train.seed, cfg.bootstrap_fraction)
        for i, (idx, folder) in enumerate(zip(samples, paths["members"])):
            arch = cfg.members[i % len(cfg.members)]
            spec = model_spec_for(arch, splits, num_classes=k + 1)
            torch.manual_seed(train.seed + 1 + i)
            model = create_model(spec)
            if cfg.init_from_eat:
                model.load_state_dict(eat_models[arch])
            member_metrics.append(_trained(out / folder, model, spec,
                                           augmented_splits(cfg.share, Split(chosen.x[idx], chosen.y[idx])),
                                           epochs("member"), resume, record))
            bar.done(folder)
            members.append(model.eval())
            member_specs.append(spec.to_dict())

        bar.close()
        ensemble = MIAEnsemble(members, cfg.tie_break).eval()
        base = model_spec_for(cfg.members[0], splits, num_classes=k + 1)
        spec = ModelSpec(name="mia-ensemble", num_classes=k + 1, in_channels=base.in_channels,
                         image_size=base.image_size, mean=base.mean, std=base.std,
                         options={"members": member_specs, "tie_break": cfg.tie_break})
        report = detection_report(ensemble, test_clean, adv["test"], k)
        (out / "detection.md").write_text(f"profile {cfg.profile}: {', '.join(record['attack_specs'])}\n\n"
                                          + detection_table(report) + "\n")
        metrics = {"test_accuracy": report["clean_accuracy"], "test_size": len(test_clean),
                   "train_size": len(chosen), "wall_seconds": round(time.perf_counter() - began, 2),
                   "profile": cfg.profile, "budget": asdict(budget), "attack_specs": record["attack_specs"],
                   "detection": report, "eat_cycles": eat_rows,
                   "members": [{"val_accuracy": m.get("val_accuracy"), "test_accuracy": m.get("test_accuracy")}
                               for m in member_metrics],
                   "adversarial_pool": {"train": len(adv["train"]), "val": len(adv["val"]),
                                        "test": len(adv["test"]), "attacks": list(adv["test"].names)}}
        save_model(out / MODEL_FILE, ensemble, spec, {"metrics": {"test_accuracy": metrics["test_accuracy"]}})
        write_json(out / "metrics.json", metrics)
        log.info("MIA ensemble (profile %s):\n%s", cfg.profile, detection_table(report))
        return metrics

    def plan(self, model_name: str, splits: Splits, train: TrainConfig, out_dir: Path) -> str:
        """The stages, their estimated cost on this machine and what `out_dir` already holds."""
        from training.defenses.mia.plan import plan

        return plan(self.config, train, splits, Path(out_dir))
