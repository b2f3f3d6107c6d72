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
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from training.checkpoint import MODEL_FILE, load_model, read_json, save_model, write_json
from training.data import Splits
from training.defenses.base import Defense
from training.defenses.mia.config import MIAConfig
from training.defenses.mia.data import adversarial_count
from training.defenses.mia.ensemble import MIAEnsemble
from training.defenses.mia.metrics import detection_report, detection_table, eat_table
from training.defenses.mia.pool import POOL_SETS, adversarial_sets, pool_sizes
from training.defenses.mia.stages import Stages, StageBar, member_arch, pool_needed, stage_done, stage_work, trained
from training.models import ModelSpec, create_model, model_spec_for
from training.trainer import TrainConfig

log = logging.getLogger(__name__)


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

        if not resume:  # stages are claimed and loaded by folder: none may be left from another run
            for stale in ("eat", "members"):
                shutil.rmtree(out / stale, ignore_errors=True)
        if cfg.source_run:
            source, _ = load_model(cfg.source_run)
        else:
            spec = model_spec_for(model_name, splits)
            torch.manual_seed(train.seed)
            source = create_model(spec)
            trained(out / "source", source, spec, splits, replace(train, epochs=cfg.epochs("source", train.epochs)),
                    resume, record)
        source.eval()

        adv = adversarial_sets(cfg, out, source, splits, resume, train.seed,
                               need=pool_needed(cfg, out) if resume else POOL_SETS)
        if resume and stage_done(out):  # a finished run (e.g. restored from kept/ without its stages)
            log.info("%s is finished: its ensemble and metrics stand; the pool's test sets are in %s", out,
                     out / "adversarial.pt")
            return read_json(out / "metrics.json")
        bar = StageBar(out, stage_work(cfg, len(splits.train), train.epochs, model_name), resume)
        stages = Stages(cfg, out, splits, adv, train, record, bar)
        stages.work()
        eat_rows, members, member_metrics = stages.collect()
        (out / "eat_table.md").write_text(eat_table(eat_rows, adv["test"].names) + "\n")
        member_specs = [model_spec_for(member_arch(cfg, i), splits, num_classes=k + 1).to_dict()
                        for i in range(cfg.n_bootstraps)]
        bar.close()
        ensemble = MIAEnsemble(members, cfg.tie_break).eval()
        base = model_spec_for(cfg.members[0], splits, num_classes=k + 1)
        spec = ModelSpec(name="mia-ensemble", num_classes=k + 1, in_channels=base.in_channels,
                         image_size=base.image_size, mean=base.mean, std=base.std,
                         options={"members": member_specs, "tie_break": cfg.tie_break})
        report = detection_report(ensemble, stages.test_clean, adv["test"], k)
        sizes = pool_sizes(cfg, splits)
        (out / "detection.md").write_text(f"profile {cfg.profile}: {', '.join(record['attack_specs'])}\n\n"
                                          + detection_table(report) + "\n")
        metrics = {"test_accuracy": report["clean_accuracy"], "test_size": len(stages.test_clean),
                   "train_size": len(splits.train) + adversarial_count(len(splits.train), cfg.share), "wall_seconds": round(time.perf_counter() - began, 2),
                   "profile": cfg.profile, "budget": asdict(budget), "attack_specs": record["attack_specs"],
                   "detection": report, "eat_cycles": eat_rows,
                   "members": [{"val_accuracy": m.get("val_accuracy"), "test_accuracy": m.get("test_accuracy")}
                               for m in member_metrics],
                   "adversarial_pool": {"train": sizes["train"], "val": sizes["val"],
                                        "test": len(adv["test"]), "attacks": list(adv["test"].names)}}
        save_model(out / MODEL_FILE, ensemble, spec, {"metrics": {"test_accuracy": metrics["test_accuracy"]}})
        write_json(out / "metrics.json", metrics)
        log.info("MIA ensemble (profile %s):\n%s", cfg.profile, detection_table(report))
        return metrics

    def plan(self, model_name: str, splits: Splits, train: TrainConfig, out_dir: Path) -> str:
        """The stages, their estimated cost on this machine and what `out_dir` already holds."""
        from training.defenses.mia.plan import plan

        return plan(self.config, train, splits, Path(out_dir))
