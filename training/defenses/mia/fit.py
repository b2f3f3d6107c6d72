"""`mia`: paper 002's Model Integration Approach, an ensemble with an "adversarial" class.

`advguard train --defense mia --model mia-target --epochs 5 --out runs/mia` runs, each stage in
its own folder of the run (resumable with --resume):
1. source/    the model the adversarial samples are made against (paper: the "target model",
              `--model`, trained on clean data), or a trained run (`--option source_run=DIR`);
2. adversarial.pt  the adversarial pool (train; val) and every attack on the test images;
3. eat/<arch>/share-NN/  EAT: each member architecture trained in cycles on the augmented set
              with a growing adversarial share (15, 25, 40, 50%; the model carries over from
              one cycle to the next), with eat_table.md (accuracy and F1 per attack per cycle);
4. members/<i>-<arch>/  bagging: bootstrap i of the chosen share's augmented set (40% by
              default) trains member i (architecture members[i mod 3], initialized from its
              EAT model at that share);
5. model.pt   the ensemble (ModelSpec 'mia-ensemble', 11 outputs, majority vote) and
              metrics.json / detection.md: clean accuracy, FPR, TPR per attack, slipped-through
              accuracy on the test images (attacks made against the source model, as the paper).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from training.checkpoint import MODEL_FILE, load_model, read_json, save_model, write_json
from training.data import Split, Splits
from training.defenses.base import Defense, DefenseConfig
from training.defenses.mia_data import (
    AdversarialSet, adversarial_count, augmented, bootstraps, craft_per_attack, craft_pool, parse_attacks,
)
from training.defenses.mia_metrics import detection_report, detection_table, eat_table
from training.models import ModelSpec, create_model
from training.models.mia_ensemble import TIE_BREAKS, MIAEnsemble
from training.trainer import TrainConfig, fit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MIAConfig(DefenseConfig):
    """Args:
        attacks: attacks for the augmented set, 'name[:field=value;...]' separated by ','.
        shares: EAT cycles' adversarial shares of the augmented set.
        share: the share used for bagging (must be one of `shares` when init_from_eat).
        members: member architectures; member i is members[i mod len].
        n_bootstraps: ensemble size (bootstrap samples, with replacement).
        bootstrap_fraction: bootstrap size / augmented set size.
        eat_epochs, member_epochs, source_epochs: epochs per stage (0: --epochs).
        init_from_eat: start each member from its architecture's EAT model at `share`.
        source_run: a trained run to attack instead of training `--model` on clean data.
        only_fooled: put only adversarial images that fooled the source model in the set.
        tie_break: 'probability' | 'adversarial' (see `training.models.mia_ensemble`).
        eval_size: test images attacked per attack for the metrics (0: the whole test split).
        val_size: validation images used (clean, plus their adversarial share; 0: all).
        attack_batch: batch size of the attacks.
    """

    attacks: str = "gma,pgd:eps=0.1;steps=10;alpha=0.025,fgsm:eps=0.1,cw"
    shares: tuple[float, ...] = (0.15, 0.25, 0.4, 0.5)
    share: float = 0.4
    members: tuple[str, ...] = ("eat1", "eat2", "eat3")
    n_bootstraps: int = 3
    bootstrap_fraction: float = 1.0
    eat_epochs: int = 0
    member_epochs: int = 0
    source_epochs: int = 0
    init_from_eat: bool = True
    source_run: str = ""
    only_fooled: bool = False
    tie_break: str = "probability"
    eval_size: int = 0
    val_size: int = 0
    attack_batch: int = 256

    def __post_init__(self) -> None:
        parse_attacks(self.attacks)
        for s in (*self.shares, self.share):
            adversarial_count(1, s)  # 0 <= share < 1
        if self.init_from_eat and self.share not in self.shares:
            raise ValueError(f"share {self.share} is not an EAT cycle {self.shares}; add it to shares "
                             "or set init_from_eat=false")
        if not self.members or self.n_bootstraps < 1 or self.bootstrap_fraction <= 0:
            raise ValueError("need at least one member architecture, n_bootstraps >= 1, bootstrap_fraction > 0")
        if self.tie_break not in TIE_BREAKS:
            raise ValueError(f"unknown tie_break {self.tie_break!r}; known: {', '.join(TIE_BREAKS)}")
        if min(self.eat_epochs, self.member_epochs, self.source_epochs, self.eval_size, self.val_size) < 0:
            raise ValueError("epochs, eval_size and val_size must be >= 0")


def _trained(out: Path, model: torch.nn.Module, spec: ModelSpec, splits: Splits, config: TrainConfig,
             resume: bool, record: dict) -> dict:
    """trainer.fit, or (on resume) the finished stage's weights and metrics."""
    if resume and (out / MODEL_FILE).exists() and (out / "metrics.json").exists():
        model.load_state_dict(torch.load(out / MODEL_FILE, map_location="cpu", weights_only=True)["state_dict"])
        return read_json(out / "metrics.json")
    return fit(model, spec, splits, config, out, run_config=record, resume=resume)


class MIADefense(Defense):
    """EAT cycles + bagged EAT members + majority vote (paper 002). See `MIAConfig`."""

    Config = MIAConfig

    def fit(self, model_name: str, splits: Splits, train: TrainConfig, out_dir: Path,
            run_config: dict | None = None, resume: bool = False) -> dict:
        from training.train_cli import model_spec_for

        cfg, out, began = self.config, Path(out_dir), time.perf_counter()
        if cfg.val_size:
            splits = Splits(splits.train, splits.val.take(cfg.val_size), splits.test, splits.labels, splits.name)
        out.mkdir(parents=True, exist_ok=True)
        record = {**(run_config or {}), **self.describe()}
        write_json(out / "config.json", {"train": asdict(train), **record})
        k = len(splits.labels)

        def epochs(n: int) -> TrainConfig:
            return replace(train, epochs=n or train.epochs)

        if cfg.source_run:
            source, _ = load_model(cfg.source_run)
        else:
            spec = model_spec_for(model_name, splits)
            torch.manual_seed(train.seed)
            source = create_model(spec)
            _trained(out / "source", source, spec, splits, epochs(cfg.source_epochs), resume, record)
        source.eval()

        adv = self._adversarial(out / "adversarial.pt", source, splits, resume, train.seed)
        test_clean = splits.test.take(cfg.eval_size) if cfg.eval_size else splits.test
        labels = (*splits.labels, "adversarial")

        def augmented_splits(share: float, train_split: Split) -> Splits:
            val = augmented(splits.val, adv["val"], share, k, cfg.only_fooled)
            test = Split(torch.cat([test_clean.x, adv["test"].x]),
                         torch.cat([test_clean.y, torch.full((len(adv["test"]),), k)]))
            return Splits(train_split, val, test, labels, splits.name)

        eat_rows, eat_models = [], {}
        for arch in dict.fromkeys(cfg.members):
            spec = model_spec_for(arch, splits, num_classes=k + 1)
            torch.manual_seed(train.seed)
            model = create_model(spec)
            for cycle, share in enumerate(cfg.shares, 1):
                aug = augmented(splits.train, adv["train"], share, k, cfg.only_fooled)
                _trained(out / "eat" / arch / f"share-{round(100 * share):02d}", model, spec,
                         augmented_splits(share, aug), epochs(cfg.eat_epochs), resume, record)
                report = detection_report(model, test_clean, adv["test"], k)
                eat_rows.append({"model": arch, "cycle": cycle, "share": share, "report": report})
                if share == cfg.share:
                    eat_models[arch] = {n: t.clone() for n, t in model.state_dict().items()}
        table = eat_table(eat_rows, adv["test"].names)
        (out / "eat_table.md").write_text(table + "\n")

        chosen = augmented(splits.train, adv["train"], cfg.share, k, cfg.only_fooled)
        members, member_specs, member_metrics = [], [], []
        for i, sample in enumerate(bootstraps(chosen, cfg.n_bootstraps, train.seed, cfg.bootstrap_fraction)):
            arch = cfg.members[i % len(cfg.members)]
            spec = model_spec_for(arch, splits, num_classes=k + 1)
            torch.manual_seed(train.seed + 1 + i)
            model = create_model(spec)
            if cfg.init_from_eat:
                model.load_state_dict(eat_models[arch])
            member_metrics.append(_trained(out / "members" / f"{i}-{arch}", model, spec,
                                           augmented_splits(cfg.share, sample),
                                           epochs(cfg.member_epochs), resume, record))
            members.append(model.eval())
            member_specs.append(spec.to_dict())

        ensemble = MIAEnsemble(members, cfg.tie_break).eval()
        base = model_spec_for(cfg.members[0], splits, num_classes=k + 1)
        spec = ModelSpec(name="mia-ensemble", num_classes=k + 1, in_channels=base.in_channels,
                         image_size=base.image_size, mean=base.mean, std=base.std,
                         options={"members": member_specs, "tie_break": cfg.tie_break})
        report = detection_report(ensemble, test_clean, adv["test"], k)
        (out / "detection.md").write_text(detection_table(report) + "\n")
        metrics = {"test_accuracy": report["clean_accuracy"], "test_size": len(test_clean),
                   "train_size": len(chosen), "wall_seconds": round(time.perf_counter() - began, 2),
                   "detection": report, "eat_cycles": eat_rows,
                   "members": [{"val_accuracy": m.get("val_accuracy"), "test_accuracy": m.get("test_accuracy")}
                               for m in member_metrics],
                   "adversarial_pool": {"train": len(adv["train"]), "val": len(adv["val"]),
                                        "test": len(adv["test"]), "attacks": list(adv["test"].names)}}
        save_model(out / MODEL_FILE, ensemble, spec, {"metrics": {"test_accuracy": metrics["test_accuracy"]}})
        write_json(out / "metrics.json", metrics)
        log.info("MIA ensemble:\n%s", detection_table(report))
        return metrics

    def _adversarial(self, path: Path, source: torch.nn.Module, splits: Splits, resume: bool,
                     seed: int) -> dict[str, AdversarialSet]:
        """The train/val pools and the per-attack test sets (cached in `path`)."""
        cfg = self.config
        if resume and path.exists():
            state = torch.load(path, map_location="cpu", weights_only=True)
            return {key: AdversarialSet.from_state(value) for key, value in state.items()}
        attacks = parse_attacks(cfg.attacks)
        top = max((*cfg.shares, cfg.share))
        test = splits.test.take(cfg.eval_size) if cfg.eval_size else splits.test
        sets = {
            "train": craft_pool(source, splits.train, attacks, adversarial_count(len(splits.train), top),
                                seed, cfg.attack_batch),
            "val": craft_pool(source, splits.val, attacks, adversarial_count(len(splits.val), top),
                              seed + 1, cfg.attack_batch),
            "test": craft_per_attack(source, test, attacks, seed + 2, cfg.attack_batch),
        }
        torch.save({key: value.state() for key, value in sets.items()}, path)
        return sets
