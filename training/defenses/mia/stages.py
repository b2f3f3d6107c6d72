"""The training stages of a `mia` run (stages 1, 3 and 4 of `fit`): the source model, the EAT
cycles of each member architecture and the bagged members.

Stages 3 and 4 are tasks that processes sharing the run folder claim (`training.claims`), as
the pool's shards are claimed: an architecture's EAT cycles (`eat/<arch>.claim`; a cycle starts
from the previous one's model) and each member (`members/<i>-<arch>.claim`; ready once its
architecture's EAT model at the chosen share is written). Every stage is seeded from the run's
seed, so which process trains what does not change the result. The training process takes the
tasks in order, a helper (`training.defenses.mia.helper`) from the last; each polls while the
tasks left are held or not ready, and a task whose process is gone is taken over, its stage in
flight finished from its last.pt. The training process then loads every stage and builds the
ensemble.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from training.checkpoint import LAST_FILE, MODEL_FILE, read_json
from training.claims import claim, release
from training.data import Split, Splits
from training.defenses.mia.config import MIAConfig
from training.defenses.mia.data import AdversarialSet, adversarial_count, augmented, bootstrap_indices
from training.defenses.mia.metrics import detection_report
from training.defenses.mia.pool import POOL_SETS
from training.models import ModelSpec, create_model, model_spec_for
from training.trainer import TrainConfig, fit

log = logging.getLogger(__name__)
CLAIM_POLL_SECONDS = 10.0


def stage_done(out: Path) -> bool:
    return (Path(out) / MODEL_FILE).exists() and (Path(out) / "metrics.json").exists()


def finished_stage(out: Path, model: torch.nn.Module) -> dict | None:
    """A finished stage's metrics, its weights loaded into `model`; None if it is not finished."""
    if not stage_done(out):
        return None
    try:
        metrics = read_json(out / "metrics.json")
    except ValueError:  # metrics.json cut short by a stop: the stage is finished from last.pt
        log.warning("%s: unreadable metrics.json, finishing the stage from %s", out, LAST_FILE)
        return None
    model.load_state_dict(torch.load(out / MODEL_FILE, map_location="cpu", weights_only=True)["state_dict"])
    return metrics


def trained(out: Path, model: torch.nn.Module, spec: ModelSpec, splits: Splits, config: TrainConfig,
            resume: bool, record: dict) -> dict:
    """trainer.fit, or (on resume) the finished stage's weights and metrics."""
    if resume and (metrics := finished_stage(out, model)) is not None:
        return metrics
    last = out / LAST_FILE
    if resume and last.exists():
        try:
            torch.load(last, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, OSError) as err:  # written by the trainer in place: a stop mid-write
            log.warning("%s is unreadable (%s): the stage restarts from its first epoch", last, err)
            last.unlink()
    return fit(model, spec, splits, config, out, run_config=record, resume=resume)


def pool_needed(cfg: MIAConfig, out: Path) -> tuple[str, ...]:
    """The adversarial sets a resumed run still needs: the test sets alone once the run or every
    EAT and member stage is finished (a kept run restored into a fresh checkout), else all three."""
    paths = stage_paths(cfg)
    if stage_done(out) or all(stage_done(Path(out) / p) for p in paths["eat"] + paths["members"]):
        return ("test",)
    return POOL_SETS


def architectures(cfg: MIAConfig) -> list[str]:
    """The member architectures, each once, in the order of `members`."""
    return list(dict.fromkeys(cfg.members))


def eat_path(arch: str, share: float) -> str:
    return f"eat/{arch}/share-{round(100 * share):02d}"


def member_arch(cfg: MIAConfig, i: int) -> str:
    """Member i's architecture: the member architectures in turn."""
    return cfg.members[i % len(cfg.members)]


def member_path(cfg: MIAConfig, i: int) -> str:
    return f"members/{i}-{member_arch(cfg, i)}"


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
        work[member_path(cfg, i)] = (member_arch(cfg, i),
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


@dataclass(frozen=True)
class Task:
    """A unit that one process claims: an architecture's EAT cycles (`kind` 'eat', `key` the
    architecture) or one bagged member (`kind` 'member', `key` its index)."""

    kind: str
    key: str | int

    def __str__(self) -> str:
        return f"{self.key} EAT cycles" if self.kind == "eat" else f"member {self.key}"


class Stages:
    """Stages 3 and 4 of one run: EAT cycles per architecture, then the bagged members, as tasks
    that processes sharing the run folder claim; a member is ready once its architecture's EAT
    model at the chosen share is written. A task's finished stages are always loaded rather than
    retrained: they are this run's (a run without --resume removes old ones first)."""

    def __init__(self, cfg: MIAConfig, out: Path, splits: Splits, adv: dict[str, AdversarialSet],
                 train: TrainConfig, record: dict, bar: StageBar | None = None) -> None:
        self.cfg, self.out, self.splits, self.adv, self.train = cfg, Path(out), splits, adv, train
        self.record, self.bar = record, bar
        self.k = len(splits.labels)
        self.test_clean = splits.test.take(cfg.eval_size) if cfg.eval_size else splits.test
        self.test = Split(torch.cat([self.test_clean.x, adv["test"].x]),
                          torch.cat([self.test_clean.y, torch.full((len(adv["test"]),), self.k)]))
        self._val: dict[float, Split] = {}
        self._chosen: tuple[Split, list[torch.Tensor]] | None = None

    def _splits(self, share: float, train_split: Split) -> Splits:
        if share not in self._val:
            self._val[share] = augmented(self.splits.val, self.adv["val"], share, self.k, self.cfg.only_fooled)
        return Splits(train_split, self._val[share], self.test, (*self.splits.labels, "adversarial"), self.splits.name)

    def _epochs(self, stage: str) -> TrainConfig:
        return replace(self.train, epochs=self.cfg.epochs(stage, self.train.epochs))

    def _trained(self, stage: str, model: torch.nn.Module, spec: ModelSpec, splits: Callable[[], Splits],
                 epochs: str) -> dict:
        """The stage loaded if finished, else trained on `splits()` (the train and val pools are
        read only then: a run whose stages are all finished needs only the test sets)."""
        metrics = finished_stage(self.out / stage, model)
        if metrics is None:
            metrics = trained(self.out / stage, model, spec, splits(), self._epochs(epochs), True, self.record)
        if self.bar is not None:
            self.bar.done(stage)
        return metrics

    def _spec(self, arch: str) -> ModelSpec:
        return model_spec_for(arch, self.splits, num_classes=self.k + 1)

    def eat(self, arch: str, report: bool = False) -> list[dict]:
        """Train (or load) `arch`'s EAT cycles; with `report`, each cycle's detection report."""
        spec, rows = self._spec(arch), []
        torch.manual_seed(self.train.seed)
        model = create_model(spec)
        for cycle, share in enumerate(self.cfg.shares, 1):
            self._trained(eat_path(arch, share), model, spec, lambda: self._splits(share, augmented(
                self.splits.train, self.adv["train"], share, self.k, self.cfg.only_fooled)), "eat")
            if report:
                rows.append({"model": arch, "cycle": cycle, "share": share,
                             "report": detection_report(model, self.test_clean, self.adv["test"], self.k)})
        return rows

    def member(self, i: int) -> tuple[torch.nn.Module, dict]:
        """Train (or load) member i, from its architecture's EAT model at the chosen share."""
        cfg, arch = self.cfg, member_arch(self.cfg, i)

        def bootstrap() -> Splits:
            if self._chosen is None:
                chosen = augmented(self.splits.train, self.adv["train"], cfg.share, self.k, cfg.only_fooled)
                self._chosen = chosen, bootstrap_indices(len(chosen), cfg.n_bootstraps, self.train.seed,
                                                         cfg.bootstrap_fraction)
            chosen, samples = self._chosen
            return self._splits(cfg.share, Split(chosen.x[samples[i]], chosen.y[samples[i]]))

        spec = self._spec(arch)
        torch.manual_seed(self.train.seed + 1 + i)
        model = create_model(spec)
        if cfg.init_from_eat:
            start = self.out / eat_path(arch, cfg.share) / MODEL_FILE
            model.load_state_dict(torch.load(start, map_location="cpu", weights_only=True)["state_dict"])
        return model.eval(), self._trained(member_path(cfg, i), model, spec, bootstrap, "member")

    def tasks(self) -> list[Task]:
        return [Task("eat", a) for a in architectures(self.cfg)] + [Task("member", i) for i in range(self.cfg.n_bootstraps)]

    def _folders(self, task: Task) -> list[str]:
        if task.kind == "eat":
            return [eat_path(task.key, share) for share in self.cfg.shares]
        return [member_path(self.cfg, task.key)]

    def finished(self, task: Task) -> bool:
        return all(stage_done(self.out / p) for p in self._folders(task))

    def ready(self, task: Task) -> bool:
        if task.kind == "eat" or not self.cfg.init_from_eat:
            return True
        return stage_done(self.out / eat_path(member_arch(self.cfg, task.key), self.cfg.share))

    def _claim(self, task: Task) -> Path:
        return self.out / (f"eat/{task.key}.claim" if task.kind == "eat" else f"{member_path(self.cfg, task.key)}.claim")

    def work(self, helper: bool = False) -> list[Task]:
        """Train every unfinished task this process can claim, in order (a helper: from the last),
        until all are finished by someone; returns the tasks trained here. While every task
        left is held by another process or waits for an EAT model, it polls."""
        pending, here = self.tasks()[::-1] if helper else self.tasks(), []
        while pending:
            for task in pending:
                if self.finished(task):
                    pending.remove(task)
                    break
                if self.ready(task) and claim(self._claim(task)):
                    try:
                        if not self.finished(task):  # finished by another process just before our claim
                            self.eat(task.key) if task.kind == "eat" else self.member(task.key)
                            here.append(task)
                    finally:
                        release(self._claim(task))
                    pending.remove(task)
                    break
            else:
                time.sleep(CLAIM_POLL_SECONDS)
        return here

    def collect(self) -> tuple[list[dict], list[torch.nn.Module], list[dict]]:
        """Once every task is finished: the EAT table's rows, the members and their metrics."""
        rows = [row for arch in architectures(self.cfg) for row in self.eat(arch, report=True)]
        members = [self.member(i) for i in range(self.cfg.n_bootstraps)]
        return rows, [m for m, _ in members], [metrics for _, metrics in members]
