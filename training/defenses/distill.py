"""`distill`: defensive distillation (Papernot et al., 2016; paper 001, part B): a teacher
trained at temperature T labels the training set softly; a student trained on those soft
labels at T is deployed at T = 1."""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from training.attacks import eval_mode
from training.checkpoint import save_atomic
from training.data import Split, Splits
from training.distributed import rank
from training.defenses.base import Defense, DefenseConfig
from training.defenses.common import build_model, finalize, run_training
from training.trainer import TrainConfig

log = logging.getLogger(__name__)
TEACHER_DIR = "teacher"
SOFT_LABELS_FILE = "soft_labels.pt"


@dataclass(frozen=True)
class DistillConfig(DefenseConfig):
    """Args:
        temperature: T of the teacher's training, its soft labels and the student's training.
        paper_schedule: use paper 001's optimization (Adam lr 1e-4, betas (0.9, 0.999),
            ReduceLROnPlateau(min, 0.1, patience 3), 10 epochs) instead of the run's own.
    Paper 001's CNN is `--model distill-cnn`.
    """

    temperature: float = 100.0
    paper_schedule: bool = True

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


def tempered_loss(temperature: float):
    """Cross-entropy of softmax(logits / T) against hard labels (N) or soft labels (N x C)."""

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x) / temperature, y)

    return loss


@torch.no_grad()
def soft_labels(model: nn.Module, x: torch.Tensor, temperature: float, batch_size: int = 512) -> torch.Tensor:
    """softmax(model(x) / T), model in eval mode."""
    with eval_mode(model):
        return torch.cat([F.softmax(model(x[s:s + batch_size]) / temperature, dim=1)
                          for s in range(0, len(x), batch_size)])


class Distill(Defense):
    """Teacher at T -> soft labels at T -> student at T -> student deployed at T = 1.

    The saved student outputs its raw logits (T = 1); this is what makes its softmax saturate
    and its cross-entropy gradients vanish, a masked gradient rather than robustness (Carlini &
    Wagner, 2016): evaluate it with attacks on the logits as well.
    Example: `create_defense("distill", {"temperature": "100"}).fit("distill-cnn", splits, ...)`
    """

    Config = DistillConfig

    def fit(self, model_name: str, splits: Splits, train: TrainConfig, out_dir: Path,
            run_config: dict | None = None, resume: bool = False) -> dict:
        cfg, out_dir = self.config, Path(out_dir)
        config = train
        if cfg.paper_schedule:
            config = replace(train, optimizer="adam", lr=1e-4, schedule="plateau", epochs=10)
            log.info("distill: paper 001's schedule (Adam 1e-4, plateau, 10 epochs)")
        loss = tempered_loss(cfg.temperature)
        teacher, spec = build_model(model_name, splits, config.seed)
        teacher_metrics = run_training(self, teacher, spec, splits, config, out_dir / TEACHER_DIR,
                                       loss, run_config, resume)
        soft = soft_labels(teacher, splits.train.x, cfg.temperature)
        if rank() == 0:
            save_atomic(soft, out_dir / SOFT_LABELS_FILE)
        student, _ = build_model(model_name, splits, config.seed + 1)
        student_splits = replace(splits, train=Split(splits.train.x, soft))
        metrics = run_training(self, student, spec, student_splits, config, out_dir, loss, run_config, resume)
        metrics.update(temperature=cfg.temperature, teacher_test_accuracy=teacher_metrics["test_accuracy"],
                       wall_seconds=round(metrics["wall_seconds"] + teacher_metrics["wall_seconds"], 2),
                       student_seconds=metrics["wall_seconds"], teacher_seconds=teacher_metrics["wall_seconds"])
        return finalize(out_dir, student, spec, metrics)
