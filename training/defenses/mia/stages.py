"""The training stages of a `mia` run: the source model, and per member architecture a chain of
EAT cycles followed by that architecture's bagged members (stages 1, 3 and 4 of `fit`).

A chain depends only on the adversarial pool and on itself (member i starts from the EAT model of
architecture members[i mod n] at the chosen share; every stage is seeded from the run's seed), so
chains can run in different processes: a process claims a chain (`eat/<arch>.claim`,
`training.claims`) before training it, as the pool's shards are claimed. The training process
trains the chains in order and waits for those a helper holds (`training.defenses.mia.helper`
takes them from the last); once a chain's claim is free its finished stages are loaded, and a
stage that a stopped helper left half done is finished from its last.pt.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm import tqdm

from training.checkpoint import LAST_FILE, MODEL_FILE, read_json
from training.claims import claim, release
from training.data import Split, Splits
from training.defenses.mia.config import MIAConfig
from training.defenses.mia.data import AdversarialSet, adversarial_count, augmented, bootstrap_indices
from training.defenses.mia.metrics import detection_report
from training.models import ModelSpec, create_model, model_spec_for
from training.trainer import TrainConfig, fit

log = logging.getLogger(__name__)
CLAIM_POLL_SECONDS = 10.0


def stage_done(out: Path) -> bool:
    return (Path(out) / MODEL_FILE).exists() and (Path(out) / "metrics.json").exists()


def trained(out: Path, model: torch.nn.Module, spec: ModelSpec, splits: Splits, config: TrainConfig,
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


def architectures(cfg: MIAConfig) -> list[str]:
    """The member architectures, each once, in the order of `members`: one chain each."""
    return list(dict.fromkeys(cfg.members))


def eat_path(arch: str, share: float) -> str:
    return f"eat/{arch}/share-{round(100 * share):02d}"


def member_path(cfg: MIAConfig, i: int) -> str:
    return f"members/{i}-{cfg.members[i % len(cfg.members)]}"


def chain_claim(out: Path, arch: str) -> Path:
    return Path(out) / "eat" / f"{arch}.claim"


def stage_paths(cfg: MIAConfig) -> dict[str, list[str]]:
    """The training stages' folders, in order: source, eat cycles, members."""
    return {"source": [] if cfg.source_run else ["source"],
            "eat": [eat_path(arch, share) for arch in architectures(cfg) for share in cfg.shares],
            "members": [member_path(cfg, i) for i in range(cfg.n_bootstraps)]}


def stage_work(cfg: MIAConfig, n_train: int, default_epochs: int, model_name: str) -> dict[str, tuple[str, int, int]]:
    """Each training stage's folder -> (architecture, training images, epochs)."""
    chosen = n_train + adversarial_count(n_train, cfg.share)
    work = {p: (model_name, n_train, cfg.epochs("source", default_epochs)) for p in stage_paths(cfg)["source"]}
    for arch in architectures(cfg):
        for share in cfg.shares:
            work[eat_path(arch, share)] = (arch, n_train + adversarial_count(n_train, share),
                                           cfg.epochs("eat", default_epochs))
    for i in range(cfg.n_bootstraps):
        work[member_path(cfg, i)] = (cfg.members[i % len(cfg.members)],
                                     max(1, int(round(cfg.bootstrap_fraction * chosen))), cfg.epochs("member", default_epochs))
    return work


class StageBar:
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


@dataclass
class Chain:
    """What one architecture's chain gives the ensemble: its EAT rows (per cycle: the detection
    report on the test sets; empty in a helper) and its members (index -> (model, metrics))."""

    eat_rows: list[dict] = field(default_factory=list)
    members: dict[int, tuple[torch.nn.Module, dict]] = field(default_factory=dict)


class Chains:
    """Stages 3 and 4 of one run: the chains of EAT cycles and members, claimed per architecture."""

    def __init__(self, cfg: MIAConfig, out: Path, splits: Splits, adv: dict[str, AdversarialSet],
                 train: TrainConfig, record: dict, bar: StageBar | None = None, report: bool = True) -> None:
        self.cfg, self.out, self.splits, self.adv, self.train = cfg, Path(out), splits, adv, train
        self.record, self.bar, self.report = record, bar, report
        self.k = len(splits.labels)
        self.test_clean = splits.test.take(cfg.eval_size) if cfg.eval_size else splits.test
        self.test = Split(torch.cat([self.test_clean.x, adv["test"].x]),
                          torch.cat([self.test_clean.y, torch.full((len(adv["test"]),), self.k)]))
        self._val: dict[float, Split] = {}

    def _splits(self, share: float, train_split: Split) -> Splits:
        if share not in self._val:
            self._val[share] = augmented(self.splits.val, self.adv["val"], share, self.k, self.cfg.only_fooled)
        return Splits(train_split, self._val[share], self.test, (*self.splits.labels, "adversarial"), self.splits.name)

    def _epochs(self, stage: str) -> TrainConfig:
        return replace(self.train, epochs=self.cfg.epochs(stage, self.train.epochs))

    def _done(self, path: str) -> None:
        if self.bar is not None:
            self.bar.done(path)

    def chain(self, arch: str, resume: bool) -> Chain:
        """Train (or, on resume, load) `arch`'s EAT cycles, then its members."""
        cfg, out, result = self.cfg, self.out, Chain()
        spec = model_spec_for(arch, self.splits, num_classes=self.k + 1)
        torch.manual_seed(self.train.seed)
        model, at_share = create_model(spec), None
        for cycle, share in enumerate(cfg.shares, 1):
            aug = augmented(self.splits.train, self.adv["train"], share, self.k, cfg.only_fooled)
            stage = eat_path(arch, share)
            trained(out / stage, model, spec, self._splits(share, aug), self._epochs("eat"), resume, self.record)
            self._done(stage)
            del aug
            if self.report:
                result.eat_rows.append({"model": arch, "cycle": cycle, "share": share,
                                        "report": detection_report(model, self.test_clean, self.adv["test"], self.k)})
            if share == cfg.share:
                at_share = {n: t.clone() for n, t in model.state_dict().items()}
        mine = [i for i in range(cfg.n_bootstraps) if cfg.members[i % len(cfg.members)] == arch]
        if not mine:
            return result
        chosen = augmented(self.splits.train, self.adv["train"], cfg.share, self.k, cfg.only_fooled)
        samples = bootstrap_indices(len(chosen), cfg.n_bootstraps, self.train.seed, cfg.bootstrap_fraction)
        for i in mine:
            torch.manual_seed(self.train.seed + 1 + i)
            member = create_model(spec)
            if cfg.init_from_eat:
                member.load_state_dict(at_share)
            idx = samples[i]
            metrics = trained(out / member_path(cfg, i), member, spec,
                              self._splits(cfg.share, Split(chosen.x[idx], chosen.y[idx])),
                              self._epochs("member"), resume, self.record)
            self._done(member_path(cfg, i))
            result.members[i] = (member.eval(), metrics)
        return result

    def _claimed(self, arch: str, resume: bool) -> Chain | None:
        """`arch`'s chain made or loaded here under its claim, or None while another process holds it."""
        path = chain_claim(self.out, arch)
        if not claim(path):
            return None
        try:
            return self.chain(arch, resume)
        finally:
            release(path)

    def all(self, resume: bool) -> dict[str, Chain]:
        """Every chain, in order: trained here, or waited for while a helper holds it and then
        loaded (its stages are this run's: a run without --resume removes old ones first)."""
        chains = {arch: self._claimed(arch, resume) for arch in architectures(self.cfg)}
        for arch, chain in chains.items():
            while chain is None:
                time.sleep(CLAIM_POLL_SECONDS)
                chain = chains[arch] = self._claimed(arch, resume=True)
        return chains

    def finished(self, arch: str) -> bool:
        paths = [eat_path(arch, share) for share in self.cfg.shares]
        paths += [member_path(self.cfg, i) for i in range(self.cfg.n_bootstraps)
                  if self.cfg.members[i % len(self.cfg.members)] == arch]
        return all(stage_done(self.out / p) for p in paths)

    def help(self) -> list[str]:
        """A helper's part: the unfinished chains nobody holds, from the last (the training
        process starts at the first); returns the architectures trained here."""
        return [arch for arch in reversed(architectures(self.cfg))
                if not self.finished(arch) and self._claimed(arch, resume=True) is not None]
