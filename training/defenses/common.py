"""What the defences share: building or loading the model, per-step attack seeds, pre-made
adversarial sets, and the one (DDP-aware) call into the shared trainer."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

from training import distributed
from training.attacks import create_attack
from training.checkpoint import MODEL_FILE, load_model, save_model, write_json
from training.data import Split, Splits
from training.models import ModelSpec, create_model, model_spec_for
from training.defenses.base import Defense
from training.trainer import BatchLoss, TrainConfig, fit

log = logging.getLogger(__name__)


def build_model(model_name: str, splits: Splits, seed: int) -> tuple[nn.Module, ModelSpec]:
    """A freshly initialized registered model for `splits` (seeded)."""
    spec = model_spec_for(model_name, splits)
    torch.manual_seed(seed)
    return create_model(spec), spec


def load_base(run: str, model_name: str, defense: str) -> tuple[nn.Module, ModelSpec]:
    """The trained model a fine-tuning defence starts from (a run folder or model.pt)."""
    if not run:
        raise ValueError(f"{defense} fine-tunes a trained model: pass --option base_run=RUN_DIR "
                         "(a folder written by `advguard train`)")
    model, spec = load_model(run)
    if spec.name != model_name:
        raise ValueError(f"{defense}: the base run holds {spec.name!r}, not {model_name!r}; "
                         f"pass --model {spec.name}")
    return model, spec


class StepSeeds:
    """A distinct attack seed per call and per DDP rank, so random starts differ between
    batches (an attack's own seed makes each call deterministic). The trainer moves the count to
    the batches already trained when it resumes (`resumable`), so a resumed run draws the same
    seeds as an uninterrupted one."""

    def __init__(self, base: int = 0) -> None:
        self._base = self._next = base

    def __call__(self) -> int:
        self._next += 1
        return self._next * distributed.world_size() + distributed.rank()

    def skip_to(self, calls: int) -> None:
        """As if `calls` seeds had been drawn since construction."""
        self._next = self._base + calls


def resumable(loss: BatchLoss, seeds: StepSeeds) -> BatchLoss:
    """`loss` (which draws one seed per batch) with `resume_at(batches)`, which `trainer.fit`
    calls with the batches already trained when it resumes."""
    loss.resume_at = seeds.skip_to
    return loss


def project_linf(x: torch.Tensor, x_adv: torch.Tensor, eps: float) -> torch.Tensor:
    """Project the image (not only the perturbation) into the L-inf ball and [0, 1]."""
    return (x + (x_adv - x).clamp(-eps, eps)).clamp(0.0, 1.0)


def auto_alpha(alpha: float, eps: float, steps: int) -> float:
    """A PGD step size: `alpha` if set, else Madry et al.'s 2.5 * eps / steps."""
    return alpha if alpha > 0 else 2.5 * eps / max(steps, 1)


def adversarial_split(model: nn.Module, split: Split, attack: str, eps: float, steps: int = 10,
                      batch_size: int = 256, seed: int = 0) -> Split:
    """The adversarial counterpart of every image in `split`, made once from `model`.

    attack: 'fgsm' or 'pgd' (L-inf, step 2.5 * eps / steps, random start).
    """
    if attack == "fgsm":
        make = create_attack("fgsm", model, eps=eps)
    elif attack == "pgd":
        make = create_attack("pgd", model, eps=eps, alpha=auto_alpha(0.0, eps, steps), steps=steps,
                             seed=seed)
    else:
        raise ValueError(f"attack must be 'fgsm' or 'pgd', got {attack!r}")
    chunks = []
    for start in tqdm(range(0, len(split), batch_size), desc=f"{attack} set", unit="batch",
                      leave=False, disable=None):
        chunks.append(make(split.x[start:start + batch_size], split.y[start:start + batch_size]))
    return Split(torch.cat(chunks) if chunks else split.x[:0].clone(), split.y.clone())


def finalize(out_dir: Path, model: nn.Module, spec: ModelSpec, metrics: dict) -> dict:
    """(Re)write model.pt and metrics.json with `metrics` (rank 0 only; no-op elsewhere)."""
    if distributed.rank() == 0:
        save_model(Path(out_dir) / MODEL_FILE, distributed.unwrap(model), spec, {"metrics": metrics})
        write_json(Path(out_dir) / "metrics.json", metrics)
    return metrics


def run_training(defense, model: nn.Module, spec: ModelSpec, splits: Splits, config: TrainConfig,
                 out_dir: Path, batch_loss: BatchLoss, run_config: dict | None = None,
                 resume: bool = False, trainable: list[nn.Parameter] | None = None,
                 after_step: Callable[[nn.Module], None] | None = None) -> dict:
    """`training.trainer.fit` with the defence's loss, recording the defence's config.

    Under torchrun the model is wrapped in DDP, each rank trains on its shard and rank 0
    writes the run folder with the unwrapped model (see `training.distributed`).
    """
    record = {**(run_config or {}), **defense.describe()}
    n = distributed.world_size()
    if n > 1:
        record["ddp"] = {"world_size": n, "backend": "gloo", "global_batch_size": config.batch_size}
    local_splits, local_config = distributed.shard(splits, config)
    metrics = fit(distributed.wrap(model), spec, local_splits, local_config, distributed.rank_dir(out_dir),
                  batch_loss=batch_loss, run_config=record, resume=resume, trainable=trainable,
                  after_step=after_step)
    if n > 1:
        metrics.update(world_size=n, train_size=len(splits.train), replicas_in_sync=distributed.replicas_in_sync(model))
        finalize(out_dir, model, spec, metrics)
        distributed.finish(out_dir)
    return metrics


class BatchLossDefense(Defense):
    """A defence that only changes the per-batch loss: it trains a fresh `model_name` with
    `batch_loss()` through the shared loop (progress, checkpoints, resume, DDP, metrics)."""

    def batch_loss(self) -> BatchLoss:
        raise NotImplementedError

    def fit(self, model_name: str, splits: Splits, train: TrainConfig, out_dir: Path,
            run_config: dict | None = None, resume: bool = False) -> dict:
        model, spec = build_model(model_name, splits, train.seed)
        return run_training(self, model, spec, splits, train, out_dir, self.batch_loss(),
                            run_config, resume)
