"""The training loop every trainer shares: progress, validation, checkpoints, resume.

A defence changes only the per-batch loss (`BatchLoss`); the loop, the schedule, the
checkpointing and the metrics stay here.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from training.checkpoint import LAST_FILE, MODEL_FILE, save_atomic, save_model, write_json
from training.data import Split, Splits
from training.models import ModelSpec

log = logging.getLogger(__name__)

# (model, x, y) -> scalar loss to minimize; the model is in train mode.
BatchLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def standard_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


OPTIMIZERS = ("adam", "sgd", "rmsprop")
SCHEDULES = ("onecycle", "constant", "plateau")


@dataclass(frozen=True)
class TrainConfig:
    """Optimization settings shared by every trainer.

    Args:
        epochs: passes over the training split.
        batch_size: images per step.
        lr: peak learning rate.
        optimizer: 'adam' | 'sgd' | 'rmsprop'.
        schedule: 'onecycle' | 'constant' | 'plateau'.
        weight_decay: L2 penalty.
        seed: seeds initialization and shuffling.
        patience: early stopping on validation accuracy (0: off).
    """

    epochs: int = 4
    batch_size: int = 128
    lr: float = 2e-3
    optimizer: str = "adam"
    schedule: str = "onecycle"
    weight_decay: float = 0.0
    seed: int = 0
    patience: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")


def make_optimizer(params, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=config.lr, eps=1e-8, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def make_scheduler(optimizer, config: TrainConfig, steps_per_epoch: int):
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch)
    if config.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.1, patience=3)
    return None


@torch.no_grad()
def accuracy(model: nn.Module, split: Split, batch_size: int = 512) -> float:
    """Clean top-1 accuracy, model in eval mode (restored afterwards)."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(split), batch_size):
        x, y = split.x[start:start + batch_size], split.y[start:start + batch_size]
        correct += (model(x).argmax(1) == y).sum().item()
    model.train(was_training)
    return correct / max(len(split), 1)


def fit(model: nn.Module, spec: ModelSpec, splits: Splits, config: TrainConfig, out_dir: Path,
        batch_loss: BatchLoss = standard_loss, run_config: dict | None = None,
        resume: bool = False, trainable: list[torch.nn.Parameter] | None = None,
        after_step: Callable[[nn.Module], None] | None = None,
        epoch_order: Callable[[int, torch.Generator], torch.Tensor] | None = None) -> dict:
    """Train `model` and write model.pt, last.pt (resume point), config.json, metrics.json, each
    whole or not at all (a kill mid-write keeps the previous last.pt, so `resume` still works).

    Args:
        batch_loss: the defence's per-batch loss (standard cross-entropy by default).
        run_config: everything else worth recording (data, defence) in config.json.
        resume: continue from out_dir/last.pt when it exists.
        trainable: parameters the optimizer updates (default: all).
        after_step: called after each optimizer step (e.g. to re-apply a gradient mask).
        epoch_order: (epoch, seeded generator) -> a permutation of the training indices
            (default: uniform shuffling; a curriculum passes its syllabus here).
    Returns the metrics dict (also written to metrics.json).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "config.json", {"train": asdict(config), "model": spec.to_dict(), **(run_config or {})})
    torch.manual_seed(config.seed)
    params = trainable if trainable is not None else [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, config)
    steps = (len(splits.train) + config.batch_size - 1) // config.batch_size
    scheduler = make_scheduler(optimizer, config, steps)
    history: list[dict] = []
    start_epoch, best_val, stale, elapsed = 0, -1.0, 0, 0.0
    last = out_dir / LAST_FILE
    if resume and last.exists():
        state = torch.load(last, map_location="cpu", weights_only=True)
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        start_epoch, history = state["epoch"], state["history"]
        torch.set_rng_state(state["rng"])
        best_val, stale, elapsed = state["best_val"], state["stale"], state["elapsed"]
        if hasattr(batch_loss, "resume_at"):  # per-batch attack seeds continue, not restart
            batch_loss.resume_at(start_epoch * steps)
        log.info("resuming %s at epoch %d", out_dir, start_epoch + 1)
    for epoch in range(start_epoch, config.epochs):
        began = time.perf_counter()
        gen = torch.Generator().manual_seed(config.seed * 1000 + epoch)
        order = (epoch_order(epoch, gen) if epoch_order is not None
                 else torch.randperm(len(splits.train), generator=gen))
        model.train()
        total, seen = 0.0, 0
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", leave=False,
                   mininterval=1.0 if sys.stderr.isatty() else 30.0)
        for step in bar:
            idx = order[step * config.batch_size:(step + 1) * config.batch_size]
            x, y = splits.train.x[idx], splits.train.y[idx]
            loss = batch_loss(model, x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step(model)
            if scheduler is not None and config.schedule == "onecycle":
                scheduler.step()
            total, seen = total + loss.item() * len(y), seen + len(y)
            bar.set_postfix(loss=f"{total / seen:.4f}", refresh=False)
        val_acc = accuracy(model, splits.val)
        if scheduler is not None and config.schedule == "plateau":
            scheduler.step(total / seen)
        elapsed += time.perf_counter() - began
        history.append({"epoch": epoch + 1, "train_loss": total / seen, "val_accuracy": val_acc,
                        "seconds": round(time.perf_counter() - began, 2)})
        log.info("epoch %d/%d loss %.4f val_acc %.4f", epoch + 1, config.epochs, total / seen, val_acc)
        tqdm.write(f"epoch {epoch + 1}/{config.epochs}: loss {total / seen:.4f}, val accuracy {val_acc:.4f}")
        stale = 0 if val_acc > best_val else stale + 1
        best_val = max(best_val, val_acc)
        save_atomic({"state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict() if scheduler is not None else None,
                     "epoch": epoch + 1, "history": history, "best_val": best_val, "stale": stale,
                     "elapsed": elapsed, "rng": torch.get_rng_state()}, last)
        if config.patience and stale >= config.patience:
            log.info("early stop after %d epochs without improvement", stale)
            break
    metrics = {"history": history, "val_accuracy": history[-1]["val_accuracy"] if history else None,
               "test_accuracy": accuracy(model, splits.test), "wall_seconds": round(elapsed, 2),
               "train_size": len(splits.train), "test_size": len(splits.test)}
    save_model(out_dir / MODEL_FILE, model, spec, {"metrics": metrics})
    write_json(out_dir / "metrics.json", metrics)
    return metrics
